"""The registry of read models (denorm/readmodels.py) and the database agree: every read model the
schema defines is in the registry, every entry is defined where it says, and what the registry
names (truth views, functions, queue rows) exists."""

from __future__ import annotations

import re
from typing import Any

import psycopg

from db import READMODELS_DIR
from denorm.readmodels import REGISTRY, Kind, of_kind
from tests.manifests import REPO
from tests.support import schema_files

Connection = psycopg.Connection[Any]
QUEUE_TABLES = {"mv_refresh_queue", "mv_refresh_claims", "mv_refresh_log", "mv_refresh_requests"}


def read_models_in(conn: Connection) -> set[str]:
    """What the database holds as read models: whatever has a truth view, every materialized view,
    and every table named mv_* but the refresh queue's."""
    truths = {r[0].removesuffix("_truth") for r in conn.execute(
        "SELECT viewname FROM pg_views WHERE schemaname = 'public' AND viewname LIKE '%\\_truth'")}  # fmt: skip
    matviews = {r[0] for r in conn.execute("SELECT matviewname FROM pg_matviews WHERE schemaname = 'public'")}
    tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                                         "AND tablename LIKE 'mv\\_%'")}  # fmt: skip
    return truths | matviews | (tables - QUEUE_TABLES)


def test_the_database_and_the_registry_know_the_same_read_models(conn: Connection) -> None:
    assert read_models_in(conn) == {m.name for m in REGISTRY}


def test_a_read_model_the_registry_does_not_know_is_seen(conn: Connection) -> None:
    conn.execute("CREATE VIEW stray_truth AS SELECT 1 AS x")
    conn.execute("CREATE MATERIALIZED VIEW mv_stray AS SELECT 1 AS x")
    assert read_models_in(conn) - {m.name for m in REGISTRY} == {"stray", "mv_stray"}


def test_every_entry_is_defined_in_its_file(conn: Connection) -> None:
    for model in REGISTRY:
        text = model.path.read_text()
        assert re.search(rf"^CREATE VIEW {model.truth} AS", text, re.MULTILINE), (model.name, "truth")
        if model.kind is not Kind.REDIS:
            kind = {Kind.MATVIEW: "MATERIALIZED VIEW", Kind.FOLD: "TABLE", Kind.LEDGER: "VIEW"}[model.kind]
            assert re.search(rf"^CREATE {kind} {model.name}\b", text, re.MULTILINE), (model.name, kind)
        for function in (model.fold, model.rebuild, model.repair):
            if function is not None:
                assert f"CREATE FUNCTION {function}(" in text, (model.name, function)
                assert conn.execute("SELECT to_regproc(%s) IS NOT NULL", (function,)).fetchone() == (True,)


def test_every_read_model_file_is_in_the_registry() -> None:
    assert set(READMODELS_DIR.glob("*.sql")) == {m.path for m in REGISTRY}
    assert len(schema_files()) == len(set(schema_files()))


def test_the_refresh_queue_holds_the_registrys_refreshed_views(conn: Connection) -> None:
    queued = {r[0] for r in conn.execute("SELECT view_name FROM mv_refresh_queue")}
    assert queued == {m.name for m in REGISTRY if m.refreshed}
    assert {m.clock for m in of_kind(Kind.MATVIEW)} <= queued
    assert {m.clock for m in of_kind(Kind.FOLD)} == {"fold"}
    assert all(m.clock is None and m.bound_seconds == 0 for m in of_kind(Kind.LEDGER))


def test_the_docs_list_every_read_model_with_its_file() -> None:
    text = (REPO / "docs" / "read-models.md").read_text()
    for model in REGISTRY:
        line = next((row for row in text.splitlines() if row.startswith(f"| `{model.name}` |")), None)
        assert line is not None, model.name
        assert f"db/readmodels/{model.file}" in line and f"| {model.kind} |" in line, line
