"""Per-client rate limits answer 429 with Retry-After."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from keysvc.errors import RateLimited
from keysvc.http.app import create_app
from keysvc.ratelimit import Rate, RateLimiter, parse_rate


def test_rates_parse_and_zero_turns_the_limit_off():
    assert parse_rate("10/m") == Rate(10, 60.0)
    assert parse_rate("50 / s") == Rate(50, 1.0)
    assert not parse_rate("0").enabled
    for bad in ("ten/m", "10/d", "10", "-1/s", ""):
        with pytest.raises(ValueError):
            parse_rate(bad)


def test_a_bucket_allows_its_burst_then_refuses_with_the_wait():
    limiter = RateLimiter(Rate(3, 60.0), what="rotations")
    for _ in range(3):
        limiter.check("a")

    with pytest.raises(RateLimited) as caught:
        limiter.check("a")
    limiter.check("b")

    assert caught.value.retry_after == 20


def test_the_number_of_buckets_is_bounded():
    limiter = RateLimiter(Rate(5, 1.0), what="assertions", max_clients=100)
    for n in range(1000):
        limiter.check(f"client-{n}")

    assert len(limiter._buckets) <= 100


async def test_rotations_over_the_limit_are_429_with_retry_after(
    settings, generator, admin, leak_watch
):
    app = create_app(
        replace(settings, rotation_rate=Rate(2, 60.0)), generator=generator
    )
    server = TestServer(app, host="127.0.0.1")
    await asyncio.wait_for(server.start_server(), 30)
    try:
        async with aiohttp.ClientSession(str(server.make_url("/"))) as http:
            created = await (
                await http.post(
                    "/clients",
                    json={"client_id": "busy", "prepublish_period": 0},
                    headers=admin,
                )
            ).json()
            leak_watch.add(created["client_token"])
            own = {"Authorization": f"Bearer {created['client_token']}"}
            statuses = []
            for _ in range(3):
                response = await http.post("/clients/busy/keys/rotate", headers=own)
                statuses.append(response.status)
            problem = await response.json()
    finally:
        await asyncio.wait_for(server.close(), 30)

    assert statuses == [201, 201, 429]
    assert int(response.headers["Retry-After"]) >= 1
    assert problem["type"].endswith("rate_limited")
