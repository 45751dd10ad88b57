"""The migration runner and the source schema it builds, against a real Postgres."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from psycopg import errors

from db import MIGRATIONS_DIR
from denorm.migrate import MIGRATION_LOCK_KEY, MigrationError, discover, ensure_database, migrate
from tests.conftest import database_url_for, drop_database, unique_name
from tests.support import DENORM, Connection, applied_versions, cli_env, run_denorm, table_exists

SOURCE_TABLES = (
    "users",
    "projects",
    "project_upvotes",
    "project_comments",
    "chains",
    "chain_projects",
    "chain_members",
    "forum_threads",
    "forum_posts",
    "messages",
    "intro_requests",
)
ALL_LABELS = [m.label for m in discover()]
ALL_VERSIONS = [m.version for m in discover()]


def quiet(_message: str) -> None:
    """An ``echo`` that drops the runner's messages."""


@pytest.fixture
def migrations_copy(tmp_path: Path) -> Path:
    """A private copy of db/migrations that a test may edit and add to."""
    directory = tmp_path / "migrations"
    directory.mkdir()
    for path in MIGRATIONS_DIR.glob("*.sql"):
        shutil.copy2(path, directory / path.name)
    return directory


def connect(url: str) -> Connection:
    return psycopg.connect(url, autocommit=True)


# --- applying, and applying again ------------------------------------------------------------------


def test_first_migrate_applies_everything_and_records_checksums(empty_database_url: str) -> None:
    messages: list[str] = []
    result = migrate(empty_database_url, echo=messages.append)

    assert result.applied == ALL_LABELS
    assert result.pending == ALL_LABELS
    assert result.already_applied == 0
    assert [m.split(" in ")[0] for m in messages] == [f"applied {label}" for label in ALL_LABELS]
    with connect(empty_database_url) as conn:
        recorded = conn.execute("SELECT version, name, checksum FROM schema_migrations ORDER BY version")
        assert [tuple(row) for row in recorded] == [(m.version, m.name, m.checksum) for m in discover()]
        for table in SOURCE_TABLES:
            assert table_exists(conn, table), table


def test_second_migrate_applies_nothing_and_says_so(database_url: str) -> None:
    messages: list[str] = []
    result = migrate(database_url, echo=messages.append)

    assert result.applied == []
    assert result.pending == []
    assert result.already_applied == len(ALL_VERSIONS)
    assert len(messages) == 1
    assert "nothing to apply" in messages[0]
    with connect(database_url) as conn:
        assert applied_versions(conn) == ALL_VERSIONS


def test_cli_migrate_applies_then_reports_nothing_to_apply(empty_database_url: str) -> None:
    env = cli_env(DATABASE_URL=empty_database_url)
    first = run_denorm(["migrate"], env=env)
    assert first.returncode == 0, first.stderr
    assert f"applied {ALL_LABELS[-1]}" in first.stdout

    second = run_denorm(["migrate"], env=env)
    assert second.returncode == 0, second.stderr
    assert "nothing to apply" in second.stdout
    assert "applied " not in second.stdout


