"""The current-state schema (db/schema/ and db/readmodels/, in the registry's order) is exactly what the
migrations build: the same tables, columns, constraints, indexes, views, functions, triggers and
extensions, and the same rows in the tables the schema fills."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from denorm.migrate import migrate
from tests.conftest import AdminConnection, scratch_database
from tests.support import schema_files, schema_of

Connection = psycopg.Connection[Any]

# Each a set of rows describing one part of the catalog of the public schema.
CATALOG: dict[str, str] = {
    "columns": """
        SELECT c.relname, c.relkind, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid), a.attgenerated, a.attidentity, c.reloptions
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'v', 'm', 'p') AND c.relname <> 'schema_migrations'""",
    "constraints": """
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint
        WHERE connamespace = 'public'::regnamespace AND conrelid::regclass::text <> 'schema_migrations'""",
    "indexes": "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' "
    "AND tablename <> 'schema_migrations'",
    "views": "SELECT viewname, definition FROM pg_views WHERE schemaname = 'public'",
    "materialized views": "SELECT matviewname, definition FROM pg_matviews WHERE schemaname = 'public'",
    "functions": """
        SELECT p.proname, pg_get_function_identity_arguments(p.oid), p.prokind,
               CASE WHEN p.prokind IN ('f', 'p') THEN pg_get_functiondef(p.oid) END
        FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace""",
    "triggers": "SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid) FROM pg_trigger WHERE NOT tgisinternal",
    "extensions": "SELECT extname FROM pg_extension",
    "sequences": "SELECT sequencename, data_type, increment_by FROM pg_sequences WHERE schemaname = 'public'",
    # The rows the schema itself writes.
    "refresh queue": "SELECT view_name, depends_on, status FROM mv_refresh_queue",
    "refresh claims": "SELECT view_name FROM mv_refresh_claims",
    "fold state": "SELECT id FROM fold_state",  # as_of is when each database was made
    "ledger trigger bodies": "SELECT source, event, model, body, position FROM ledger_trigger_bodies",
}


def catalog(url: str) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(url) as conn:
        return {part: sorted(map(tuple, conn.execute(q.encode()).fetchall()), key=repr) for part, q in CATALOG.items()}


def apply_schema(url: str) -> None:
    """The current-state schema, as a fresh database would run it: each file's schema part, in order."""
    with psycopg.connect(url) as conn:
        for path in schema_files():
            conn.execute(schema_of(path).encode())


@pytest.fixture
def both(admin_conn: AdminConnection) -> Any:
    with scratch_database(admin_conn, "migrated") as migrated, scratch_database(admin_conn, "schema") as schema:
        migrate(migrated, echo=lambda _m: None)
        apply_schema(schema)
        yield migrated, schema


def test_the_migrations_build_the_current_state_schema(both: tuple[str, str]) -> None:
    migrated, schema = catalog(both[0]), catalog(both[1])
    for part in CATALOG:
        assert migrated[part], f"no {part} at all: the comparison would prove nothing"
        only_migrated = [r for r in migrated[part] if r not in schema[part]]
        only_schema = [r for r in schema[part] if r not in migrated[part]]
        assert (only_migrated, only_schema) == ([], []), f"{part} differ"


def test_the_comparison_sees_a_changed_function_body(both: tuple[str, str]) -> None:
    with psycopg.connect(both[1], autocommit=True) as conn:
        conn.execute("CREATE OR REPLACE FUNCTION json_str(v text) RETURNS text LANGUAGE sql STABLE PARALLEL SAFE "
                     "RETURN coalesce(to_json(v)::text, 'NULL')")  # fmt: skip
    migrated, schema = catalog(both[0]), catalog(both[1])
    assert migrated["functions"] != schema["functions"]
    assert {p: rows for p, rows in migrated.items() if p != "functions"} == {
        p: rows for p, rows in schema.items() if p != "functions"
    }
