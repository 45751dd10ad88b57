"""A circuit breaker for Redis, shared by the upvote sets, the rate limits and the replica's
read-your-writes positions: one view of Redis's health per process.

Why not a library's: pybreaker runs a coroutine only under Tornado, and aiobreaker wraps one call
(`await breaker.call(f)`) and counts what that call raises. Here the call sites differ (a pipelined
SMISMEMBER, a Lua script, an EVALSHA under a wait of its own), each decides what a failure is (a
timeout or a lost connection, not a miss), and one asks whether to try at all before it builds its
call. allow / success / failure, the thirty lines below, say exactly that.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class Breaker:
    """Closed: use Redis. Open after `threshold` failures in a row: skip it for `cooldown` seconds.
    Then half open: one call goes through as a probe (another only if it never reports within a
    cooldown); its success closes the breaker, its failure opens it again."""

    threshold: int = 3
    cooldown: float = 5.0
    failures: int = 0
    opened_at: float | None = None
    probe_at: float | None = None  # when the half-open breaker let its probe through

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half_open" if time.monotonic() - self.opened_at >= self.cooldown else "open"

    def allow(self) -> bool:
        state = self.state
        if state != "half_open":
            return state == "closed"
        now = time.monotonic()
        if self.probe_at is not None and now - self.probe_at < self.cooldown:
            return False  # the probe is out
        self.probe_at = now
        return True

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self.probe_at = None

    def failure(self) -> None:
        self.failures += 1
        self.probe_at = None
        if self.failures >= self.threshold or self.opened_at is not None:
            self.opened_at = time.monotonic()
