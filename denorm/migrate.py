"""The migration runner: applies db/migrations/*.sql in order, once each, under an advisory lock.

A migration file runs in one transaction together with the row that records it, unless its first
lines carry the marker ``-- migrate:no-transaction``: such a file (``CREATE INDEX CONCURRENTLY``,
``ALTER TYPE ... ADD VALUE``) runs statement by statement in autocommit and must be written so that
running it again after a partial failure is safe (``IF NOT EXISTS``).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import sqlparse
from psycopg import sql
from psycopg.rows import TupleRow

from db import MIGRATIONS_DIR

NO_TRANSACTION_MARKER = "-- migrate:no-transaction"
# pg_advisory_lock key: a fixed 64-bit number, so every replica of every service agrees on it.
MIGRATION_LOCK_KEY = 0x64656E6F726D01  # "denorm" + 1
_FILENAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer     PRIMARY KEY,
    name        text        NOT NULL,
    checksum    text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    duration_ms integer     NOT NULL
)
"""


_INVALID_INDEXES = """
SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE NOT i.indisvalid AND n.nspname = current_schema()
"""


class MigrationError(RuntimeError):
    """A migration cannot be applied safely; nothing further was applied."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path
    text: str
    checksum: str

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"

    @property
    def transactional(self) -> bool:
        head = self.text.lstrip().splitlines()[:5]
        return not any(line.strip() == NO_TRANSACTION_MARKER for line in head)

    def statements(self) -> list[str]:
        return [s for s in (part.strip() for part in sqlparse.split(self.text)) if _has_code(s)]


@dataclass
class MigrateResult:
    applied: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    already_applied: int = 0


def _has_code(statement: str) -> bool:
    stripped = sqlparse.format(statement, strip_comments=True).strip().rstrip(";").strip()
    return bool(stripped)


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Migrations in version order; a misnamed or duplicated version is an error, not a skip."""
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILENAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migration files are named NNNN_snake_case.sql")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"{path.name}: version {version} is used twice")
        data = path.read_bytes()
        found[version] = Migration(
            version=version,
            name=match.group(2),
            path=path,
            text=data.decode("utf-8"),
            checksum=hashlib.sha256(data).hexdigest(),
        )
    return [found[v] for v in sorted(found)]


