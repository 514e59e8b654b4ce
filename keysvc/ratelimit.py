"""Per-client rate limits: token buckets, one a client, in this process.

Limits are per replica: with N replicas a client may reach N times the rate.
They exist to stop a runaway client (a rotation loop, an assertion storm)
from crowding out the others, not to meter anyone exactly.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass

from keysvc.errors import RateLimited

_RATE = re.compile(r"(\d{1,9})\s*/\s*([smh])")
_PER = {"s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True, slots=True)
class Rate:
    """``count`` events per ``per_seconds``; a burst of ``count`` is allowed."""

    count: int
    per_seconds: float

    @property
    def enabled(self) -> bool:
        return self.count > 0


def parse_rate(value: str) -> Rate:
    """``10/m``, ``50/s``, ``100/h``, or ``0`` for no limit; raise ValueError."""
    if value.strip() == "0":
        return Rate(0, 1.0)
    match = _RATE.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"{value!r} is not a rate like 10/m, 50/s or 0")

    return Rate(int(match[1]), _PER[match[2]])


class RateLimiter:
    """Token buckets keyed by client id, bounded in number."""

    def __init__(self, rate: Rate, *, what: str, max_clients: int = 100_000) -> None:
        self.rate = rate
        self.what = what
        self.max_clients = max_clients
        self._refill = rate.count / rate.per_seconds if rate.enabled else 0.0
        self._buckets: dict[str, tuple[float, float]] = {}

    def check(self, client_id: str) -> None:
        """Take one token, or raise RateLimited with the wait in Retry-After."""
        if not self.rate.enabled:
            return
        now = time.monotonic()
        tokens, stamp = self._buckets.get(client_id, (float(self.rate.count), now))
        tokens = min(float(self.rate.count), tokens + (now - stamp) * self._refill)
        if tokens < 1.0:
            wait = math.ceil((1.0 - tokens) / self._refill)
            raise RateLimited(
                f"too many {self.what} for this client; retry in {wait} s",
                retry_after=max(1, wait),
            )

        if len(self._buckets) >= self.max_clients and client_id not in self._buckets:
            self._forget_full(now)
        self._buckets[client_id] = (tokens - 1.0, now)

    def _forget_full(self, now: float) -> None:
        # A bucket that has refilled is the same as no bucket at all.
        full = [
            key
            for key, (tokens, stamp) in self._buckets.items()
            if tokens + (now - stamp) * self._refill >= self.rate.count
        ]
        for key in full or list(self._buckets)[: self.max_clients // 10]:
            del self._buckets[key]
