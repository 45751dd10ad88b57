"""Postgres connections, as every service opens them: named in pg_stat_activity, with session
settings given as connection options. The API's pools are its own (services/api/pools.py)."""

from __future__ import annotations

from typing import Any

APPLICATION_NAME = "denorm"


def conninfo(url: str, application: str, **params: Any) -> str:
    """The URL with an application_name, so pg_stat_activity tells our services apart (and any
    other connection parameters)."""
    from psycopg.conninfo import make_conninfo

    return make_conninfo(url, application_name=f"{APPLICATION_NAME}-{application}", **params)


def session_options(settings: dict[str, str]) -> str:
    """Session settings as connection options (`-c name=value ...`)."""
    return " ".join(f"-c {name}={value}" for name, value in settings.items())