def ensure_database(url: str) -> bool:
    """Create the database named in ``url`` when it does not exist; True when it was created."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    dbname = str(info.get("dbname") or "postgres")
    admin = psycopg.conninfo.make_conninfo(url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
        if exists:
            return False
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        except (psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
            # Another replica created it first. Past the existence check above, Postgres reports that
            # race as a unique violation on pg_database's name index, not as DuplicateDatabase.
            return False
        return True


def migrate(
    url: str,
    *,
    dry_run: bool = False,
    directory: Path = MIGRATIONS_DIR,
    echo: Callable[[str], None] = print,
    lock_wait_seconds: float = 600,
) -> MigrateResult:
    """Apply every pending migration; with ``dry_run`` only list them."""
    migrations = discover(directory)
    result = MigrateResult()
    try:
        conn = psycopg.connect(url, autocommit=True)
    except psycopg.OperationalError as exc:
        raise MigrationError(f"cannot connect to the database: {exc}") from exc
    with conn:
        # Session-level lock: held across the per-migration transactions and released on close,
        # even if this process dies, so replicas starting together queue up behind one another.
        # A replica gives up after lock_wait_seconds rather than hang behind a stuck migration. It
        # asks again and again rather than waiting in one statement: a session waiting for a lock
        # has a transaction open, which a CREATE INDEX CONCURRENTLY of the holder's migration
        # would wait for in turn (a deadlock).
        deadline = time.monotonic() + lock_wait_seconds
        while conn.execute("SELECT pg_try_advisory_lock(%s)", (MIGRATION_LOCK_KEY,)).fetchone() != (True,):
            if time.monotonic() >= deadline:
                raise MigrationError(f"another migration has held the migration lock for over {lock_wait_seconds:g} s")
            time.sleep(0.2)
        # A dry run writes nothing, not even the bookkeeping table, so it also works read-only.
        if not dry_run:
            conn.execute(_CREATE_TABLE)
        applied = _read_applied(conn)
        _check_applied(migrations, applied)
        pending = [m for m in migrations if m.version not in applied]
        result.already_applied = len(applied)
        result.pending = [m.label for m in pending]
        if not pending:
            echo(f"nothing to apply: {len(applied)} migrations already applied")
            return result
        if dry_run:
            for m in pending:
                mode = "" if m.transactional else " (no transaction)"
                echo(f"would apply {m.label}{mode}")
            return result
        for m in pending:
            started = time.perf_counter()
            _apply(conn, m, started)
            elapsed_ms = round((time.perf_counter() - started) * 1000)
            echo(f"applied {m.label} in {elapsed_ms} ms")
            result.applied.append(m.label)
    return result


def wait_for_schema(
    url: str,
    *,
    timeout_seconds: float = 600,
    poll_seconds: float = 1.0,
    directory: Path = MIGRATIONS_DIR,
    echo: Callable[[str], None] = print,
) -> None:
    """Wait, changing nothing, until every migration this code knows is applied (the migration Job
    applies them: the services' pods only wait, so they need no right to change the schema). A
    database that has migrations this code does not know is newer, and is accepted; one where a
    known migration's recorded checksum differs is an error. MigrationError after timeout_seconds."""
    migrations = discover(directory)
    deadline = time.monotonic() + timeout_seconds
    said = ""
    while True:
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
                applied = _read_applied(conn)
            for m in migrations:
                recorded = applied.get(m.version)
                if recorded is not None and recorded[1] != m.checksum:
                    raise MigrationError(f"migration {m.label} was applied from a different file")
            pending = [m.label for m in migrations if m.version not in applied]
            if not pending:
                echo(f"the schema is ready: {len(migrations)} migrations applied")
                return
            status = f"waiting for {len(pending)} migrations: {', '.join(pending)}"
        except psycopg.OperationalError as exc:
            status = f"waiting for the database: {str(exc).strip().splitlines()[0]}"
        if status != said:
            echo(status)
            said = status
        if time.monotonic() >= deadline:
            raise MigrationError(f"gave up after {timeout_seconds:g} s: {status}")
        time.sleep(poll_seconds)


def _read_applied(conn: psycopg.Connection[TupleRow]) -> dict[int, tuple[str, str]]:
    """Version -> (name, checksum) of the recorded migrations; none when the table is absent."""
    row = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return {}
    rows = conn.execute("SELECT version, name, checksum FROM schema_migrations").fetchall()
    return {version: (name, checksum) for version, name, checksum in rows}


def _check_applied(migrations: list[Migration], applied: dict[int, tuple[str, str]]) -> None:
    by_version = {m.version: m for m in migrations}
    for version, (name, checksum) in sorted(applied.items()):
        current = by_version.get(version)
        if current is None:
            raise MigrationError(f"migration {version:04d}_{name} is applied but its file is missing")
        if current.checksum != checksum:
            raise MigrationError(
                f"migration {current.label} was changed after it was applied "
                f"(recorded sha256 {checksum[:12]}, file {current.checksum[:12]}); "
                "write a new migration instead of editing an applied one"
            )


def _record(conn: psycopg.Connection[tuple[object, ...]], m: Migration, started: float) -> None:
    conn.execute(
        "INSERT INTO schema_migrations (version, name, checksum, duration_ms) VALUES (%s, %s, %s, %s)",
        (m.version, m.name, m.checksum, round((time.perf_counter() - started) * 1000)),
    )


def _apply(conn: psycopg.Connection[tuple[object, ...]], m: Migration, started: float) -> None:
    try:
        if m.transactional:
            with conn.transaction():
                # No parameters: psycopg sends the whole file with the simple query protocol.
                conn.execute(m.text.encode("utf-8"))
                _record(conn, m, started)
        else:
            for statement in m.statements():
                conn.execute(statement.encode("utf-8"))
            # A failed CREATE INDEX CONCURRENTLY leaves an invalid index that IF NOT EXISTS would then
            # skip on the next run: refuse to record the migration while any index is invalid.
            invalid = [row[0] for row in conn.execute(_INVALID_INDEXES)]
            if invalid:
                raise MigrationError(f"migration {m.label} left invalid indexes {invalid}; drop them and run again")
            _record(conn, m, started)
    except psycopg.Error as exc:
        raise MigrationError(f"migration {m.label} failed: {exc}") from exc
