"""The direct path for hot reads (services/api/fastpath.py) answers exactly as FastAPI does.

Two apps on one seeded database, one with the direct path and one without, get the same requests:
valid ones, which the direct path must serve itself, and every kind of bad one (values out of
range, malformed numbers, repeated parameters, bad tokens), which it must leave to FastAPI. The
answers must be equal byte for byte once `as_of` is set aside: for an idle view it is "now".
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import jwt
import psycopg
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from denorm.auth import mint_token
from denorm.config import Settings
from services.api.app import ROUTERS, create_app
from services.api.fastpath import Choice, Int, Text, reads_of
from services.api.feed import Sort
from services.api.params import MAX_LIMIT
from tests.support import admin

DIRECT = reads_of(route for router in ROUTERS for route in router.routes)
READS = {r.path: r for r in DIRECT if r.method == "GET"}
UPVOTE = "/api/projects/{project_id}/upvote"

Pair = tuple[TestClient, TestClient]


@pytest.fixture
def pair(seeded_url: str, settings: Settings) -> Iterator[Pair]:
    quiet = settings.model_copy(update={"api_access_log": False, "api_rate_writes_per_token": "1000/second"})
    with (
        TestClient(create_app(quiet)) as direct,
        TestClient(create_app(quiet.model_copy(update={"api_without": "fastpath"}))) as plain,
    ):
        yield direct, plain


def read_counts(client: TestClient) -> dict[str, float]:
    text = client.get(admin("/metrics")).text
    return {m[0]: float(m[1]) for m in re.findall(r'denorm_api_read_requests_total\{path="(\w+)"\} ([0-9.e+]+)', text)}


def route_labels(client: TestClient, method: str = "GET") -> set[str]:
    text = client.get(admin("/metrics")).text
    found = re.findall(r'denorm_api_request_duration_seconds_count\{method="' + method + r'",route="([^"]+)"', text)
    return set(found) - {"/metrics"}


def without_as_of(body: Any) -> Any:
    if isinstance(body, dict):
        return {k: without_as_of(v) for k, v in body.items() if k != "as_of"}
    if isinstance(body, list):
        return [without_as_of(v) for v in body]
    return body


def same_answer(pair: Pair, url: str, headers: dict[str, str] | None = None) -> None:
    direct, plain = pair
    a, b = direct.get(url, headers=headers), plain.get(url, headers=headers)
    assert a.status_code == b.status_code, (url, a.text, b.text)
    assert a.status_code < 500, (url, headers, a.text)
    assert a.headers["content-type"] == b.headers["content-type"]
    if a.headers["content-type"].startswith("application/json"):
        assert without_as_of(a.json()) == without_as_of(b.json()), url
        assert ("as_of" in a.json()) == ("as_of" in b.json())
    else:
        assert a.content == b.content


def values_for(param: Int | Choice | Text) -> st.SearchStrategy[str]:
    """Valid values, boundary values and malformed ones for one parameter."""
    junk = st.sampled_from(["", " ", "-1", "+5", "05", "1.5", "1e3", "abc", "%00", "9" * 25, "null", "%FF"])
    if isinstance(param, Int):
        near = st.sampled_from([param.lo - 1, param.lo, param.hi, param.hi + 1, min(param.hi, 20)]).map(str)
        return st.one_of(near, st.integers(param.lo, param.hi).map(str), junk)
    if isinstance(param, Choice):
        return st.one_of(
            st.sampled_from(sorted(param.values)), st.sampled_from(["", "TRENDING", "top_rated", "x"]), junk
        )
    return st.one_of(
        st.sampled_from(["postgres", "reddis cache", "a", "x" * param.max_length, "x" * (param.max_length + 1)]),
        st.text(max_size=12).map(lambda t: quote(t, safe="")),
        junk,
    )


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, bool]:
    path = draw(st.sampled_from(sorted(READS)))
    parts = []
    for name, param in READS[path].params.items():
        if "{" + name + "}" in path:  # a path parameter
            value = draw(st.one_of(st.just(draw(st.sampled_from(["chain-1-postgres", "no-such-chain"]))),
                                   values_for(param)))  # fmt: skip
            path = path.replace("{" + name + "}", value.replace("/", "%2F") or "x")
        elif draw(st.booleans()):
            parts.append(f"{name}={draw(values_for(param))}")
    if draw(st.integers(0, 5)) == 0 and parts:
        parts.append(parts[0])  # a repeated parameter
    if draw(st.integers(0, 5)) == 0:
        parts.append("unknown=1")
    order = draw(st.permutations(parts))
    return f"{path}?{'&'.join(order)}" if order else path, draw(st.booleans())


# Authorization headers beyond a valid token: validly signed ones whose subject is not a plain id,
# and malformed ones. (subject, or None for a literal header below)
SUBJECTS = ["3", "¹", "١", "-1", "0", " 3", "3 ", "+3", "1e3", str(2**63), ""]  # noqa: RUF001
HEADERS = ["Bearer", "Bearer ", "Basic abc", "Bearer a.b.c", "bearer x", "Bearer a b", "Bearer \t"]


def authorization(draw: Callable[[st.SearchStrategy[Any]], Any], secret: str) -> dict[str, str] | None:
    kind = draw(st.sampled_from(["none", "valid", "subject", "header"]))
    if kind == "none":
        return None
    if kind == "valid":
        return {"Authorization": f"Bearer {mint_token(3, secret)}"}
    if kind == "subject":
        sub = draw(st.sampled_from(SUBJECTS))
        token = jwt.encode({"sub": sub, "exp": int(time.time()) + 600}, secret, algorithm="HS256")
        return {"Authorization": f"Bearer {token}"}
    return {"Authorization": draw(st.sampled_from(HEADERS))}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=requests(), data=st.data())
def test_both_paths_answer_alike(
    pair: Pair, settings: Settings, request: tuple[str, bool], data: st.DataObject
) -> None:
    """Random parameters and Authorization headers: the direct path and FastAPI answer alike, and
    never with a 5xx."""
    url, _ = request
    headers = authorization(data.draw, settings.jwt_secret)
    same_answer(pair, url, headers)


def test_the_direct_path_reads_each_routes_declaration() -> None:
    """Parameters, limits, defaults and callers come from the FastAPI routes, not from a copy."""
    assert set(READS) == {
        "/api/projects", "/api/leaderboard/projects", "/api/leaderboard/users", "/api/users/dashboard",
        "/api/chains", "/api/chains/{slug}", "/api/search", "/api/messages/conversations",
    }  # fmt: skip
    feed = READS["/api/projects"]
    assert feed.user == "optional" and READS["/api/users/dashboard"].user == "required"
    assert feed.params["limit"] == Int(1, MAX_LIMIT, 20)
    assert feed.params["page"] == Int(1, 500, None)
    assert feed.params["sort"] == Choice({s.value: s for s in Sort}, Sort.TRENDING)
    assert READS["/api/leaderboard/users"].params["offset"] == Int(0, 1000, 0)
    slug = READS["/api/chains/{slug}"].params["slug"]
    assert isinstance(slug, Text) and slug.required and slug.max_length == 80 and slug.pattern is not None
    assert READS["/api/search"].params["q"] == Text(1, 200, True)
    writes = {(r.method, r.path): r for r in DIRECT if r.method != "GET"}
    assert set(writes) == {("POST", UPVOTE), ("PUT", UPVOTE), ("DELETE", UPVOTE)}
    assert all(w.user == "required" and set(w.params) == {"project_id"} for w in writes.values())


def test_the_upvote_takes_the_direct_path_and_answers_as_fastapi_does(pair: Pair, settings: Settings) -> None:
    """Each app in turn changes the same upvote: set, set again, clear, clear again, toggle; the
    answers agree step by step. Bad ids, tokens and unknown projects are answered alike too."""
    direct, plain = pair
    me = {"Authorization": f"Bearer {mint_token(6, settings.jwt_secret)}"}
    project = direct.get("/api/projects", params={"limit": 1}).json()["items"][0]["id"]
    url = f"/api/projects/{project}/upvote"
    direct.delete(url, headers=me)
    before = read_counts(direct)
    for method in ("PUT", "PUT", "DELETE", "DELETE"):
        a = direct.request(method, url, headers=me)
        b = plain.request(method, url, headers=me)
        assert (a.status_code, a.headers["content-type"], a.json()) == (
            b.status_code,
            b.headers["content-type"],
            b.json(),
        )
    toggled = [direct.post(url, headers=me).json(), plain.post(url, headers=me).json()]
    assert [t["upvoted"] for t in toggled] == [True, False]
    assert toggled[0]["upvote_count"] == toggled[1]["upvote_count"] + 1
    # A body the route does not take is ignored on both paths.
    a, b = direct.put(url, headers=me, json={"x": 1}), plain.put(url, headers=me, json={"x": 1})
    assert (a.status_code, a.json()) == (b.status_code, b.json()) == (200, a.json())
    middle = read_counts(direct)
    assert middle["direct"] - before.get("direct", 0) == 4 + 1 + 1
    bad = [
        ("PUT", "/api/projects/0/upvote", me),
        ("PUT", "/api/projects/abc/upvote", me),
        ("DELETE", f"/api/projects/{2**70}/upvote", me),
        ("POST", url, None),  # no token: FastAPI's 401
        ("PUT", url, {"Authorization": "Bearer not-a-token"}),
    ]
    for method, path, headers in bad:
        a, b = direct.request(method, path, headers=headers), plain.request(method, path, headers=headers)
        assert (a.status_code, a.json()) == (b.status_code, b.json()), path
        assert 400 <= a.status_code < 500
    after = read_counts(direct)
    assert after["fastapi"] - middle.get("fastapi", 0) == len(bad)
    # A project that does not exist is a valid id: the direct path answers its 404 itself.
    a, b = (
        direct.put("/api/projects/999999999/upvote", headers=me),
        plain.put("/api/projects/999999999/upvote", headers=me),
    )
    assert (a.status_code, a.json()) == (b.status_code, b.json()) and a.status_code == 404
    assert read_counts(direct)["direct"] == after["direct"] + 1
    assert route_labels(direct, "PUT") == route_labels(plain, "PUT") == {UPVOTE}


def test_valid_reads_take_the_direct_path_and_bad_ones_do_not(pair: Pair, settings: Settings) -> None:
    direct, plain = pair
    me = {"Authorization": f"Bearer {mint_token(3, settings.jwt_secret)}"}
    slug = direct.get("/api/chains", params={"limit": 1}).json()["items"][0]["slug"]
    before = read_counts(direct)
    valid = [
        ("/api/projects?sort=newest&limit=7", None),
        ("/api/projects?sort=top-rated&page=2", me),
        ("/api/leaderboard/projects?limit=5&offset=3", None),
        ("/api/leaderboard/users", None),
        ("/api/users/dashboard", me),
        ("/api/chains?limit=2", None),
        (f"/api/chains/{slug}", None),
        ("/api/search?q=postgress&type=projects", None),
        ("/api/search?q=redis&limit=5&after_tier=2&after_popularity=9&after_type=chain&after_id=40", None),
        ("/api/messages/conversations?limit=5", me),
    ]
    for url, headers in valid:
        same_answer(pair, url, headers)
    middle = read_counts(direct)
    assert middle["direct"] - before.get("direct", 0) == len(valid)
    bad = [
        ("/api/projects?limit=0", None),
        ("/api/projects?sort=best", None),
        ("/api/projects?limit=5&limit=6", None),
        ("/api/users/dashboard", None),  # no token: FastAPI's 401
        ("/api/users/dashboard", {"Authorization": "Bearer not-a-token"}),
        ("/api/projects", {"Authorization": f"Bearer {mint_token(3, 'another-secret-of-at-least-32-bytes!')}"}),
        ("/api/search?q=", None),
        ("/api/search?q=redis&after_type=post", None),
        ("/api/search?q=redis&after_tier=4", None),
        ("/api/chains/Not_A_Slug", None),
    ]
    for url, headers in bad:
        same_answer(pair, url, headers)
    after = read_counts(direct)
    assert after["direct"] == middle["direct"]
    assert after["fastapi"] - middle.get("fastapi", 0) == len(bad)
    # Both paths label the latency histogram by the same route templates.
    labels = route_labels(direct)
    assert labels == route_labels(plain)
    assert {"/api/projects", "/api/chains/{slug}", "/api/users/dashboard"} <= labels
    assert "unmatched" not in labels


def test_a_signed_in_feed_carries_the_callers_upvotes(pair: Pair, settings: Settings) -> None:
    direct, plain = pair
    me = {"Authorization": f"Bearer {mint_token(5, settings.jwt_secret)}"}
    first = direct.get("/api/projects", params={"limit": 3}, headers=me).json()["items"][0]["id"]
    assert direct.put(f"/api/projects/{first}/upvote", headers=me).json()["upvoted"] is True
    for client in (direct, plain):
        items = client.get("/api/projects", params={"limit": 3}, headers=me).json()["items"]
        assert items[0]["user_has_upvoted"] is True
    same_answer(pair, "/api/projects?limit=3", me)


def test_a_failing_read_answers_the_same_json_500_on_both_paths(
    pair: Pair, seeded_url: str, settings: Settings
) -> None:
    """The direct path runs outside FastAPI's error handling, so it answers unexpected errors itself."""
    direct, _plain = pair
    quiet = settings.model_copy(update={"api_access_log": False, "api_without": "fastpath"})
    before = read_counts(direct)
    # FastAPI answers, then re-raises for the server to log: this client must not raise it.
    with (
        TestClient(create_app(quiet), raise_server_exceptions=False) as plain,
        psycopg.connect(seeded_url, autocommit=True) as conn,
    ):
        conn.execute("ALTER TABLE mv_leaderboard_users RENAME TO mv_leaderboard_users_gone")
        try:
            for client in (direct, plain):
                answer = client.get("/api/leaderboard/users")
                assert answer.status_code == 500
                assert answer.json() == {"error": {"code": "internal", "message": "internal error", "details": None}}
        finally:
            conn.execute("ALTER TABLE mv_leaderboard_users_gone RENAME TO mv_leaderboard_users")
    assert read_counts(direct)["direct"] == before.get("direct", 0) + 1