def test_migrate_wait_changes_nothing_and_returns_once_the_job_has_migrated(empty_database_url: str) -> None:
    """The pods' init container: `migrate --wait` applies nothing (the pods need no right to change
    the schema), gives up after its timeout, and returns as soon as the migrations are in."""
    env = cli_env(DATABASE_URL=empty_database_url)
    early = run_denorm(["migrate", "--wait", "--timeout", "1"], env=env)
    assert early.returncode == 1 and "gave up" in early.stderr, early.stderr
    with connect(empty_database_url) as conn:
        assert not table_exists(conn, "schema_migrations")  # it created nothing
    waiter = subprocess.Popen([*DENORM, "migrate", "--wait", "--timeout", "60"], env=env,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    time.sleep(1.5)
    assert waiter.poll() is None  # still waiting
    migrate(empty_database_url, echo=quiet)  # the Job
    out, _ = waiter.communicate(timeout=30)
    assert waiter.returncode == 0 and "the schema is ready" in out


# --- two processes at once ---------------------------------------------------------------------------


def _waiting_for_migration_lock(conn: Connection) -> int:
    """How many other sessions of this database are asking for the runner's advisory lock: it asks
    with pg_try_advisory_lock() until it gets it (denorm/migrate.py says why), so a waiting session
    is one whose last statement was that."""
    row = conn.execute(
        """
        SELECT count(*) FROM pg_stat_activity
        WHERE datname = current_database() AND pid <> pg_backend_pid()
          AND query LIKE 'SELECT pg_try_advisory_lock(%%'
        """
    ).fetchone()
    assert row is not None
    return int(row[0])


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def test_two_migrate_processes_at_once_apply_each_migration_once(empty_database_url: str) -> None:
    """Both processes are made to queue on the lock together, so they really do race for it."""
    env = cli_env(DATABASE_URL=empty_database_url)
    processes: list[subprocess.Popen[str]] = []
    try:
        with connect(empty_database_url) as holder:
            holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
            for _ in range(2):
                processes.append(
                    subprocess.Popen(
                        [*DENORM, "migrate"],
                        env=env,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        text=True,
                    )
                )

            def both_waiting() -> bool:
                if any(p.poll() is not None for p in processes):
                    outputs = [p.communicate() for p in processes if p.poll() is not None]
                    raise AssertionError(f"a migrate process exited before taking the lock: {outputs}")
                return _waiting_for_migration_lock(holder) == 2

            _wait_for(both_waiting, timeout=60, what="both processes to wait on the migration lock")
            holder.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
        outputs = [p.communicate(timeout=120) for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()

    for p, (out, err) in zip(processes, outputs, strict=True):
        assert p.returncode == 0, f"stdout={out!r} stderr={err!r}"
    stdouts = sorted(out for out, _ in outputs)
    # One of them applied everything; the other found nothing left to do.
    assert sum(f"applied {ALL_LABELS[0]}" in out for out in stdouts) == 1, stdouts
    assert sum("nothing to apply" in out for out in stdouts) == 1, stdouts
    with connect(empty_database_url) as conn:
        assert applied_versions(conn) == ALL_VERSIONS
        for table in SOURCE_TABLES:
            assert table_exists(conn, table), table


def test_concurrent_create_database_does_not_fail(admin_conn: Connection) -> None:
    """`migrate --create-database` on several replicas at once: every one succeeds, one creates it.

    Postgres reports losing this race as a unique violation on pg_database, not DuplicateDatabase.
    """
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    for _ in range(3):
        name = unique_name("test")
        url = database_url_for(name)
        barrier = Barrier(6)

        def create(url: str = url, barrier: Barrier = barrier) -> bool:
            barrier.wait()
            return ensure_database(url)

        try:
            with ThreadPoolExecutor(max_workers=6) as pool:
                results = [f.result() for f in [pool.submit(create) for _ in range(6)]]
            assert results.count(True) == 1, results
        finally:
            drop_database(admin_conn, name)


# --- refusing to go on -------------------------------------------------------------------------------


def test_changed_applied_migration_is_refused_and_nothing_else_applied(
    empty_database_url: str, migrations_copy: Path
) -> None:
    assert migrate(empty_database_url, directory=migrations_copy, echo=quiet).applied == ALL_LABELS

    first = migrations_copy / f"{ALL_LABELS[0]}.sql"
    first.write_text(first.read_text() + "\n-- an innocent-looking edit\n")
    (migrations_copy / "9999_after_the_edit.sql").write_text("CREATE TABLE after_the_edit (id integer);\n")

    for dry_run in (True, False):
        with pytest.raises(MigrationError, match="changed") as info:
            migrate(empty_database_url, directory=migrations_copy, dry_run=dry_run, echo=quiet)
        assert ALL_LABELS[0] in str(info.value)
    with connect(empty_database_url) as conn:
        assert applied_versions(conn) == ALL_VERSIONS
        assert not table_exists(conn, "after_the_edit")


def test_applied_migration_whose_file_is_gone_is_refused(database_url: str, migrations_copy: Path) -> None:
    (migrations_copy / f"{ALL_LABELS[-1]}.sql").unlink()
    (migrations_copy / "9999_after_the_loss.sql").write_text("CREATE TABLE after_the_loss (id integer);\n")

    with pytest.raises(MigrationError, match="file is missing"):
        migrate(database_url, directory=migrations_copy, echo=quiet)
    with connect(database_url) as conn:
        assert applied_versions(conn) == ALL_VERSIONS
        assert not table_exists(conn, "after_the_loss")


def test_failing_migration_is_rolled_back_unrecorded_and_stops_the_run(
    database_url: str, migrations_copy: Path
) -> None:
    broken = migrations_copy / "9100_broken.sql"
    broken.write_text("CREATE TABLE broken_first (id integer);\nINSERT INTO no_such_table VALUES (1);\n")
    (migrations_copy / "9101_after_broken.sql").write_text("CREATE TABLE after_broken (id integer);\n")

    with pytest.raises(MigrationError, match=r"9100_broken failed.*no_such_table"):
        migrate(database_url, directory=migrations_copy, echo=quiet)
    with connect(database_url) as conn:
        assert applied_versions(conn) == ALL_VERSIONS
        assert not table_exists(conn, "broken_first")  # its own first statement was rolled back
        assert not table_exists(conn, "after_broken")
        # The failed run let go of the lock: another session can take it at once.
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (MIGRATION_LOCK_KEY,)).fetchone()
        assert row is not None and row[0] is True
        conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))

    broken.write_text("CREATE TABLE broken_first (id integer);\n")
    result = migrate(database_url, directory=migrations_copy, echo=quiet)
    assert result.applied == ["9100_broken", "9101_after_broken"]


