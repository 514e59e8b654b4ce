"""A bounded in-process map whose misses load once for all concurrent callers.

The per-client caches of keysvc (published JWKS, verification keys) share
this: a cold client hit by a thousand requests at once costs one database
read, and a change that lands while a load runs marks that load stale so its
result is handed to the callers already waiting but never kept.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Flight(Generic[V]):
    __slots__ = ("future", "stale")

    def __init__(self, future: asyncio.Future[V | None]) -> None:
        self.future = future
        self.stale = False


class LoadingMap(Generic[K, V]):
    """Entries by key, at most ``max_entries``; freshness is the caller's call."""

    def __init__(self, *, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: dict[K, V] = {}
        self._flights: dict[K, _Flight[V]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def peek(self, key: K) -> V | None:
        return self._entries.get(key)

    async def load(self, key: K, loader: Callable[[], Awaitable[V | None]]) -> V | None:
        """Run ``loader`` once for every concurrent caller; keep a non-None result."""
        flight = self._flights.get(key)
        if flight is not None:
            return await asyncio.shield(flight.future)

        flight = _Flight(asyncio.get_running_loop().create_future())
        self._flights[key] = flight
        try:
            value = await loader()
        except BaseException as exc:
            flight.future.set_exception(exc)
            # Retrieved here, so a load nobody else awaited logs no warning.
            flight.future.exception()
            raise
        finally:
            self._flights.pop(key, None)

        if value is not None and not flight.stale:
            self._put(key, value)
        flight.future.set_result(value)

        return value

    def invalidate(self, key: K) -> None:
        self._entries.pop(key, None)
        flight = self._flights.get(key)
        if flight is not None:
            # A load that began before the change must not be kept.
            flight.stale = True

    def clear(self) -> None:
        self._entries.clear()
        for flight in self._flights.values():
            flight.stale = True

    def _put(self, key: K, value: V) -> None:
        if len(self._entries) >= self.max_entries:
            # Dicts keep insertion order: drop the oldest tenth in one go.
            for old in list(self._entries)[: max(1, self.max_entries // 10)]:
                del self._entries[old]
        self._entries[key] = value
