"""The caller's identity: the bearer token of a request, verified, and remembered until it expires."""

from __future__ import annotations

import time
from collections.abc import Callable

from denorm.auth import AuthError, claims_of

BEARER_FORMAT = "the Authorization header must be 'Bearer <token>'"


def bearer(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, None without the header; ValueError
    for any other Authorization header. Every path of the API reads the header with this."""
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ValueError(BEARER_FORMAT)
    return token.strip()


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
        user, expires = claims_of(token, self.secrets)
        if self.clock() >= expires:  # this verifier's clock is the one that counts
            raise AuthError("Signature has expired")
        if self.max_entries == 0:  # remembering nothing: every token verified in full
            return user
        if len(self._accepted) >= self.max_entries:
            del self._accepted[next(iter(self._accepted))]
        self._accepted[token] = (user, expires)
        return user