def test_cli_reports_a_failing_migration_without_a_traceback(empty_database_url: str) -> None:
    with connect(empty_database_url) as conn:
        conn.execute("CREATE TABLE users (id integer)")  # 0001 will collide with it
    result = run_denorm(["migrate"], env=cli_env(DATABASE_URL=empty_database_url))
    assert result.returncode == 1
    assert f"migrate: migration {ALL_LABELS[0]} failed" in result.stderr
    assert "Traceback" not in result.stderr
    with connect(empty_database_url) as conn:
        assert applied_versions(conn) == []


@pytest.mark.parametrize(
    "filename", ["2_short_version.sql", "0002_CamelCase.sql", "0002-dashed.sql", "0002_.sql", "00002_x.sql"]
)
def test_misnamed_migration_file_is_an_error(empty_database_url: str, migrations_copy: Path, filename: str) -> None:
    (migrations_copy / filename).write_text("CREATE TABLE misnamed (id integer);\n")

    with pytest.raises(MigrationError, match=r"NNNN_snake_case\.sql"):
        migrate(empty_database_url, directory=migrations_copy, echo=quiet)
    with connect(empty_database_url) as conn:
        assert applied_versions(conn) == []
        assert not table_exists(conn, "users")


def test_duplicated_version_is_an_error(migrations_copy: Path) -> None:
    (migrations_copy / "9002_one.sql").write_text("SELECT 1;\n")
    (migrations_copy / "9002_other.sql").write_text("SELECT 2;\n")
    with pytest.raises(MigrationError, match="used twice"):
        discover(migrations_copy)


# --- dry run -----------------------------------------------------------------------------------------


def test_dry_run_lists_pending_and_writes_nothing(empty_database_url: str) -> None:
    messages: list[str] = []
    result = migrate(empty_database_url, dry_run=True, echo=messages.append)

    assert result.pending == ALL_LABELS
    assert result.applied == []
    assert messages == [f"would apply {m.label}" + ("" if m.transactional else " (no transaction)") for m in discover()]
    with connect(empty_database_url) as conn:
        assert not table_exists(conn, "schema_migrations")
        for table in SOURCE_TABLES:
            assert not table_exists(conn, table), table


