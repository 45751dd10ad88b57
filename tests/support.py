"""Helpers the test modules share: running the real `denorm` command, and small catalog queries."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from db import SCHEMA_DIR
from denorm.readmodels import REGISTRY, Kind
from denorm.sql import split
from services.reconciler.drift import DriftRow, compare

Connection = psycopg.Connection[TupleRow]

_CONSOLE_SCRIPT = Path(sys.executable).with_name("denorm")
# The installed console script when there is one (it is what people run), else the module.
DENORM: tuple[str, ...] = (str(_CONSOLE_SCRIPT),) if _CONSOLE_SCRIPT.is_file() else (sys.executable, "-m", "denorm.cli")


def admin(path: str) -> str:
    """A path on the API's admin port, for an in-process TestClient (services/api/ports.py)."""
    from denorm.config import Settings

    return f"http://testserver:{Settings.model_fields['api_admin_port'].default}{path}"


def cli_env(**overrides: str) -> dict[str, str]:
    """The environment for a `denorm` child process: ours, plus the given variables."""
    env = dict(os.environ)
    env.update(overrides)
    return env


def run_denorm(
    args: Sequence[str], env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*DENORM, *args],
        env=env if env is not None else cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def table_exists(conn: Connection, name: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()
    return row is not None and bool(row[0])


def applied_versions(conn: Connection) -> list[int]:
    """The versions recorded in schema_migrations, duplicates included; [] when it does not exist."""
    if not table_exists(conn, "schema_migrations"):
        return []
    return [int(row[0]) for row in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]


def settle(conn: Connection) -> None:
    """Everything written so far folded into the read models and every pending view refreshed, with
    no debounce wait."""
    from denorm.maintenance import drain

    drain(conn, worker="test")


def all_drift(conn: Connection) -> dict[str, list[DriftRow]]:
    """Every read model in Postgres against its truth, all read in one REPEATABLE READ snapshot."""
    if not conn.autocommit:
        raise ValueError("pass an autocommit connection: the snapshot is this function's own")
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        return {m.name: compare(conn, m) for m in REGISTRY if m.kind is not Kind.REDIS}


def drifted(conn: Connection) -> dict[str, list[DriftRow]]:
    """The read models that differ from their truth, with their rows (all_drift without the clean)."""
    return {name: rows for name, rows in all_drift(conn).items() if rows}


def one(conn: Connection, query: str, *args: object) -> Any:
    """The first column of the one row a query returns."""
    row = conn.execute(query.encode(), args).fetchone()
    assert row is not None
    return row[0]


# The schema files that are not read models, in the order a fresh database runs them; the read
# models' files follow, in the registry's order. (The baseline migration was made so.)
INFRASTRUCTURE = (
    "source.sql",
    "items.sql",
    "pages.sql",
    "ledgers.sql",
    "refresh_queue.sql",
    "reconcile_runs.sql",
    "idempotency.sql",
)


def schema_files() -> list[Path]:
    """Every file of the current-state schema, in the order a fresh database runs them."""
    files = [SCHEMA_DIR / name for name in INFRASTRUCTURE]
    for model in REGISTRY:
        if model.path not in files:
            files.append(model.path)
    return files


def schema_of(path: Path) -> str:
    """The schema part of one file: what a fresh database runs to create its feature."""
    return split(path.read_text(encoding="utf-8"))[0]


ROLE_FILE = SCHEMA_DIR.parent / "roles" / "service_role.sql"


def make_role(url: str, role: str, *options: str) -> str:
    """db/roles/service_role.sql applied with psql as docs/deploy.md says (`options`: more psql
    variables, `-v maintains=on`); the URL that logs in as the role."""
    psql = ["psql", url, "-v", f"role={role}", *options, "-v", "ON_ERROR_STOP=1", "-q", "-f", str(ROLE_FILE)]
    done = subprocess.run(psql, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return psycopg.conninfo.make_conninfo(url, user=role)


def drop_role(url: str, admin: Connection, role: str) -> None:
    """A role of make_role's, gone: roles are the cluster's, and a test leaves none behind."""
    with psycopg.connect(url, autocommit=True) as owner:
        owner.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
    admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
