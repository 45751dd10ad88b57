"""HS256 JWTs: the user id travels in `sub`; expiry is always checked."""

from __future__ import annotations

import time
from collections.abc import Callable

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
    return _verify(token, (secret,))[0]


def _verify(token: str, secrets: tuple[str, ...]) -> tuple[int, float]:
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


class TokenVerifier:
    """verify_token for one secret, remembering the tokens it accepted until they expire.

    A client sends the same token with every request, and checking it (base64, JSON, HMAC, the
    claims) cost about a quarter of a signed-in read's CPU in the API. An accepted token is the
    same string with the same signature, so only its expiry needs checking again. Tokens that fail
    are not remembered; the memory holds at most `max_entries`, the oldest forgotten first.
    """

    def __init__(
        self,
        secret: str,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.time,
        test_secret: str | None = None,
    ) -> None:
        self.secrets = (secret,) if test_secret is None else (secret, test_secret)
        self.max_entries = max_entries
        self.clock = clock
        self._accepted: dict[str, tuple[int, float]] = {}

    def __call__(self, token: str) -> int:
        known = self._accepted.get(token)
        if known is not None:
            user, expires = known
            if self.clock() < expires:
                return user
            del self._accepted[token]
            raise AuthError("Signature has expired")
        user, expires = _verify(token, self.secrets)
        if self.clock() >= expires:  # this verifier's clock is the one that counts
            raise AuthError("Signature has expired")
        if self.max_entries == 0:  # remembering nothing: every token verified in full
            return user
        if len(self._accepted) >= self.max_entries:
            del self._accepted[next(iter(self._accepted))]
        self._accepted[token] = (user, expires)
        return user
