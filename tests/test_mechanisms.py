"""Each mechanism's plain alternative (API_WITHOUT, denorm/config.py MECHANISMS) answers every hot
route as the mechanism does: bench/mechanisms.py compares their costs, so both must be right."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from denorm.auth import mint_token
from denorm.config import MECHANISMS, Settings
from services.api.app import create_app

REQUESTS = [
    ("GET", "/api/projects?sort=trending&limit=10", None),
    ("GET", "/api/projects?sort=newest&limit=10", 3),
    ("GET", "/api/projects?sort=top-rated&limit=5&page=2", 4),
    ("GET", "/api/projects/7", 3),
    ("GET", "/api/leaderboard/projects?limit=5", None),
    ("GET", "/api/leaderboard/users?limit=5", None),
    ("GET", "/api/chains?limit=5", None),
    ("GET", "/api/search?q=reddis+cache", None),
    ("GET", "/api/search?q=reddis+cache", None),  # again: from the answer cache
    ("GET", "/api/users/dashboard", 3),
    ("GET", "/api/messages/conversations", 3),
    ("PUT", "/api/projects/9/upvote", 3),
    ("GET", "/api/projects?sort=trending&limit=50", 3),  # the caller's own upvote, seen at once
    ("DELETE", "/api/projects/9/upvote", 3),
    ("GET", "/api/projects/abc", None),  # a 422, by FastAPI on either path
    ("GET", "/api/users/dashboard", None),  # a 401
]


# When an answer was computed or its row last changed (the previous run's upvote and its withdrawal
# moved the dashboard's): the same answer, read later, says a later time.
AS_OF = re.compile(rb'"(as_of|updated_at)":"[^"]*"')


def answers(settings: Settings, without: str) -> list[tuple[int, bytes]]:
    quiet = settings.model_copy(update={"api_access_log": False, "api_without": without})
    found = []
    with TestClient(create_app(quiet)) as client:
        for method, path, user in REQUESTS:
            headers = {"Authorization": f"Bearer {mint_token(user, settings.jwt_secret)}"} if user else {}
            response = client.request(method, path, headers=headers)
            found.append((response.status_code, AS_OF.sub(rb'"\1":"..."', response.content)))
    return found


@pytest.fixture
def expected(seeded_url: str, settings: Settings) -> Iterator[list[tuple[int, bytes]]]:
    yield answers(settings, "")


@pytest.mark.parametrize("mechanism", [*MECHANISMS, ",".join(MECHANISMS)])
def test_without_a_mechanism_every_answer_is_the_same(
    expected: list[tuple[int, bytes]], settings: Settings, mechanism: str
) -> None:
    assert [s for s, _ in expected][:14] == [200] * 14
    assert answers(settings, mechanism) == expected


def test_an_unknown_mechanism_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown mechanisms"):
        Settings(api_without="gate,warp-drive")
    assert Settings(api_without=" gate , batcher ").without == {"gate", "batcher"}
