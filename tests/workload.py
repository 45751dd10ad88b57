"""Random writes against the source tables, from several connections at once, for the read-model tests.

Every operation is plain SQL, as any writer could send it. The ids live in small ranges so that
connections collide on the same users, projects and conversations, and ids are deleted and reused.

The workload is built so that the source tables alone cannot deadlock: ordinary connections send
single statements that lock at most one source row of their own (plus foreign-key key-share locks),
or transactions that only insert messages and comments; only the one "structural" connection sends
statements that lock many rows (deletes that cascade, bulk updates). So any deadlock seen is one
the read models made.

One source-level cycle remains and is cut by a lock timeout: deleting a user locks the user's row,
then cascades to the projects and chains the user owns, while a comment (or a chain join) takes its
foreign-key key-share locks in column order, the project (or chain) first, then the user. A comment
by the user on the user's own project can so hold the project and wait for the user while the
delete holds the user and waits for the project. `delete_user` therefore gives up after
`DELETE_USER_LOCK_TIMEOUT` (counted as rejected) instead of waiting the deadlock detector's second.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import errors

from denorm.maintenance import fold

USERS = 8
PROJECTS = 6
CHAINS = 2

POPULATION = """
INSERT INTO users (id, username, display_name)
SELECT i, 'user' || i, 'User ' || i FROM generate_series(1, 6) i;
INSERT INTO projects (id, owner_id, title) SELECT i, 1 + i % 3, 'Project ' || i FROM generate_series(1, 4) i;
INSERT INTO chains (id, slug, name, owner_id) VALUES (1, 'one', 'One', 1), (2, 'two', 'Two', 2);
INSERT INTO project_upvotes (user_id, project_id) SELECT u, p FROM generate_series(1, 6) u, generate_series(1, 4) p
WHERE (u + p) % 3 = 0;
INSERT INTO project_comments (project_id, author_id, body)
SELECT 1 + i % 4, 1 + i % 6, 'hello' FROM generate_series(1, 6) i;
INSERT INTO messages (sender_id, recipient_id, body, created_at, read_at)
SELECT 1 + i % 6, 1 + (i + 1 + i % 2) % 6, 'message ' || i, now() - (20 - i) * interval '1 minute',
       CASE WHEN i % 3 = 0 THEN now() END