def test_cli_dry_run_lists_pending_and_applies_nothing(empty_database_url: str, database_url: str) -> None:
    result = run_denorm(["migrate", "--dry-run"], env=cli_env(DATABASE_URL=empty_database_url))
    assert result.returncode == 0, result.stderr
    for label in ALL_LABELS:
        assert f"would apply {label}" in result.stdout
    assert "applied " not in result.stdout
    with connect(empty_database_url) as conn:
        assert applied_versions(conn) == []
        assert not table_exists(conn, "users")

    migrated = run_denorm(["migrate", "--dry-run"], env=cli_env(DATABASE_URL=database_url))
    assert migrated.returncode == 0, migrated.stderr
    assert "nothing to apply" in migrated.stdout


def test_dry_run_marks_no_transaction_migrations(database_url: str, migrations_copy: Path) -> None:
    (migrations_copy / "9001_concurrently.sql").write_text(
        "-- migrate:no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS u_idx ON users (created_at);\n"
    )
    messages: list[str] = []
    result = migrate(database_url, directory=migrations_copy, dry_run=True, echo=messages.append)
    assert result.pending == ["9001_concurrently"]
    assert messages == ["would apply 9001_concurrently (no transaction)"]
    with connect(database_url) as conn:
        assert applied_versions(conn) == ALL_VERSIONS
        assert not table_exists(conn, "u_idx")


# --- migrations outside a transaction --------------------------------------------------------------

CONCURRENT_INDEXES = """\
-- migrate:no-transaction
-- Built without blocking writes; IF NOT EXISTS makes a rerun after a partial failure safe.
CREATE INDEX CONCURRENTLY IF NOT EXISTS users_created_at_idx ON users (created_at);

CREATE INDEX CONCURRENTLY IF NOT EXISTS projects_title_idx
    ON projects (title);
"""


def _index_valid(conn: Connection, name: str) -> bool | None:
    """pg_index.indisvalid of the index, None when there is no such index."""
    row = conn.execute("SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass(%s)", (name,)).fetchone()
    return None if row is None else bool(row[0])


def test_no_transaction_migration_builds_valid_concurrent_indexes(database_url: str, migrations_copy: Path) -> None:
    (migrations_copy / "9001_concurrent_indexes.sql").write_text(CONCURRENT_INDEXES)

    messages: list[str] = []
    result = migrate(database_url, directory=migrations_copy, echo=messages.append)

    assert result.applied == ["9001_concurrent_indexes"]
    assert messages[0].startswith("applied 9001_concurrent_indexes in ")
    with connect(database_url) as conn:
        assert _index_valid(conn, "users_created_at_idx") is True
        assert _index_valid(conn, "projects_title_idx") is True
        assert applied_versions(conn) == sorted([*ALL_VERSIONS, 9001])


def test_concurrent_index_without_the_marker_fails_cleanly(database_url: str, migrations_copy: Path) -> None:
    """The marker is what makes the previous test pass: without it the file runs in a transaction."""
    (migrations_copy / "9001_concurrent_indexes.sql").write_text(
        CONCURRENT_INDEXES.replace("-- migrate:no-transaction\n", "")
    )
    with pytest.raises(MigrationError, match="cannot run inside a transaction block"):
        migrate(database_url, directory=migrations_copy, echo=quiet)
    with connect(database_url) as conn:
        assert _index_valid(conn, "users_created_at_idx") is None
        assert applied_versions(conn) == ALL_VERSIONS


