"""Published JWKS documents, kept in memory as ready bytes with their ETag.

A hit costs a dict lookup and a clock read: the bytes, the ETag and the
``Cache-Control`` values are computed once, when the entry is built. Entries
are dropped on every change to the client's keys (locally at once, and on
other replicas through ``NOTIFY``), and live at most ``ttl`` seconds in case a
notification was lost. Concurrent misses for one client share one load.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from keysvc.flights import LoadingMap

_JITTER_VARIANTS = 8


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """HTTP caching of one client's JWKS, derived from its schedule."""

    max_age: int
    stale_while_revalidate: int
    stale_if_error: int

    def header(self, max_age: int) -> str:
        return (
            f"public, max-age={max_age}, "
            f"stale-while-revalidate={self.stale_while_revalidate}, "
            f"stale-if-error={self.stale_if_error}"
        )


def cache_policy(
    *, prepublish_period_seconds: int, grace_period_seconds: int, cap_seconds: int
) -> CachePolicy:
    """Caching bounds that let every honest cache see a ``next`` key in time.

    A cache may hold a document for ``max-age`` and then serve it while it
    revalidates for ``stale-while-revalidate`` more; the sum stays within the
    prepublish period, so a key published that long is in every cache before
    it signs. ``stale-if-error`` only applies while keysvc cannot answer, and
    is bounded by the grace period, past which a retired key must be gone.
    """
    max_age = min(cap_seconds, prepublish_period_seconds * 2 // 3)
    swr = min(max_age // 2, prepublish_period_seconds - max_age)

    return CachePolicy(
        max_age=max_age,
        stale_while_revalidate=max(0, swr),
        stale_if_error=min(grace_period_seconds, 86400),
    )


@dataclass(frozen=True, slots=True)
class JwksEntry:
    """One client's JWKS, ready to send."""

    body: bytes
    etag: str
    keys: KeysByKid
    cache_controls: tuple[str, ...]
    expires_at: float = field(compare=False)

    def cache_control(self) -> str:
        # Jitter spreads the expiry of many caches that fetched at once.
        return random.choice(self.cache_controls)


class KeysByKid:
    """Each key of a document alone, as bytes and ETag, made on first use.

    Most clients are only ever asked for their whole set, so an entry holds
    no more than its document until a single key is asked for: with 100,000
    clients cached, the per-key copies would double the memory.
    """

    __slots__ = ("_body", "_by_kid")

    def __init__(self, body: bytes) -> None:
        self._body = body
        self._by_kid: dict[str, tuple[bytes, str]] | None = None

    def get(self, kid: str) -> tuple[bytes, str] | None:
        if self._by_kid is None:
            self._by_kid = {}
            for key in json.loads(self._body)["keys"]:
                if "kid" in key:
                    key_body = json.dumps(key, separators=(",", ":")).encode()
                    self._by_kid[str(key["kid"])] = (key_body, strong_etag(key_body))

        return self._by_kid.get(kid)


@functools.lru_cache(maxsize=1024)
def _jittered(policy: CachePolicy) -> tuple[str, ...]:
    # One tuple for every client of a policy, not eight strings an entry.
    spread = max(1, policy.max_age // 10)

    return tuple(
        policy.header(max(0, policy.max_age - i * spread // _JITTER_VARIANTS))
        for i in range(_JITTER_VARIANTS)
    )


def build_entry(
    public_keys: list[dict[str, Any]], policy: CachePolicy, *, ttl: float
) -> JwksEntry:
    """Serialise once: the document, its ETag, its headers."""
    body = json.dumps({"keys": public_keys}, separators=(",", ":")).encode()

    return JwksEntry(
        body,
        strong_etag(body),
        KeysByKid(body),
        _jittered(policy),
        time.monotonic() + ttl,
    )


def strong_etag(body: bytes) -> str:
    digest = hashlib.sha256(body).digest()[:18]

    return '"' + base64.urlsafe_b64encode(digest).decode() + '"'


class JwksCache:
    """Client id to :class:`JwksEntry`, bounded, with single-flight loads."""

    def __init__(self, *, ttl: float, max_entries: int) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._map: LoadingMap[str, JwksEntry] = LoadingMap(max_entries=max_entries)

    def __len__(self) -> int:
        return len(self._map)

    def get(self, client_id: str) -> JwksEntry | None:
        """A live entry; an expired one stays behind for :meth:`stale`."""
        entry = self._map.peek(client_id)
        if entry is not None and entry.expires_at < time.monotonic():
            return None

        return entry

    def stale(self, client_id: str, *, max_stale: float) -> JwksEntry | None:
        """An expired entry, for when the database cannot build a fresh one.

        Only entries that merely aged out are kept: a change to the client's
        keys removes its entry, so a revoked key is never served stale.
        """
        entry = self._map.peek(client_id)
        if entry is not None and time.monotonic() - entry.expires_at <= max_stale:
            return entry

        return None

    async def load(
        self, client_id: str, loader: Callable[[], Awaitable[JwksEntry | None]]
    ) -> JwksEntry | None:
        """Build a missing entry, once for all concurrent callers."""
        return await self._map.load(client_id, loader)

    def invalidate(self, client_id: str) -> None:
        self._map.invalidate(client_id)

    def clear(self) -> None:
        self._map.clear()
