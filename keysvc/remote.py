"""The JWKS of clients that host their own: fetched, kept, and served from memory.

A remote client's set goes through the same :class:`~keysvc.jwks_cache.JwksCache`
as a managed client's, so a cached one costs the same to serve. Behind the
cache, the last good set and the metadata of its fetches are kept in
PostgreSQL (see :mod:`keysvc.remote_refresh`), so a restarted or added
replica serves it without asking the upstream.

When a set is loaded into memory it is either fresh (served as it is), stale
but within ``KEYSVC_REMOTE_MAX_STALE`` (served at once while one background
refetch runs), or missing or too old (fetched while the request waits, once
for all concurrent callers; a failure answers 503). An unknown kid refetches
at most once a refetch interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from keysvc.errors import Unavailable, UpstreamFailed
from keysvc.jwks_cache import JwksCache, JwksEntry, build_entry, cache_policy
from keysvc.metrics import Metrics
from keysvc.remote_refresh import Fetched, Refresher
from keysvc.settings import Settings
from keysvc.store import RemoteSet, Store

if TYPE_CHECKING:
    from keysvc.remote_fetch import Fetcher

logger = logging.getLogger(__name__)

# How long the document fetched to check a new jwks_uri may stand in for the
# first fetch of that client.
PROBE_SECONDS = 60.0
_GATE_LIMIT = 10_000
_POLL_SECONDS = 0.1
# Members in one order whether a set comes from a fetch or from jsonb (which
# reorders them), so that every replica serves the same bytes and ETag.
_MEMBER_ORDER = ("kty", "kid", "use", "alg", "crv", "n", "e", "x", "y")


@dataclass(frozen=True, slots=True)
class RemoteEntry(JwksEntry):
    """A remote client's cached JWKS; ``stale`` once past its freshness."""

    stale: bool = False
    public_keys: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class _Probe:
    jwks_uri: str
    alg: str
    fetched: Fetched
    at: float