def test_no_transaction_migration_failing_halfway_is_unrecorded_and_can_be_rerun(
    database_url: str, migrations_copy: Path
) -> None:
    migration = migrations_copy / "9001_concurrent_indexes.sql"
    migration.write_text(
        CONCURRENT_INDEXES + "CREATE INDEX CONCURRENTLY IF NOT EXISTS nope_idx ON no_such_table (id);\n"
    )
    with pytest.raises(MigrationError, match=r"9001_concurrent_indexes failed.*no_such_table"):
        migrate(database_url, directory=migrations_copy, echo=quiet)
    with connect(database_url) as conn:
        # Statements before the failure stay (autocommit), but the migration is not recorded.
        assert _index_valid(conn, "users_created_at_idx") is True
        assert applied_versions(conn) == ALL_VERSIONS

    migration.write_text(CONCURRENT_INDEXES)
    assert migrate(database_url, directory=migrations_copy, echo=quiet).applied == ["9001_concurrent_indexes"]
    with connect(database_url) as conn:
        assert _index_valid(conn, "projects_title_idx") is True
        assert applied_versions(conn) == sorted([*ALL_VERSIONS, 9001])


# --- the source schema -------------------------------------------------------------------------------


def make_user(conn: Connection, username: str) -> int:
    row = conn.execute(
        "INSERT INTO users (username, display_name) VALUES (%s, %s) RETURNING id",
        (username, username.title()),
    ).fetchone()
    assert row is not None
    return int(row[0])


def make_project(conn: Connection, owner_id: int, title: str) -> int:
    row = conn.execute(
        "INSERT INTO projects (owner_id, title) VALUES (%s, %s) RETURNING id", (owner_id, title)
    ).fetchone()
    assert row is not None
    return int(row[0])


def count(conn: Connection, query: str, params: tuple[object, ...] = ()) -> int:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return int(row[0])


_INTRO = "INSERT INTO intro_requests (requester_id, target_id, status, responded_at) VALUES "
BAD_ROWS = {
    "self-message": (
        "INSERT INTO messages (sender_id, recipient_id, body) VALUES (%(a)s, %(a)s, 'hi me')",
        "messages_no_self_message",
    ),
    "self-intro": (_INTRO + "(%(a)s, %(a)s, 'pending', NULL)", "intro_requests_no_self_intro"),
    # responded_at is set so that only the status check can object.
    "bad-status": (_INTRO + "(%(a)s, %(b)s, 'maybe', now())", "intro_requests_status_check"),
    "accepted-unanswered": (
        _INTRO + "(%(a)s, %(b)s, 'accepted', NULL)",
        "intro_requests_responded_matches_status",
    ),
    "declined-unanswered": (
        _INTRO + "(%(a)s, %(b)s, 'declined', NULL)",
        "intro_requests_responded_matches_status",
    ),
    "pending-answered": (
        _INTRO + "(%(a)s, %(b)s, 'pending', now())",
        "intro_requests_responded_matches_status",
    ),
}


@pytest.mark.parametrize(("statement", "constraint"), list(BAD_ROWS.values()), ids=list(BAD_ROWS))
def test_check_constraints_reject_bad_rows(conn: Connection, statement: str, constraint: str) -> None:
    users = {"a": make_user(conn, "alice"), "b": make_user(conn, "bob")}
    with pytest.raises(errors.CheckViolation) as info:
        conn.execute(statement, users)
    assert info.value.diag.constraint_name == constraint


def test_check_constraints_accept_good_rows(conn: Connection) -> None:
    """The counterpart of the rejections above: the same shapes, made valid, go in."""
    users = {"a": make_user(conn, "alice"), "b": make_user(conn, "bob")}
    conn.execute("INSERT INTO messages (sender_id, recipient_id, body) VALUES (%(a)s, %(b)s, 'hi')", users)
    conn.execute("INSERT INTO intro_requests (requester_id, target_id) VALUES (%(a)s, %(b)s)", users)
    for status in ("accepted", "declined"):
        conn.execute(
            "INSERT INTO intro_requests (requester_id, target_id, status, responded_at)"
            " VALUES (%(a)s, %(b)s, %(status)s, now())",
            {**users, "status": status},
        )
    assert count(conn, "SELECT count(*) FROM intro_requests") == 3