FROM generate_series(1, 12) i;
INSERT INTO intro_requests (requester_id, target_id, project_id, status, responded_at)
VALUES (1, 2, 1, 'pending', NULL), (3, 2, NULL, 'accepted', now()), (4, 5, 2, 'declined', now());
INSERT INTO chain_members (chain_id, user_id) VALUES (1, 1), (1, 2), (2, 3);
INSERT INTO chain_projects (chain_id, project_id) VALUES (1, 1), (1, 2), (2, 3);
INSERT INTO forum_threads (chain_id, author_id, title) VALUES (1, 1, 'Welcome'), (2, 3, 'Redis questions');
INSERT INTO forum_posts (thread_id, author_id, body) SELECT 1 + i % 2, 1 + i % 6, 'post' FROM generate_series(1, 5) i;
"""

SOURCE_TABLES = (
    "users, projects, project_upvotes, project_comments, chains, chain_projects, chain_members, "
    "forum_threads, forum_posts, messages, intro_requests"
)

LAST_OF_PAIR = """(SELECT id FROM messages WHERE (sender_id, recipient_id) IN ((%(u)s, %(v)s), (%(v)s, %(u)s))
                  ORDER BY created_at DESC, id DESC LIMIT 1)"""

# Statements any connection may send: one source row each (besides foreign-key checks).
SINGLE: dict[str, str] = {
    "add_user": "INSERT INTO users (id, username, display_name) VALUES (%(u)s, 'user' || %(u)s, 'U') "
    "ON CONFLICT DO NOTHING",
    "add_project": "INSERT INTO projects (id, owner_id, title) VALUES (%(p)s, %(u)s, 'P') ON CONFLICT DO NOTHING",
    "change_owner": "UPDATE projects SET owner_id = %(u)s WHERE id = %(p)s",
    "rename_project": "UPDATE projects SET title = 'renamed', updated_at = now() WHERE id = %(p)s",
    "upvote": "INSERT INTO project_upvotes (user_id, project_id) VALUES (%(u)s, %(p)s) ON CONFLICT DO NOTHING",
    "unvote": "DELETE FROM project_upvotes WHERE user_id = %(u)s AND project_id = %(p)s",
    "comment": "INSERT INTO project_comments (project_id, author_id, body) VALUES (%(p)s, %(u)s, 'nice')",
    "delete_comment": "DELETE FROM project_comments WHERE id = "
    "(SELECT min(id) FROM project_comments WHERE project_id = %(p)s)",
    "send": "INSERT INTO messages (sender_id, recipient_id, body, created_at) "
    "VALUES (%(u)s, %(v)s, %(body)s, now() + %(dt)s * interval '1 second')",
    "read_one": "UPDATE messages SET read_at = now() WHERE id = "
    "(SELECT max(id) FROM messages WHERE recipient_id = %(u)s AND read_at IS NULL)",
    "unread_one": "UPDATE messages SET read_at = NULL WHERE id = "
    "(SELECT max(id) FROM messages WHERE recipient_id = %(u)s AND read_at IS NOT NULL)",
    "delete_last": f"DELETE FROM messages WHERE id = {LAST_OF_PAIR}",
    "backdate_last": f"UPDATE messages SET created_at = created_at - interval '1 hour', body = %(body)s "
    f"WHERE id = {LAST_OF_PAIR}",
    "redirect_last": f"UPDATE messages SET recipient_id = %(w)s WHERE id = {LAST_OF_PAIR} AND sender_id <> %(w)s",
    "intro": "INSERT INTO intro_requests (requester_id, target_id, project_id) VALUES (%(u)s, %(v)s, %(p)s)",
    "answer": "UPDATE intro_requests SET status = %(status)s, responded_at = now() WHERE id = "
    "(SELECT min(id) FROM intro_requests WHERE target_id = %(u)s AND status = 'pending')",
    "reopen": "UPDATE intro_requests SET status = 'pending', responded_at = NULL WHERE id = "
    "(SELECT max(id) FROM intro_requests WHERE requester_id = %(u)s AND status <> 'pending')",
    "delete_intro": "DELETE FROM intro_requests WHERE id = "
    "(SELECT max(id) FROM intro_requests WHERE requester_id = %(u)s)",
    "join": "INSERT INTO chain_members (chain_id, user_id) VALUES (%(c)s, %(u)s) ON CONFLICT DO NOTHING",
    "add_to_chain": "INSERT INTO chain_projects (chain_id, project_id) VALUES (%(c)s, %(p)s) ON CONFLICT DO NOTHING",
    "remove_from_chain": "DELETE FROM chain_projects WHERE chain_id = %(c)s AND project_id = %(p)s",
    "leave": "DELETE FROM chain_members WHERE chain_id = %(c)s AND user_id = %(u)s",
    # Names and titles, which the directory, the thread lists, the leaderboard and search show.
    "rename_user": "UPDATE users SET display_name = %(title)s WHERE id = %(u)s",
    "change_username": "UPDATE users SET username = 'user' || %(u)s || '_' || %(k)s WHERE id = %(u)s",
    "retitle_project": "UPDATE projects SET title = %(title)s, tagline = %(title)s WHERE id = %(p)s",
    "add_chain": "INSERT INTO chains (id, slug, name, owner_id) VALUES (%(c)s, 'chain' || %(c)s, %(title)s, %(u)s) "
    "ON CONFLICT DO NOTHING",
    "rename_chain": "UPDATE chains SET name = %(title)s, description = %(body)s WHERE id = %(c)s",
    "new_thread": "INSERT INTO forum_threads (chain_id, author_id, title) VALUES (%(c)s, %(u)s, %(title)s)",
    "post": "INSERT INTO forum_posts (thread_id, author_id, body, created_at) "
    "SELECT id, %(u)s, %(body)s, now() + %(dt)s * interval '1 second' FROM forum_threads WHERE chain_id = %(c)s "
    "ORDER BY id DESC LIMIT 1",
    "delete_post": "DELETE FROM forum_posts WHERE id = (SELECT max(p.id) FROM forum_posts p "
    "JOIN forum_threads t ON t.id = p.thread_id WHERE t.chain_id = %(c)s)",
    "retitle_thread": "UPDATE forum_threads SET title = %(title)s WHERE id = "
    "(SELECT min(id) FROM forum_threads WHERE chain_id = %(c)s)",
}
# Titles and names from a small vocabulary, so that words come and go in the search vocabulary.
TITLES = ["Redis Cache", "Fast Postgres Queue", "Renamed", "Redis Guild", "Ada Lovelace"]

# Not a statement: the fold (denorm/maintenance.py), run by a writer's connection among the writes.
FOLD = "fold"

# Statements only the structural connection sends: each may lock many rows.
STRUCTURAL: dict[str, str] = {
    "delete_user": "DELETE FROM users WHERE id = %(u)s",
    "delete_project": "DELETE FROM projects WHERE id = %(p)s",
    "read_all": "UPDATE messages SET read_at = now() WHERE recipient_id = %(u)s AND read_at IS NULL",
    "unread_all": "UPDATE messages SET read_at = NULL WHERE recipient_id = %(u)s",
    "delete_conversation": "DELETE FROM messages WHERE (sender_id, recipient_id) IN ((%(u)s, %(v)s), (%(v)s, %(u)s))",
    "unvote_project": "DELETE FROM project_upvotes WHERE project_id = %(p)s",
    "bulk_send": "INSERT INTO messages (sender_id, recipient_id, body) "
    "SELECT %(u)s, v, 'bulk' FROM generate_series(1, 8) v WHERE v <> %(u)s AND v IN (SELECT id FROM users)",
    "move_messages": "UPDATE messages SET sender_id = recipient_id, recipient_id = sender_id WHERE sender_id = %(u)s",
    "delete_chain": "DELETE FROM chains WHERE id = %(c)s",
    "delete_thread": "DELETE FROM forum_threads WHERE id = (SELECT min(id) FROM forum_threads WHERE chain_id = %(c)s)",
    "bulk_retitle": "UPDATE projects SET title = title || ' ' || %(title)s WHERE owner_id = %(u)s",
    "bulk_leave": "DELETE FROM chain_members WHERE user_id = %(u)s",
    "bulk_upvote": "INSERT INTO project_upvotes (user_id, project_id) SELECT %(u)s, id FROM projects "
    "ON CONFLICT DO NOTHING",
}

# Transactions of several statements: inserts without unique keys, so they cannot deadlock by themselves.
MULTI = ("send", "comment", "send")


@dataclass(frozen=True)
class Op:
    kind: str
    params: dict[str, Any]


@dataclass
class Outcome:
    deadlocks: int = 0
    rejected: int = 0  # statements the source tables refused (a foreign key gone, a duplicate): fine
    done: int = 0
    errors: list[str] = field(default_factory=list)


def random_params(rng: random.Random) -> dict[str, Any]:
    u = rng.randint(1, USERS)
    v = rng.choice([x for x in range(1, USERS + 1) if x != u])
    return {
        "u": u,
        "v": v,
        "w": rng.randint(1, USERS),
        "p": rng.randint(1, PROJECTS),
        "c": rng.randint(1, CHAINS),
        "dt": rng.randint(-5, 5),
        "body": rng.choice(["hi", "hello there", "x" * 130, "see you"]),
        "status": rng.choice(["accepted", "declined"]),
        "k": rng.choice([1, 3, 1000]),
        "title": rng.choice(TITLES),
    }


def random_program(rng: random.Random, length: int, structural: bool) -> list[Op]:
    kinds = [*SINGLE, FOLD] + (list(STRUCTURAL) if structural else ["multi"])
    return [Op(rng.choice(kinds), random_params(rng)) for _ in range(length)]


def reset(url: str) -> None:
    """Empty every source table (the TRUNCATE triggers rebuild the read models) and repopulate."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {SOURCE_TABLES} RESTART IDENTITY CASCADE".encode())
        conn.execute(POPULATION.encode())