class RemoteJwks:
    """Serves the JWKS of every ``jwks_uri`` client, and checks new ones."""

    def __init__(
        self,
        store: Store,
        fetcher: Fetcher,
        cache: JwksCache,
        metrics: Metrics,
        settings: Settings,
    ) -> None:
        self._store = store
        self._cache = cache
        self._metrics = metrics
        self._settings = settings
        self._refresher = Refresher(store, fetcher, cache, metrics, settings)
        self._interval = settings.remote_refetch_interval_seconds
        self._kid_gate: dict[str, float] = {}
        self._probes: dict[str, _Probe] = {}

    async def check_uri(self, client_id: str, jwks_uri: str, alg: str) -> None:
        """Refuse a ``jwks_uri`` that is not allowed or does not serve a good set.

        The document fetched stands in for the client's first fetch, if that
        comes on this replica within :data:`PROBE_SECONDS`.
        """
        fetched = await self._refresher.probe(jwks_uri, alg)

        now = _clock()
        self._probes = {
            k: p for k, p in self._probes.items() if now - p.at < PROBE_SECONDS
        }
        self._probes[client_id] = _Probe(jwks_uri, alg, fetched, now)

    async def build(self, client_id: str) -> RemoteEntry | None:
        """Load a remote client's set into an entry; None if no such client."""
        state = await self._store.remote_set(client_id)
        if state is None:
            return None
        if state.keys is not None and state.fresh_seconds > 0:
            return self._entry(state)
        if state.keys is not None and self._servable(state):
            self._refresher.refresh_in_background(client_id)
            self._metrics.remote_stale_served.inc()
            return self._entry(state)

        # Nothing to serve: fetch while the caller (and its like) waits.
        probe = self._probes.pop(client_id, None)
        if probe is not None and _matches(probe, state):
            return self._entry(await self._refresher.keep(state, _aged(probe)))
        claimed = await self._refresher.claim(client_id)
        if claimed is None:
            kept = await self._fetched_elsewhere(client_id)
            if kept is None:
                raise self._unavailable(client_id, "a fetch failed moments ago")
            return self._entry(kept)
        try:
            fresh = await self._refresher.refresh(claimed)
        except UpstreamFailed as exc:
            raise self._unavailable(client_id, exc.outcome) from exc

        return self._entry(fresh)

    async def entry(self, client_id: str) -> RemoteEntry | None:
        """The cached entry of a remote client; None for any other client."""
        cached = self._cache.get(client_id)
        if cached is None:
            if await self._store.remote_set(client_id) is None:
                return None
            cached = await self._cache.load(
                client_id, functools.partial(self.build, client_id)
            )

        return cached if isinstance(cached, RemoteEntry) else None

    async def refetch_for_kid(self, client_id: str) -> bool:
        """Refetch once for an unknown kid, at most once a refetch interval.

        True when a refetch ran and may have brought the kid: look again.
        """
        running = self._refresher.running(client_id)
        if running is not None:
            with contextlib.suppress(UpstreamFailed):
                await asyncio.shield(running)
                return True
            return False

        now = _clock()
        if self._kid_gate.get(client_id, 0.0) > now:
            return False
        if len(self._kid_gate) >= _GATE_LIMIT:
            self._kid_gate = {k: t for k, t in self._kid_gate.items() if t > now}
        self._kid_gate[client_id] = now + self._interval

        claimed = await self._refresher.claim(client_id)
        if claimed is None:
            return False
        try:
            fresh = await self._refresher.refresh(claimed)
        except UpstreamFailed:
            return False

        return fresh.keys != claimed.keys

    async def lookup(self, client_id: str, kid: str | None) -> list[dict[str, Any]]:
        """The public JWKs of a remote client usable for ``kid`` (all if None).

        An unknown kid refetches once, rate-limited. Raises
        :class:`~keysvc.errors.Unavailable` when no set can be served.
        """
        entry = await self.entry(client_id)
        if entry is None:
            return []
        found = _matching(entry, kid)
        if found or kid is None or not await self.refetch_for_kid(client_id):
            return found

        entry = await self.entry(client_id)
        return [] if entry is None else _matching(entry, kid)

    async def refresh_due(self) -> None:
        """The scheduler's job: refresh sets ahead of expiry, retry failing ones."""
        await self._refresher.refresh_due()

    async def close(self) -> None:
        await self._refresher.close()

    async def _fetched_elsewhere(self, client_id: str) -> RemoteSet | None:
        """Wait out another replica's fetch of a set this one has not got.

        The claim was refused: a fetch started within the refetch interval.
        If it has not failed yet, it may still be running on another replica;
        its result is read from the database, for as long as a fetch may take.
        """
        deadline = _clock() + self._settings.remote_timeout_seconds + 0.5
        while _clock() < deadline:
            state = await self._store.remote_set(client_id)
            if state is None or state.failures > 0:
                return None
            if state.keys is not None and self._servable(state):
                return state
            await asyncio.sleep(_POLL_SECONDS)

        return None

    def _servable(self, state: RemoteSet) -> bool:
        return state.fresh_seconds > -self._settings.remote_max_stale_seconds

    def _entry(self, state: RemoteSet) -> RemoteEntry:
        settings = self._settings
        keys = [
            {name: key[name] for name in _MEMBER_ORDER if name in key}
            for key in state.keys or []
        ]
        if state.fresh_seconds > 0:
            # Our max-age comes out of what is left of the upstream's.
            remaining = state.fresh_seconds
            policy = cache_policy(
                prepublish_period_seconds=int(remaining),
                grace_period_seconds=settings.remote_max_stale_seconds,
                cap_seconds=settings.jwks_max_age_seconds,
            )
            lifetime = min(settings.jwks_cache_ttl_seconds, remaining)
        else:
            # Past freshness: no downstream cache should keep it, and this
            # one only until the next refetch may start.
            policy = cache_policy(
                prepublish_period_seconds=0, grace_period_seconds=0, cap_seconds=0
            )
            left = settings.remote_max_stale_seconds + state.fresh_seconds
            lifetime = max(0.0, min(self._interval, left))
        built = build_entry(keys, policy, ttl=lifetime)

        return RemoteEntry(
            built.body,
            built.etag,
            built.keys,
            built.cache_controls,
            built.expires_at,
            stale=state.fresh_seconds <= 0,
            public_keys=tuple(keys),
        )

    def _unavailable(self, client_id: str, reason: str) -> Unavailable:
        # The reason is a label, not the upstream's detail: this is public.
        return UpstreamFailed(
            f"the JWKS of client {client_id} cannot be fetched from its jwks_uri "
            f"({reason}), and no set recent enough to serve is kept",
            outcome="unavailable",
            retry_after=max(1, math.ceil(self._interval)),
        )


def _matches(probe: _Probe, state: RemoteSet) -> bool:
    fresh_enough = _clock() - probe.at < PROBE_SECONDS
    return fresh_enough and (probe.jwks_uri, probe.alg) == (state.jwks_uri, state.alg)


def _aged(probe: _Probe) -> Fetched:
    age = _clock() - probe.at
    fresh = max(1.0, probe.fetched.fresh_seconds - age)

    return replace(probe.fetched, fresh_seconds=fresh, age_seconds=age)


def _matching(entry: RemoteEntry, kid: str | None) -> list[dict[str, Any]]:
    return [dict(k) for k in entry.public_keys if kid is None or k.get("kid") == kid]


def _clock() -> float:
    return asyncio.get_running_loop().time()
