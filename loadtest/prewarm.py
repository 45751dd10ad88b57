"""The database read into memory before a measured run, as on a server that has been serving it."""

from __future__ import annotations

from typing import Any, Literal

import psycopg

Connection = psycopg.Connection[Any]


# Every relation with storage of the database's own schemas: tables, their TOAST, indexes, views.
_RELATIONS = """
SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 't', 'i', 'm') AND c.relpersistence <> 't'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast_)?temp'
"""


def prewarm(conn: Connection, mode: Literal["buffer", "read"]) -> None:
    """Every table, TOAST table, index and materialized view of the database read into memory
    (pg_prewarm): into shared_buffers ('buffer') or the OS cache only ('read'), as on a server that
    has been serving it. psycopg.Error when the extension cannot be created (not installed, or
    not a superuser)."""
    conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
    conn.execute(f"SELECT pg_prewarm(oid, %s) FROM ({_RELATIONS}) r", (mode,))
