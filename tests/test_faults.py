"""PostgreSQL stopped and restarted under a serving keysvc."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import asyncpg
import pgserver
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from harness import own_temp_dir

from keysvc.http.app import create_app
from keysvc.http.appkeys import JWKS_CACHE, STATUS
from keysvc.lifecycle import NOTIFY_CHANNEL
from keysvc.secret import Secret

pytestmark = pytest.mark.slow


class Postgres:
    """A PostgreSQL of this test's own, so the test may stop it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.server = pgserver.get_server(path, cleanup_mode="stop")
        self.root = self.server.get_uri()

    def stop(self) -> None:
        self.server.cleanup()

    def start(self) -> None:
        self.server = pgserver.get_server(self.path, cleanup_mode="stop")


@pytest.fixture
async def own_pg() -> AsyncIterator[tuple[Postgres, str]]:
    with own_temp_dir("keysvc-test-faults-") as path:
        async for pair in _own_pg(path):
            yield pair


async def _own_pg(path: Path) -> AsyncIterator[tuple[Postgres, str]]:
    pg = await asyncio.to_thread(Postgres, path / "pg")
    conn = await asyncpg.connect(pg.root)
    try:
        await conn.execute("CREATE ROLE faulty LOGIN NOSUPERUSER")
        await conn.execute("CREATE DATABASE faulty OWNER faulty")
    finally:
        await conn.close()
    host = pg.root.split("host=", 1)[1]
    yield pg, f"postgresql://faulty@/faulty?host={host}"
    await asyncio.to_thread(pg.stop)


async def _until(predicate, *, within: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within:
        if await predicate():
            return time.monotonic() - started
        await asyncio.sleep(0.2)
    raise AssertionError(f"not true within {within} s")


async def _notifications_delivered(app: web.Application, dsn: str) -> None:
    """Wait until the listener has handled every notification committed so
    far: a fence sent now arrives after them (delivery follows commit order).

    Without it, the NOTIFY of a client just created may land after its JWKS
    was cached and drop it, and then no stale copy is left to serve.
    """
    cache = app[JWKS_CACHE]
    real_invalidate = cache.invalidate
    fenced = asyncio.Event()

    def watched(client_id: str) -> None:
        real_invalidate(client_id)
        if client_id == "fence":
            fenced.set()

    cache.invalidate = watched  # type: ignore[method-assign]
    try:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("SELECT pg_notify($1, 'fence')", NOTIFY_CHANNEL)
        finally:
            await conn.close()
        await asyncio.wait_for(fenced.wait(), 10)
    finally:
        del cache.invalidate


async def test_keysvc_rides_out_a_database_restart(
    own_pg, settings, generator, admin, leak_watch
):
    pg, dsn = own_pg
    app = create_app(
        replace(
            settings,
            database_url=Secret(dsn),
            jwks_cache_ttl_seconds=1.0,
            db_timeout_seconds=2.0,
        ),
        generator=generator,
    )
    server = TestServer(app, host="127.0.0.1")
    await asyncio.wait_for(server.start_server(), 30)
    timeout = aiohttp.ClientTimeout(total=20)
    try:
        async with aiohttp.ClientSession(
            str(server.make_url("/")), timeout=timeout
        ) as http:
            created = await (
                await http.post("/clients", json={"client_id": "steady"}, headers=admin)
            ).json()
            leak_watch.add(created["client_token"])
            await _notifications_delivered(app, dsn)
            before = await (await http.get("/clients/steady/jwks.json")).json()

            await asyncio.to_thread(pg.stop)
            await asyncio.sleep(1.2)  # past the cache TTL: only stale-if-error serves

            during = await http.get("/clients/steady/jwks.json")
            started = time.monotonic()
            write = await http.post(
                "/clients", json={"client_id": "lost"}, headers=admin
            )
            write_seconds = time.monotonic() - started
            problem = await write.json()

            async def not_ready() -> bool:
                return (await http.get("/readyz")).status == 503

            await _until(not_ready, within=5)

            await asyncio.to_thread(pg.start)

            async def ready() -> bool:
                return (await http.get("/readyz")).status == 200

            recovered_in = await _until(ready, within=20)
            assert app[STATUS].listening

            async def writable() -> bool:
                response = await http.post(
                    "/clients", json={"client_id": "after"}, headers=admin
                )
                if response.status == 201:
                    leak_watch.add((await response.json())["client_token"])
                return response.status == 201

            await _until(writable, within=10)
            trail = await (
                await http.get("/clients/steady/events", headers=admin)
            ).json()
            after = await (await http.get("/clients/steady/jwks.json")).json()
            lost = await http.get("/clients/lost", headers=admin)
    finally:
        await asyncio.wait_for(server.close(), 30)

    assert during.status == 200
    assert await during.json() == before
    assert write.status == 503
    assert write.headers["Retry-After"]
    assert problem["status"] == 503
    assert write_seconds < 6
    assert recovered_in < 20
    assert after == before
    assert lost.status == 404
    assert [e["kind"] for e in trail["events"]] == [
        "client.created",
        "key.generated",
        "key.generated",
    ]
