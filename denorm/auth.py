"""HS256 JWTs, the one definition of a token: the user id travels in `sub`; expiry is always checked.
`denorm token` mints them; the API verifies them (services/api/tokens.py)."""

from __future__ import annotations

import time

import jwt

from denorm.ids import parse_id

ALGORITHM = "HS256"


class AuthError(ValueError):
    """The token is missing, malformed, expired or not signed with our secret."""


def mint_token(user_id: int, secret: str, ttl_seconds: int = 3600, now: float | None = None) -> str:
    issued = int(now if now is not None else time.time())
    claims = {"sub": str(user_id), "iat": issued, "exp": issued + ttl_seconds}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_token(token: str, secret: str) -> int:
    """The user id of a valid token; AuthError otherwise."""
    return claims_of(token, (secret,))[0]


def claims_of(token: str, secrets: tuple[str, ...]) -> tuple[int, float]:
    """(user id, expiry as a Unix time) of a token valid under one of the secrets; AuthError otherwise."""
    for i, secret in enumerate(secrets):
        try:
            claims = jwt.decode(token, secret, algorithms=[ALGORITHM], options={"require": ["sub", "exp"]})
            break
        except jwt.InvalidSignatureError as exc:
            if i == len(secrets) - 1:
                raise AuthError(str(exc)) from exc
        except jwt.PyJWTError as exc:
            raise AuthError(str(exc)) from exc
    sub = claims.get("sub")
    user = parse_id(sub) if isinstance(sub, str) else None
    if user is None:
        raise AuthError("sub must be a positive integer user id")
    return user, float(claims["exp"])
