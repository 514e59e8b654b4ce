"""LoadingMap: one load for concurrent misses; a change during a load wins."""

from __future__ import annotations

import asyncio

import pytest

from keysvc.flights import LoadingMap


async def test_concurrent_misses_share_one_load():
    cache: LoadingMap[str, int] = LoadingMap(max_entries=10)
    calls = 0
    gate = asyncio.Event()

    async def load() -> int:
        nonlocal calls
        calls += 1
        await gate.wait()
        return 7

    waiting = [asyncio.create_task(cache.load("a", load)) for _ in range(50)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.wait_for(asyncio.gather(*waiting), 5)

    assert calls == 1
    assert results == [7] * 50
    assert cache.peek("a") == 7


async def test_a_load_overtaken_by_a_change_is_answered_but_not_kept():
    cache: LoadingMap[str, int] = LoadingMap(max_entries=10)
    gate = asyncio.Event()

    async def load() -> int:
        await gate.wait()
        return 1

    pending = asyncio.create_task(cache.load("a", load))
    await asyncio.sleep(0)
    cache.invalidate("a")
    gate.set()

    assert await asyncio.wait_for(pending, 5) == 1
    assert cache.peek("a") is None


async def test_a_failed_load_reaches_every_waiter_and_keeps_nothing():
    cache: LoadingMap[str, int] = LoadingMap(max_entries=10)

    async def load() -> int:
        await asyncio.sleep(0.01)
        raise LookupError("down")

    results = await asyncio.gather(
        *(cache.load("a", load) for _ in range(3)), return_exceptions=True
    )

    assert all(isinstance(r, LookupError) for r in results)
    assert cache.peek("a") is None
    with pytest.raises(LookupError):
        await cache.load("a", load)


async def test_none_is_not_kept_and_the_size_is_bounded():
    cache: LoadingMap[int, int] = LoadingMap(max_entries=10)

    async def nothing() -> None:
        return None

    assert await cache.load(1, nothing) is None
    for n in range(100):

        async def value(n: int = n) -> int:
            return n

        await cache.load(n, value)

    assert cache.peek(1) is None
    assert len(cache) <= 10
    assert cache.peek(99) == 99
