"""The `denorm` command as people run it, and the tokens it mints."""

from __future__ import annotations

import re
import time

import jwt
import pytest

from denorm.auth import AuthError, mint_token, verify_token
from services.api.tokens import TokenVerifier
from tests.support import cli_env, run_denorm

SECRET = "test-secret-for-the-cli-0123456789abcdef"
OTHER_SECRET = "some-other-secret-entirely-0123456789abcdef"
COMMANDS = ("migrate", "seed", "api", "refresher", "reconcile", "token")


def test_help_lists_every_command() -> None:
    result = run_denorm(["--help"])
    assert result.returncode == 0, result.stderr
    for command in COMMANDS:
        assert re.search(rf"^\s+{command}\b", result.stdout, re.MULTILINE), (command, result.stdout)


def test_token_prints_a_jwt_that_verifies_to_the_user() -> None:
    result = run_denorm(["token", "--user", "7"], env=cli_env(JWT_SECRET=SECRET))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    token = lines[0]

    assert verify_token(token, SECRET) == 7
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 3600
    with pytest.raises(AuthError):
        verify_token(token, OTHER_SECRET)


def test_token_ttl_option_sets_the_expiry() -> None:
    result = run_denorm(["token", "--user", "7", "--ttl", "60"], env=cli_env(JWT_SECRET=SECRET))
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), SECRET, algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] == 60


def test_expired_token_is_refused() -> None:
    token = mint_token(7, SECRET, ttl_seconds=60, now=time.time() - 3600)
    with pytest.raises(AuthError, match="expired"):
        verify_token(token, SECRET)


def test_token_signed_with_another_secret_is_refused() -> None:
    token = mint_token(7, OTHER_SECRET)
    with pytest.raises(AuthError, match=r"[Ss]ignature"):
        verify_token(token, SECRET)


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(jwt.encode({"sub": "7", "exp": 2**40}, None, algorithm="none"), id="alg-none"),
        pytest.param(jwt.encode({"sub": "7"}, SECRET, algorithm="HS256"), id="no-exp"),
        pytest.param(jwt.encode({"sub": "0", "exp": 2**40}, SECRET, algorithm="HS256"), id="sub-zero"),
        pytest.param(jwt.encode({"sub": "alice", "exp": 2**40}, SECRET, algorithm="HS256"), id="sub-name"),
        pytest.param(jwt.encode({"sub": "-7", "exp": 2**40}, SECRET, algorithm="HS256"), id="sub-negative"),
        pytest.param("not.a.token", id="garbage"),
    ],
)
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(AuthError):
        verify_token(token, SECRET)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_the_verifier_remembers_an_accepted_token_only_until_it_expires() -> None:
    clock = Clock()
    verifier = TokenVerifier(SECRET, clock=clock)
    token = mint_token(7, SECRET, ttl_seconds=60, now=clock.now)
    assert verifier(token) == 7
    assert verifier(token) == 7  # remembered
    clock.now += 61
    with pytest.raises(AuthError, match="expired"):
        verifier(token)
    with pytest.raises(AuthError, match="expired"):  # and checked in full again, not remembered
        verifier(token)


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(mint_token(7, OTHER_SECRET), id="other-secret"),
        pytest.param(mint_token(7, SECRET)[:-2] + "xx", id="tampered-signature"),
        pytest.param(jwt.encode({"sub": "7", "exp": 2**40}, None, algorithm="none"), id="alg-none"),
        pytest.param("not.a.token", id="garbage"),
    ],
)
def test_the_verifier_refuses_what_verify_token_refuses_every_time(token: str) -> None:
    verifier = TokenVerifier(SECRET)
    for _ in range(2):
        with pytest.raises(AuthError):
            verifier(token)


def test_the_verifier_forgets_the_oldest_token_when_full() -> None:
    verifier = TokenVerifier(SECRET, max_entries=2)
    tokens = [mint_token(user, SECRET) for user in (1, 2, 3)]
    assert [verifier(t) for t in tokens] == [1, 2, 3]
    assert len(verifier._accepted) == 2 and tokens[0] not in verifier._accepted
