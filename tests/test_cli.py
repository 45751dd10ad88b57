"""The `denorm` command as people run it, and the tokens it mints."""

from __future__ import annotations

import re
import time

import jwt
import pytest

from denorm.auth import AuthError, mint_token, verify_token
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
