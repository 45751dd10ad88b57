"""The pages a client opens from the lists (issue 18): each read paged to its end through its
cursors equals its naive query over the source tables (same rows, same order); counts are exact;
what a write adds shows on the next read; and the caller's own data stays the caller's."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import psycopg
import pytest
from fastapi.testclient import TestClient

from denorm.config import Settings
from denorm.maintenance import fold_all
from services.api.app import create_app
from tests.support import one
from tests.test_api import auth

Connection = psycopg.Connection[Any]


@pytest.fixture
def client(seeded_url: str, settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings.model_copy(update={"api_access_log": False}))) as c:
        yield c


def walk(client: TestClient, path: str, key: str = "items", **kwargs: Any) -> list[dict[str, Any]]:
    """Every item of a paged read, following next_cursor to the end."""
    items: list[dict[str, Any]] = []
    params = dict(kwargs.pop("params", {}))
    for _ in range(1000):
        page = client.get(path, params=params, **kwargs)
        assert page.status_code == 200, page.text
        body = page.json()
        items += body[key]
        if body["next_cursor"] is None:
            return items
        params["cursor"] = body["next_cursor"]
    raise AssertionError("no last page")


def ids(rows: list[tuple[Any, ...]]) -> list[int]:
    return [int(r[0]) for r in rows]


def test_a_project_page_has_its_exact_counts_its_owner_and_its_newest_comments(
    client: TestClient, settings: Settings, conn: Connection
) -> None:
    project = one(conn, "SELECT project_id FROM project_comments GROUP BY project_id HAVING count(*) >= 3 LIMIT 1")
    voter = one(conn, "SELECT min(user_id) FROM project_upvotes WHERE project_id = %s", project)
    page = client.get(f"/api/projects/{project}", params={"limit": 2}).json()
    truth = conn.execute(
        "SELECT p.title, p.description, p.tags, u.username, u.display_name, "
        "(SELECT count(*) FROM project_upvotes v WHERE v.project_id = p.id), "
        "(SELECT count(*) FROM project_comments c WHERE c.project_id = p.id) "
        "FROM projects p JOIN users u ON u.id = p.owner_id WHERE p.id = %s",
        (project,),
    ).fetchone()
    assert truth is not None
    shown = (page["title"], page["description"], page["tags"], page["owner"]["username"],
             page["owner"]["display_name"], page["upvote_count"], page["comment_count"])  # fmt: skip
    assert shown == truth
    assert page["user_has_upvoted"] is None and page["as_of"]
    assert client.get(f"/api/projects/{project}", headers=auth(settings, voter)).json()["user_has_upvoted"] is True
    newest = ids(conn.execute("SELECT id FROM project_comments WHERE project_id = %s ORDER BY created_at DESC, id DESC",
                              (project,)).fetchall())  # fmt: skip
    assert [c["id"] for c in page["comments"]["items"]] == newest[:2]
    rest = walk(client, f"/api/projects/{project}/comments", params={"limit": 2,
                "cursor": page["comments"]["next_cursor"]})  # fmt: skip
    assert [c["id"] for c in rest] == newest[2:]
    assert [c["id"] for c in walk(client, f"/api/projects/{project}/comments", params={"limit": 1})] == newest
    # A new comment is on the next read, and the count with it.
    me = auth(settings, 7)
    made = client.post(f"/api/projects/{project}/comments", json={"body": "first!"}, headers=me).json()["id"]
    again = client.get(f"/api/projects/{project}").json()
    assert again["comments"]["items"][0]["id"] == made and again["comment_count"] == truth[6] + 1
    assert client.get("/api/projects/999999").status_code == 404
    assert client.get("/api/projects/999999/comments").status_code == 404


def test_a_thread_pages_its_posts_oldest_first(client: TestClient, settings: Settings, conn: Connection) -> None:
    thread = one(conn, "SELECT thread_id FROM forum_posts GROUP BY thread_id HAVING count(*) >= 4 LIMIT 1")
    oldest = ids(conn.execute("SELECT id FROM forum_posts WHERE thread_id = %s ORDER BY created_at, id",
                              (thread,)).fetchall())  # fmt: skip
    posts = walk(client, f"/api/threads/{thread}", key="posts", params={"limit": 3})
    assert [p["id"] for p in posts] == oldest
    authors = dict(conn.execute("SELECT p.id, u.username FROM forum_posts p JOIN users u ON u.id = p.author_id "
                                "WHERE p.thread_id = %s", (thread,)).fetchall())  # fmt: skip
    assert all(p["author_username"] == authors[p["id"]] for p in posts)
    head = client.get(f"/api/threads/{thread}").json()["thread"]
    assert head["id"] == thread and head["chain_slug"] == one(
        conn, "SELECT c.slug FROM chains c JOIN forum_threads t ON t.chain_id = c.id WHERE t.id = %s", thread
    )
    assert client.get("/api/threads/999999").status_code == 404


def test_a_chains_lists_page_past_the_first_twenty_in_the_chain_pages_order(
    client: TestClient, conn: Connection
) -> None:
    fold_all(conn)
    chain, slug = conn.execute("SELECT c.id, c.slug FROM chains c JOIN mv_chain_projects p ON p.chain_id = c.id "
                               "GROUP BY c.id ORDER BY count(*) DESC LIMIT 1").fetchone() or (0, "")  # fmt: skip
    order = ids(conn.execute("SELECT project_id FROM mv_chain_projects WHERE chain_id = %s "
                             "ORDER BY upvote_count DESC, project_id DESC", (chain,)).fetchall())  # fmt: skip
    assert len(order) > 3
    assert [p["project_id"] for p in walk(client, f"/api/chains/{slug}/projects", params={"limit": 3})] == order
    threads = ids(conn.execute("SELECT thread_id FROM mv_forum_threads WHERE chain_id = %s "
                               "ORDER BY last_activity_at DESC, thread_id DESC", (chain,)).fetchall())  # fmt: skip
    assert [t["thread_id"] for t in walk(client, f"/api/chains/{slug}/threads", params={"limit": 2})] == threads
    # The chain page's first twenty, and its cursors continue them.
    page = client.get(f"/api/chains/{slug}").json()
    assert [p["project_id"] for p in page["projects"]] == order[:20]
    if len(order) > 20:
        more = walk(client, f"/api/chains/{slug}/projects", params={"cursor": page["projects_next_cursor"]})
        assert [p["project_id"] for p in more] == order[20:]
    else:
        assert page["projects_next_cursor"] is None
    counts = dict(conn.execute("SELECT project_id, upvote_count FROM project_counters").fetchall())
    assert all(p["upvote_count"] == counts[p["project_id"]] for p in page["projects"])
    assert client.get("/api/chains/no-such-chain/projects").status_code == 404


def test_a_conversation_is_the_callers_own_and_pages_newest_first(
    client: TestClient, settings: Settings, conn: Connection
) -> None:
    a, b = conn.execute("SELECT sender_id, recipient_id FROM messages GROUP BY 1, 2 HAVING count(*) >= 2 "
                        "ORDER BY count(*) DESC LIMIT 1").fetchone() or (0, 0)  # fmt: skip
    newest = ids(conn.execute(
        "SELECT id FROM messages WHERE (sender_id, recipient_id) IN ((%s, %s), (%s, %s)) "
        "ORDER BY created_at DESC, id DESC",
        (a, b, b, a)).fetchall())  # fmt: skip
    mine = walk(client, f"/api/messages/conversations/{b}", headers=auth(settings, a), params={"limit": 2})
    assert [m["id"] for m in mine] == newest
    theirs = walk(client, f"/api/messages/conversations/{a}", headers=auth(settings, b), params={"limit": 3})
    assert [m["id"] for m in theirs] == newest
    # A third user reaches neither side's messages: as for a pair with none, or no such user, a 404.
    stranger = one(conn, "SELECT id FROM users u WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE "
                         "(m.sender_id, m.recipient_id) IN ((u.id, %s), (%s, u.id))) AND u.id NOT IN (%s, %s) LIMIT 1",
                   a, a, a, b)  # fmt: skip
    for path in (f"/api/messages/conversations/{a}", "/api/messages/conversations/999999"):
        answer = client.get(path, headers=auth(settings, stranger))
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found"
    assert client.get(f"/api/messages/conversations/{b}").status_code == 401
    # A message just sent is on the sender's next read.
    sent = client.post("/api/messages", json={"recipient_id": b, "body": "hello"}, headers=auth(settings, a)).json()
    first = client.get(f"/api/messages/conversations/{b}", headers=auth(settings, a)).json()["items"][0]
    assert first["id"] == sent["id"] and first["read_at"] is None


@pytest.mark.parametrize("box", ["received", "sent"])
def test_intro_requests_are_the_callers_own_by_box_and_status(
    client: TestClient, settings: Settings, conn: Connection, box: str
) -> None:
    column = "target_id" if box == "received" else "requester_id"
    user = one(conn, f"SELECT {column} FROM intro_requests GROUP BY 1 ORDER BY count(*) DESC LIMIT 1")
    me = auth(settings, user)
    for status in (None, "pending", "accepted", "declined"):
        wanted = conn.execute(
            f"SELECT id FROM intro_requests WHERE {column} = %s AND (%s::text IS NULL OR status = %s) "
            "ORDER BY created_at DESC, id DESC", (user, status, status)).fetchall()  # fmt: skip
        params = {"box": box, "limit": 2, **({"status": status} if status else {})}
        got = walk(client, "/api/intro-requests", headers=me, params=params)
        assert [i["id"] for i in got] == ids(wanted), status
        assert all(i[column] == user for i in got)
    assert client.get("/api/intro-requests").status_code == 401


def test_a_public_profile_shows_the_public_counts_only(client: TestClient, conn: Connection) -> None:
    username, user = conn.execute("SELECT username, id FROM users ORDER BY id LIMIT 1").fetchone() or ("", 0)
    profile = client.get(f"/api/users/{username}").json()
    truth = conn.execute("SELECT project_count, upvotes_received, chains_joined FROM user_dashboard_stats_truth "
                         "WHERE user_id = %s", (user,)).fetchone()  # fmt: skip
    assert (profile["project_count"], profile["upvotes_received"], profile["chains_joined"]) == truth
    assert not {"unread_messages", "pending_intros_received", "intro_stats", "upvotes_given"} & set(profile)
    assert client.get("/api/users/no-such-user").status_code == 404
    assert client.get("/api/users/dashboard").status_code == 401  # still the caller's dashboard


def test_only_a_chains_owner_curates_it_idempotently(client: TestClient, settings: Settings, conn: Connection) -> None:
    slug, owner = conn.execute("SELECT slug, owner_id FROM chains ORDER BY id LIMIT 1").fetchone() or ("", 0)
    project = one(conn, "SELECT id FROM projects p WHERE NOT EXISTS (SELECT 1 FROM chain_projects cp "
                        "JOIN chains c ON c.id = cp.chain_id WHERE c.slug = %s AND cp.project_id = p.id) "
                        "ORDER BY id LIMIT 1", slug)  # fmt: skip
    mine, other = auth(settings, owner), auth(settings, owner % 150 + 1)
    path = f"/api/chains/{slug}/projects/{project}"
    before = one(conn, "SELECT count(*) FROM chain_projects")
    assert client.put(path, headers=other).status_code == 403
    assert client.delete(path, headers=other).status_code == 403
    assert one(conn, "SELECT count(*) FROM chain_projects") == before
    assert [client.put(path, headers=mine).json()["changed"] for _ in range(2)] == [1, 0]
    fold_all(conn)
    listed = walk(client, f"/api/chains/{slug}/projects", params={"limit": 100})
    assert project in [p["project_id"] for p in listed]
    assert [client.delete(path, headers=mine).json()["changed"] for _ in range(2)] == [1, 0]
    fold_all(conn)
    assert project not in [p["project_id"] for p in walk(client, f"/api/chains/{slug}/projects")]
    for unknown in (f"/api/chains/{slug}/projects/999999", f"/api/chains/no-such-chain/projects/{project}"):
        assert client.put(unknown, headers=mine).status_code == 404, unknown
        assert client.delete(unknown, headers=mine).status_code == 404, unknown
    assert client.put(path).status_code == 401


def _cursor(kind: str, key: Any, last: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([kind, key, last])).decode().rstrip("=")


@pytest.mark.parametrize(
    ("path", "forge"),
    [
        ("/api/projects/{p}/comments", lambda: _cursor("posts", "2026-01-01T00:00:00+00:00", 5)),  # another read's
        ("/api/projects/{p}/comments", lambda: _cursor("comments", 17, 5)),  # a key of another type
        ("/api/threads/{t}", lambda: _cursor("posts", "2026-01-01T00:00:00+00:00", -1)),  # not an id
        ("/api/chains/{c}/projects", lambda: _cursor("chain_projects", "x", 5)),
        ("/api/chains/{c}/threads", lambda: "not base64 at all!"),
        ("/api/projects/{p}/comments", lambda: _cursor("comments", "2026-01-01T00:00:00+00:00", True)),
    ],
)
def test_a_forged_or_foreign_cursor_is_a_400(
    client: TestClient, conn: Connection, path: str, forge: Callable[[], str]
) -> None:
    url = path.format(p=one(conn, "SELECT min(id) FROM projects"), t=one(conn, "SELECT min(id) FROM forum_threads"),
                      c=one(conn, "SELECT min(slug) FROM chains"))  # fmt: skip
    answer = client.get(url, params={"cursor": forge()})
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "bad_cursor", answer.text