def test_deleting_a_user_cascades_to_what_they_own_and_did(conn: Connection) -> None:
    alice, bob, carol = (make_user(conn, name) for name in ("alice", "bob", "carol"))
    alices_project = make_project(conn, alice, "Alice's")
    bobs_project = make_project(conn, bob, "Bob's")
    conn.execute(
        "INSERT INTO project_upvotes (user_id, project_id) VALUES (%s, %s), (%s, %s), (%s, %s)",
        (alice, bobs_project, bob, alices_project, bob, bobs_project),
    )
    conn.execute(
        "INSERT INTO messages (sender_id, recipient_id, body) VALUES (%s, %s, 'a'), (%s, %s, 'b'), (%s, %s, 'c')",
        (alice, bob, bob, alice, carol, bob),
    )
    conn.execute(
        "INSERT INTO project_comments (project_id, author_id, body) VALUES (%s, %s, 'x'), (%s, %s, 'y')",
        (bobs_project, alice, alices_project, bob),
    )
    conn.execute(
        "INSERT INTO intro_requests (requester_id, target_id, project_id) VALUES (%s, %s, NULL), (%s, %s, %s)",
        (alice, bob, carol, bob, alices_project),
    )

    conn.execute("DELETE FROM users WHERE id = %s", (alice,))

    assert count(conn, "SELECT count(*) FROM projects WHERE owner_id = %s", (alice,)) == 0
    assert [tuple(r) for r in conn.execute("SELECT user_id, project_id FROM project_upvotes")] == [(bob, bobs_project)]
    assert [tuple(r) for r in conn.execute("SELECT sender_id, recipient_id FROM messages")] == [(carol, bob)]
    assert count(conn, "SELECT count(*) FROM project_comments") == 0  # by alice, or on alice's project
    assert [tuple(r) for r in conn.execute("SELECT requester_id, target_id, project_id FROM intro_requests")] == [
        (carol, bob, None)
    ]
    assert count(conn, "SELECT count(*) FROM users") == 2


def test_deleting_a_project_clears_intro_requests_project_id(conn: Connection) -> None:
    alice, bob = make_user(conn, "alice"), make_user(conn, "bob")
    project = make_project(conn, alice, "Context")
    conn.execute(
        "INSERT INTO intro_requests (requester_id, target_id, project_id) VALUES (%s, %s, %s)",
        (bob, alice, project),
    )

    conn.execute("DELETE FROM projects WHERE id = %s", (project,))

    rows = [tuple(r) for r in conn.execute("SELECT requester_id, target_id, project_id FROM intro_requests")]
    assert rows == [(bob, alice, None)]


def test_foreign_keys_cascade_except_the_intro_project(conn: Connection) -> None:
    rows = conn.execute(
        """
        SELECT c.conrelid::regclass::text, a.attname::text, c.confdeltype::text
        FROM pg_constraint c
        JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
        WHERE c.contype = 'f' AND c.connamespace = 'public'::regnamespace
        """
    ).fetchall()
    assert len(rows) >= 19
    actions = {(table, column): action for table, column, action in rows}
    assert actions.pop(("intro_requests", "project_id")) == "n"  # SET NULL
    assert set(actions.values()) == {"c"}, actions  # CASCADE


_FOREIGN_KEYS = """
SELECT c.conrelid::regclass::text, c.conname::text,
       array_agg(a.attname::text ORDER BY k.ord)
FROM pg_constraint c
CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
WHERE c.contype = 'f' AND c.connamespace = 'public'::regnamespace
GROUP BY c.oid, c.conrelid, c.conname
ORDER BY 1, 2
"""

# Key columns of every valid btree index, in order; an expression column comes back as NULL.
_INDEXES = """
SELECT i.indrelid::regclass::text,
       array(SELECT a.attname::text
             FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
             LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
             WHERE k.ord <= i.indnkeyatts
             ORDER BY k.ord),
       pg_get_expr(i.indpred, i.indrelid)
FROM pg_index i
JOIN pg_class ic ON ic.oid = i.indexrelid
JOIN pg_am am ON am.oid = ic.relam
WHERE ic.relnamespace = 'public'::regnamespace AND i.indisvalid AND am.amname = 'btree'
"""


