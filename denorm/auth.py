"""HS256 JWTs: the user id travels in `sub`; expiry is always checked."""

from __future__ import annotations

import time

import jwt

ALGORITHM = "HS256"


class AuthError(ValueError):
    """The token is missing, malformed, expired or not signed with our secret."""


def mint_token(user_id: int, secret: str, ttl_seconds: int = 3600, now: float | None = None) -> str:
    issued = int(now if now is not None else time.time())
    claims = {"sub": str(user_id), "iat": issued, "exp": issued + ttl_seconds}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_token(token: str, secret: str) -> int:
    """The user id of a valid token; AuthError otherwise."""
    try:
        claims = jwt.decode(token, secret, algorithms=[ALGORITHM], options={"require": ["sub", "exp"]})
    except jwt.PyJWTError as exc:
        raise AuthError(str(exc)) from exc
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub.isdigit() or not 0 < int(sub) < 2**63:
        raise AuthError("sub must be a positive integer user id")
    return int(sub)
