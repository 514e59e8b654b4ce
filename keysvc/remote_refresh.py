"""Fetching a remote client's JWKS and keeping the result, once at a time.

A :class:`Refresher` runs at most one fetch per client in the process (every
concurrent caller awaits the same task, which a cancelled caller does not
cancel), and each fetch is first claimed in the database, so that across
replicas a client's upstream sees at most one request per refetch interval.
A good answer is stored and announced with ``NOTIFY``; a failure is counted,
logged and recorded beside the kept set, which it never replaces.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from keysvc.errors import InvalidJwksUri, KeysvcError, UpstreamFailed
from keysvc.jwks_cache import JwksCache
from keysvc.lifecycle import NOTIFY_CHANNEL
from keysvc.metrics import Metrics
from keysvc.remote_keys import KeySet, freshness_seconds, parse_key_set
from keysvc.settings import Settings
from keysvc.store import RemoteSet, Store

if TYPE_CHECKING:
    # Types only: this module stays free of aiohttp, the fetcher's business.
    from keysvc.remote_fetch import Fetcher
    from keysvc.remote_guard import AddressGuard

logger = logging.getLogger(__name__)

# The scheduler refreshes a set once it enters the last fifth of its life.
REFRESH_LEAD_FRACTION = 0.2
REFRESH_BATCH = 100
REFRESH_CONCURRENCY = 8


@dataclass(frozen=True, slots=True)
class Fetched:
    """One good answer from the upstream: a new set, or a 304 (``key_set`` None).

    ``age_seconds`` is how long ago it was fetched, for an answer kept late.
    """

    key_set: KeySet | None
    etag: str | None
    fresh_seconds: float
    age_seconds: float = 0.0


class Refresher:
    """Fetches remote sets, one flight per client, and keeps what is good."""

    def __init__(
        self,
        store: Store,
        fetcher: Fetcher,
        cache: JwksCache,
        metrics: Metrics,
        settings: Settings,
    ) -> None:
        self._store = store
        self._fetcher = fetcher
        self._cache = cache
        self._metrics = metrics
        self._settings = settings
        self.interval = settings.remote_refetch_interval_seconds
        self._flights: dict[str, asyncio.Task[RemoteSet]] = {}
        self._background: set[asyncio.Task[None]] = set()

    @property
    def guard(self) -> AddressGuard:
        return self._fetcher.guard

    def running(self, client_id: str) -> asyncio.Task[RemoteSet] | None:
        return self._flights.get(client_id)

    async def probe(self, jwks_uri: str, alg: str) -> Fetched:
        """Fetch a ``jwks_uri`` that is not stored yet; raise InvalidJwksUri."""
        target = self.guard.target(jwks_uri)
        try:
            fetched = await self._download(jwks_uri, alg, etag=None)
        except UpstreamFailed as exc:
            self._metrics.remote_fetches.labels(exc.outcome).inc()
            raise InvalidJwksUri(f"jwks_uri cannot be used: {exc.detail}") from exc

        self._metrics.remote_fetches.labels("ok").inc()
        logger.info("checked a new jwks_uri at %s", target.where)

        return fetched

    async def claim(self, client_id: str) -> RemoteSet | None:
        """The client's state if this replica may fetch now, else None."""
        async with self._store.transaction("claim remote JWKS fetch") as tx:
            return await tx.claim_remote_fetch(
                client_id, interval_seconds=self.interval
            )

    async def refresh(self, state: RemoteSet) -> RemoteSet:
        """Fetch and keep a claimed client's set, once for every concurrent caller."""
        client_id = state.client_id
        task = self._flights.get(client_id)
        if task is None:
            task = asyncio.create_task(
                self._fetch_and_keep(state), name=f"keysvc-remote-{client_id}"
            )
            self._flights[client_id] = task

            def done(finished: asyncio.Task[RemoteSet]) -> None:
                if self._flights.get(client_id) is finished:
                    del self._flights[client_id]
                if not finished.cancelled():
                    finished.exception()  # retrieved: no "never retrieved" log

            task.add_done_callback(done)

        return await asyncio.shield(task)

    def refresh_in_background(self, client_id: str) -> None:
        """Claim and refetch without anyone waiting, unless a fetch is running."""
        if client_id in self._flights:
            return

        async def run() -> None:
            try:
                claimed = await self.claim(client_id)
                if claimed is not None:
                    await self.refresh(claimed)
            except UpstreamFailed:
                pass  # logged and counted where it happened
            except KeysvcError as exc:
                logger.warning(
                    "background refresh of client %s failed: %s",
                    client_id,
                    exc.detail,
                    extra={"client_id": client_id},
                )

        task = asyncio.create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def refresh_due(self) -> None:
        """Refetch the sets near the end of their freshness, and the failing ones."""
        async with self._store.transaction("claim remote JWKS refreshes") as tx:
            due = await tx.claim_remote_refreshes(
                lead_fraction=REFRESH_LEAD_FRACTION,
                interval_seconds=self.interval,
                backoff_cap_seconds=max(
                    self.interval, self._settings.remote_min_ttl_seconds
                ),
                limit=REFRESH_BATCH,
            )
        limit = asyncio.Semaphore(REFRESH_CONCURRENCY)

        async def refresh(state: RemoteSet) -> None:
            async with limit:
                with contextlib.suppress(UpstreamFailed):
                    await self.refresh(state)

        await asyncio.gather(*(refresh(state) for state in due))
        stale = await self._store.count_stale_remote_sets()
        self._metrics.remote_sets_stale.set(stale)
        if due:
            logger.debug("refreshed %d remote JWKS; %d are stale", len(due), stale)

    async def keep(self, state: RemoteSet, fetched: Fetched) -> RemoteSet:
        """Store a good answer, tell every replica, and return the new state."""
        client_id, uri = state.client_id, state.jwks_uri
        key_set = fetched.key_set
        async with self._store.transaction("keep remote JWKS") as tx:
            if key_set is None:
                kept = await tx.revalidate_remote_set(
                    client_id, uri, fresh_seconds=fetched.fresh_seconds
                )
            else:
                kept = await tx.save_remote_set(
                    client_id,
                    uri,
                    keys=key_set.keys,
                    upstream_etag=fetched.etag,
                    fresh_seconds=fetched.fresh_seconds,
                    skipped=key_set.skipped,
                    fetched_seconds_ago=fetched.age_seconds,
                )
            await tx.notify(NOTIFY_CHANNEL, client_id)
        self._cache.invalidate(client_id)

        if key_set is not None and key_set.skipped:
            logger.info(
                "client %s: kept %d keys of its JWKS, left out %s",
                client_id,
                len(key_set.keys),
                ", ".join(f"{n} for {why}" for why, n in key_set.skipped.items()),
                extra={"client_id": client_id, "skipped": key_set.skipped},
            )
        if not kept:
            # A later fetch won, or the client was deleted or moved meanwhile.
            current = await self._store.remote_set(client_id)
            if current is None or current.keys is None:
                raise UpstreamFailed(
                    "the client changed during the fetch", outcome="gone"
                )
            return current

        return replace(
            state,
            keys=state.keys if key_set is None else key_set.keys,
            upstream_etag=state.upstream_etag if key_set is None else fetched.etag,
            fresh_seconds=fetched.fresh_seconds,
            failures=0,
            since_attempt_seconds=0.0,
        )

    async def close(self) -> None:
        tasks = [*self._flights.values(), *self._background]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _fetch_and_keep(self, state: RemoteSet) -> RemoteSet:
        client_id = state.client_id
        etag = state.upstream_etag if state.keys is not None else None
        try:
            fetched = await self._download(state.jwks_uri, state.alg, etag=etag)
        except UpstreamFailed as exc:
            self._metrics.remote_fetches.labels(exc.outcome).inc()
            logger.warning(
                "client %s: fetching its JWKS failed (%s): %s",
                client_id,
                exc.outcome,
                exc.detail,
                extra={"client_id": client_id, "outcome": exc.outcome},
            )
            async with self._store.transaction("record remote JWKS failure") as tx:
                await tx.remote_fetch_failed(
                    client_id, state.jwks_uri, error=f"{exc.outcome}: {exc.detail}"
                )
            raise

        outcome = "ok" if fetched.key_set is not None else "not_modified"
        self._metrics.remote_fetches.labels(outcome).inc()

        return await self.keep(state, fetched)

    async def _download(self, jwks_uri: str, alg: str, *, etag: str | None) -> Fetched:
        try:
            # Checked again at every fetch: the allow-list may have changed.
            target = self.guard.target(jwks_uri)
        except InvalidJwksUri as exc:
            raise UpstreamFailed(exc.detail, outcome="refused") from exc
        upstream = await self._fetcher.fetch(target, etag=etag)
        settings = self._settings
        fresh = freshness_seconds(
            cache_control=upstream.cache_control,
            expires=upstream.expires,
            date=upstream.date,
            age=upstream.age,
            min_seconds=settings.remote_min_ttl_seconds,
            max_seconds=settings.remote_max_ttl_seconds,
        )
        if upstream.status == 304:
            return Fetched(None, upstream.etag or etag, fresh)

        return Fetched(parse_key_set(upstream.body, alg=alg), upstream.etag, fresh)
