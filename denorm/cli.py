"""`denorm`: the one command behind every service and tool of the project.

The services and the load test are reached by name (importlib), so that the core package imports
none of them: each runs from its own package, and an image without the load test still has every
other command.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from denorm.config import get_settings
from denorm.logs import configure_logging

Handler = Callable[[argparse.Namespace], int]


def _cmd_migrate(args: argparse.Namespace) -> int:
    from denorm.migrate import MigrationError, ensure_database, migrate, wait_for_schema

    settings = get_settings()
    try:
        if args.wait:
            wait_for_schema(settings.database_url, timeout_seconds=args.timeout)
            return 0
        if args.create_database and ensure_database(settings.database_url):
            print("created the database")
        migrate(settings.database_url, dry_run=args.dry_run)
    except MigrationError as exc:
        print(f"migrate: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_seed(args: argparse.Namespace) -> int:
    from denorm.seed import SCALES, seed

    settings = get_settings()
    scale = SCALES[args.scale].times(args.factor)
    seed(settings.database_url, scale, seed=args.seed, jobs=args.jobs, truncate=not args.no_truncate)
    return 0


def _cmd_api(args: argparse.Namespace) -> int:
    serve = _by_name("services.api.serve", "serve")
    return int(serve(args.host, args.port, args.workers, args.admin_port))


def _by_name(module: str, function: str) -> Any:
    return getattr(importlib.import_module(module), function)


def _cmd_refresher(args: argparse.Namespace) -> int:
    run = _by_name("services.refresher.main", "run")
    return int(run(get_settings(), once=args.once))


def _cmd_reconcile(args: argparse.Namespace) -> int:
    run = _by_name("services.reconciler.main", "run")
    return int(run(get_settings(), repair=args.repair))


def _cmd_loadtest(args: argparse.Namespace) -> int:
    try:
        main = _by_name("loadtest.run", "main")
    except ImportError as exc:  # an installed wheel without the repository's loadtest/ folder
        print(f"loadtest: the load test is not installed here ({exc})", file=sys.stderr)
        return 1
    return int(main(args.args))


def _cmd_token(args: argparse.Namespace) -> int:
    from denorm.auth import mint_token

    print(mint_token(args.user, get_settings().jwt_secret, ttl_seconds=args.ttl))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="denorm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("migrate", help="apply pending migrations to DATABASE_URL")
    p.add_argument("--dry-run", action="store_true", help="list what would be applied, apply nothing")
    p.add_argument("--create-database", action="store_true", help="create the database first when it is missing")
    p.add_argument(
        "--wait",
        action="store_true",
        help="apply nothing: wait until every migration of this version is applied (the pods' init)",
    )
    p.add_argument("--timeout", type=float, default=600, help="with --wait: give up after this many seconds")
    p.set_defaults(handler=_cmd_migrate)

    from denorm.seed import SCALES

    p = sub.add_parser("seed", help="fill the source tables with a generated dataset")
    p.add_argument("--scale", choices=list(SCALES), default="tiny")
    p.add_argument("--seed", type=int, default=42, help="the same seed gives the same dataset")
    p.add_argument("--factor", type=float, default=1.0, help="multiply every row count (2 for 2x)")
    p.add_argument("--jobs", type=int, default=2, help="parallel database sessions for the large tables")
    p.add_argument("--no-truncate", action="store_true", help="keep existing rows (ids may then collide)")
    p.set_defaults(handler=_cmd_seed)

    p = sub.add_parser("api", help="serve the HTTP API")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--admin-port", type=int, help="the operators' port (default: API_ADMIN_PORT, 9100)")
    p.set_defaults(handler=_cmd_api)

    p = sub.add_parser("refresher", help="run the materialized-view refresh worker until SIGTERM")
    p.add_argument("--once", action="store_true", help="fold, refresh what is due now, and exit")
    p.set_defaults(handler=_cmd_refresher)

    p = sub.add_parser(
        "reconcile",
        help="check every read model against the source tables",
        description="Exit status: 0 finished, 1 failed, 3 another run holds the lock.",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="only report drift (the default)")
    mode.add_argument("--repair", action="store_true", help="repair the drift found")
    p.set_defaults(handler=_cmd_reconcile)

    p = sub.add_parser("token", help="print a JWT for a user, signed with JWT_SECRET")
    p.add_argument("--user", type=int, required=True)
    p.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")
    p.set_defaults(handler=_cmd_token)

    from denorm.deploy import add_deploy_parser

    add_deploy_parser(sub)

    p = sub.add_parser("loadtest", help="run the Locust suite against a seeded system (denorm loadtest --help)",
                       add_help=False, prefix_chars="\0")  # fmt: skip
    p.add_argument("args", nargs=argparse.REMAINDER, help="the load test's own arguments")
    p.set_defaults(handler=_cmd_loadtest)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    handler: Handler = args.handler
    try:
        return handler(args)
    except psycopg.OperationalError as exc:  # a tool run against a database that is not there
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"denorm {args.command}: Postgres is not reachable ({reason}): start it, or set DATABASE_URL",
              file=sys.stderr)  # fmt: skip
        return 1


if __name__ == "__main__":
    sys.exit(main())