def _not_null_predicates(columns: list[str]) -> set[str]:
    """How pg_get_expr prints "every FK column IS NOT NULL", the one partial index an FK can use."""
    if len(columns) == 1:
        return {f"({columns[0]} IS NOT NULL)"}
    return {"(" + " AND ".join(f"({c} IS NOT NULL)" for c in order) + ")" for order in itertools.permutations(columns)}


def unindexed_foreign_keys(conn: Connection) -> list[str]:
    """Foreign keys whose columns do not lead any index (in any order), as "table.constraint"."""
    indexes: dict[str, list[tuple[list[str | None], str | None]]] = {}
    for table, columns, predicate in conn.execute(_INDEXES):
        indexes.setdefault(table, []).append((columns, predicate))
    missing = []
    for table, constraint, fk_columns in conn.execute(_FOREIGN_KEYS):
        wanted = set(fk_columns)
        usable = _not_null_predicates(fk_columns)
        if not any(
            len(columns) >= len(wanted)
            and set(columns[: len(wanted)]) == wanted
            and (predicate is None or predicate in usable)
            for columns, predicate in indexes.get(table, [])
        ):
            missing.append(f"{table}.{constraint}")
    return missing


def test_every_foreign_key_leads_an_index(conn: Connection) -> None:
    assert count(conn, "SELECT count(*) FROM pg_constraint WHERE contype = 'f'") >= 19
    assert unindexed_foreign_keys(conn) == []


def test_unindexed_foreign_key_check_can_fail(conn: Connection) -> None:
    """The check above is only worth something if it notices a missing index."""
    conn.execute(
        """
        CREATE TABLE audit (
            id         bigint PRIMARY KEY,
            user_id    bigint REFERENCES users (id) ON DELETE CASCADE,
            project_id bigint REFERENCES projects (id) ON DELETE CASCADE,
            note       text
        );
        CREATE INDEX audit_note_user_idx ON audit (note, user_id);          -- not leading
        CREATE INDEX audit_project_idx ON audit (project_id) WHERE note <> ''; -- unusable predicate
        CREATE INDEX audit_lower_note_idx ON audit (lower(note), user_id);  -- expression first
        """
    )
    assert unindexed_foreign_keys(conn) == ["audit.audit_project_id_fkey", "audit.audit_user_id_fkey"]

    conn.execute("CREATE INDEX audit_user_note_idx ON audit (user_id, note)")
    conn.execute("CREATE INDEX audit_project_nn_idx ON audit (project_id) WHERE project_id IS NOT NULL")
    assert unindexed_foreign_keys(conn) == []


def test_failed_concurrent_index_is_never_recorded_as_applied(conn: Connection, migrations_copy: Path) -> None:
    """A failed CREATE UNIQUE INDEX CONCURRENTLY leaves an invalid index that IF NOT EXISTS would skip."""
    alice, bob = make_user(conn, "alice"), make_user(conn, "bob")
    make_project(conn, alice, "same title")
    make_project(conn, bob, "same title")
    url = str(conn.info.dsn)
    (migrations_copy / "9001_unique_titles.sql").write_text(
        "-- migrate:no-transaction\n"
        "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS projects_title_key ON projects (title);\n"
    )
    with pytest.raises(MigrationError, match="9001_unique_titles failed"):
        migrate(url, directory=migrations_copy, echo=quiet)
    assert _index_valid(conn, "projects_title_key") is False
    # The rerun's IF NOT EXISTS skips the broken index: the runner must notice and refuse.
    with pytest.raises(MigrationError, match="invalid indexes"):
        migrate(url, directory=migrations_copy, echo=quiet)
    assert applied_versions(conn) == ALL_VERSIONS