DELETE_USER_LOCK_TIMEOUT = "200ms"  # far below deadlock_timeout (1 s), far above one statement's trigger work


def run_op(conn: psycopg.Connection[Any], op: Op) -> None:
    if op.kind == FOLD:
        fold(conn, op.params["k"])
        return
    if op.kind == "delete_user":
        with conn.transaction():
            conn.execute(f"SET LOCAL lock_timeout = '{DELETE_USER_LOCK_TIMEOUT}'".encode())
            conn.execute(STRUCTURAL[op.kind].encode(), op.params)
        return
    if op.kind == "multi":
        with conn.transaction():
            for kind in MULTI:
                conn.execute(SINGLE[kind].encode(), op.params)
        return
    conn.execute((SINGLE.get(op.kind) or STRUCTURAL[op.kind]).encode(), op.params)


def run_program(url: str, program: Sequence[Op], outcome: Outcome, start: threading.Barrier) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        start.wait()
        for op in program:
            try:
                run_op(conn, op)
                outcome.done += 1
            except errors.DeadlockDetected as exc:
                outcome.deadlocks += 1
                outcome.errors.append(f"deadlock in {op.kind}: {exc}")
            except (errors.IntegrityError, errors.LockNotAvailable):
                outcome.rejected += 1
            except psycopg.Error as exc:
                outcome.errors.append(f"{op.kind} {op.params}: {type(exc).__name__}: {exc}")


def run_concurrently(url: str, programs: Sequence[Sequence[Op]]) -> list[Outcome]:
    """Run each program on its own connection, all at once; the outcomes in program order."""
    outcomes = [Outcome() for _ in programs]
    start = threading.Barrier(len(programs))
    threads = [
        threading.Thread(target=run_program, args=(url, program, outcome, start))
        for program, outcome in zip(programs, outcomes, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return outcomes
