"""Fail fast and safe (issue 16): secrets safe by default, bad input a 4xx, a dead Postgres a quick
503, a stop that never hangs."""

from __future__ import annotations

import subprocess

import pytest

from denorm.config import DEV_JWT_SECRET, Settings
from loadtest.localproc import free_port
from tests.support import DENORM, cli_env

# --- secrets ------------------------------------------------------------------------------------


def test_an_unset_environment_means_production(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ENVIRONMENT", raising=False)
    monkeypatch.delenv("JWT_SECRET", raising=False)
    settings = Settings()
    assert settings.environment == "production" and settings.jwt_secret == DEV_JWT_SECRET
    with pytest.raises(RuntimeError, match="development placeholder"):
        settings.check_production_safety()
    for environment in ("development", "test"):
        Settings(environment=environment).check_production_safety()  # said outright: accepted


def test_the_api_refuses_to_start_with_the_published_secret_when_the_environment_is_unset(database_url: str) -> None:
    env = {k: v for k, v in cli_env(DATABASE_URL=database_url).items() if k not in ("ENVIRONMENT", "JWT_SECRET")}
    done = subprocess.run([*DENORM, "api", "--port", str(free_port())], env=env, capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert done.returncode != 0
    assert "JWT_SECRET is the development placeholder" in done.stderr + done.stdout
