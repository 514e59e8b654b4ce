"""Shared fixtures: a real PostgreSQL, a fresh database a test, a live server.

The server is pgserver's (the same wheel the embedded default uses), started
once for the session in a temporary folder. Each test gets its own database,
cloned from a migrated template, owned by a role that is no superuser.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pgserver
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from harness import own_temp_dir

from keysvc import migrations
from keysvc.http.app import create_app
from keysvc.keygen import KeyGenerator
from keysvc.logs import JsonFormatter
from keysvc.sealing import Kek, format_kek, new_kek
from keysvc.secret import Secret
from keysvc.settings import Settings

TEST_ROLE = "keysvc_test"
TEMPLATE = "keysvc_template"
ADMIN_TOKEN = "ksad_" + "t" * 43
_numbers = itertools.count()


@pytest.fixture(scope="session")
def pg_root() -> Iterator[str]:
    """Superuser DSN of a PostgreSQL for the whole session."""
    given = os.environ.get("KEYSVC_TEST_DATABASE_URL")
    if given:
        yield given
        return

    # Not under pytest's basetemp: a concurrent pytest run prunes old
    # basetemps, and would delete a live server's data under it.
    with own_temp_dir("keysvc-test-pg-") as path:
        server = pgserver.get_server(path, cleanup_mode="stop")
        yield server.get_uri()
        server.cleanup()


def _dsn(root: str, *, user: str, database: str) -> str:
    rest = root.split("@", 1)[1]
    host_and_db, _, query = rest.partition("?")
    host = host_and_db.split("/", 1)[0]
    suffix = f"?{query}" if query else ""

    return f"postgresql://{user}@{host}/{database}{suffix}"


@pytest.fixture(scope="session")
async def pg_template(pg_root: str) -> str:
    conn = await asyncpg.connect(pg_root)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE}")
        await conn.execute(f"DROP ROLE IF EXISTS {TEST_ROLE}")
        await conn.execute(f"CREATE ROLE {TEST_ROLE} LOGIN NOSUPERUSER NOCREATEDB")
        await conn.execute(f"CREATE DATABASE {TEMPLATE} OWNER {TEST_ROLE}")
    finally:
        await conn.close()

    owner = await asyncpg.connect(_dsn(pg_root, user=TEST_ROLE, database=TEMPLATE))
    try:
        await migrations.migrate(owner)
    finally:
        await owner.close()

    return TEMPLATE


@pytest.fixture
async def database_url(pg_root: str, pg_template: str) -> AsyncIterator[str]:
    """A fresh, migrated database owned by the non-superuser test role."""
    name = f"keysvc_t{os.getpid()}_{next(_numbers)}"
    conn = await asyncpg.connect(pg_root)
    try:
        await conn.execute(
            f"CREATE DATABASE {name} TEMPLATE {pg_template} OWNER {TEST_ROLE}"
        )
    finally:
        await conn.close()

    yield _dsn(pg_root, user=TEST_ROLE, database=name)

    conn = await asyncpg.connect(pg_root)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def kek() -> Kek:
    return new_kek("test-1")


@pytest.fixture
def settings(database_url: str, kek: Kek, tmp_path: Path) -> Settings:
    return Settings(
        database_url=Secret(database_url),
        admin_token=Secret(ADMIN_TOKEN),
        keks=(kek,),
        data_dir=tmp_path,
        scheduler=False,
        log_format="json",
        db_pool_min=1,
        db_pool_max=4,
    )


@pytest.fixture(scope="session")
async def generator() -> AsyncIterator[KeyGenerator]:
    """One pool of key workers for the session: they take a while to start."""
    gen = KeyGenerator(2)
    await gen.warm_up()
    yield gen
    await asyncio.to_thread(gen.close)


@pytest.fixture
async def app(settings: Settings, generator: KeyGenerator) -> web.Application:
    return create_app(settings, generator=generator)


@pytest.fixture
async def server(app: web.Application) -> AsyncIterator[TestServer]:
    """keysvc on a real socket on 127.0.0.1."""
    test_server = TestServer(app, host="127.0.0.1")
    await asyncio.wait_for(test_server.start_server(), 30)
    yield test_server
    await asyncio.wait_for(test_server.close(), 30)


@pytest.fixture
async def http(server: TestServer) -> AsyncIterator[aiohttp.ClientSession]:
    """A real HTTP client pointed at the live server."""
    async with aiohttp.ClientSession(
        base_url=str(server.make_url("/")),
        timeout=aiohttp.ClientTimeout(total=30),
    ) as session:
        yield session


@pytest.fixture
def admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


class LeakWatch:
    """Every log line of the session, and the secrets that must not be in them."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.secrets: set[str] = set()

    def add(self, *values: str) -> None:
        self.secrets.update(v for v in values if v and len(v) >= 8)

    def leaks(self) -> list[tuple[str, str]]:
        return [
            (secret[:6] + "…", line[:200])
            for line in self.lines
            for secret in self.secrets
            if secret in line
        ]


class _Collect(logging.Handler):
    def __init__(self, watch: LeakWatch) -> None:
        super().__init__(logging.DEBUG)
        self.watch = watch
        self.setFormatter(JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        self.watch.lines.append(self.format(record))


@pytest.fixture(scope="session", autouse=True)
def leak_watch(kek: Kek) -> Iterator[LeakWatch]:
    """Fails the session if any registered secret reached any log line."""
    watch = LeakWatch()
    watch.add(ADMIN_TOKEN, format_kek(kek).split(":", 1)[1])
    handler = _Collect(watch)
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield watch
    root.removeHandler(handler)
    root.setLevel(previous)
    leaks = watch.leaks()
    if leaks:
        pytest.fail(f"secrets reached the log: {leaks[:5]}")


@pytest.fixture
def create_client(
    http: aiohttp.ClientSession, admin: dict[str, str], leak_watch: LeakWatch
) -> Callable[..., Awaitable[dict[str, Any]]]:
    """POST /clients and return the 201 body; its token joins the leak watch."""

    async def create(client_id: str, **fields: Any) -> dict[str, Any]:
        response = await http.post(
            "/clients", json={"client_id": client_id, **fields}, headers=admin
        )
        body = await response.json()
        assert response.status == 201, body
        leak_watch.add(body["client_token"], body.get("client_secret") or "")
        return dict(body)

    return create
