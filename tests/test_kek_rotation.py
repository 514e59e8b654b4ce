"""KEK rotation end to end: add a KEK, rewrap, drop the old one, restart."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from dataclasses import replace

import aiohttp
import asyncpg
import jwt
import pytest
from aiohttp.test_utils import TestServer

from keysvc.http.app import create_app
from keysvc.http.appkeys import LIFECYCLE
from keysvc.sealing import format_kek, new_kek

pytestmark = pytest.mark.slow

CLIENTS = [
    ("rot-es", {"alg": "ES256"}),
    ("rot-rs", {"alg": "RS256"}),
    ("rot-ed", {"alg": "EdDSA"}),
    ("rot-hs", {"auth_method": "client_secret_jwt"}),
]


@asynccontextmanager
async def running(settings, generator, keks):
    app = create_app(replace(settings, keks=keks), generator=generator)
    server = TestServer(app, host="127.0.0.1")
    await asyncio.wait_for(server.start_server(), 30)
    try:
        async with aiohttp.ClientSession(str(server.make_url("/"))) as http:
            yield app, http
    finally:
        await asyncio.wait_for(server.close(), 30)


async def _sign_all(http, tokens) -> dict[str, int]:
    statuses = {}
    for client_id, token in tokens.items():
        response = await http.post(
            f"/clients/{client_id}/assertions",
            json={"audience": "https://as.example/token"},
            headers={"Authorization": f"Bearer {token}"},
        )
        statuses[client_id] = response.status
        if response.status == 200:
            assertion = (await response.json())["client_assertion"]
            assert jwt.get_unverified_header(assertion)["alg"] in (
                "ES256", "RS256", "EdDSA", "HS256",
            )  # fmt: skip
    return statuses


async def test_every_key_still_signs_after_rewrap_under_a_new_kek(
    settings, generator, kek, admin, leak_watch, database_url
):
    newer = new_kek("test-2")
    leak_watch.add(format_kek(newer).split(":", 1)[1])
    tokens = {}
    async with running(settings, generator, (kek,)) as (_, http):
        for client_id, fields in CLIENTS:
            response = await http.post(
                "/clients", json={"client_id": client_id, **fields}, headers=admin
            )
            body = await response.json()
            tokens[client_id] = body["client_token"]
            leak_watch.add(body["client_token"], body.get("client_secret") or "")
        before = await _sign_all(http, tokens)

    async with running(settings, generator, (newer, kek)) as (app, http):
        moved, failed = await app[LIFECYCLE].rewrap_all(actor="test")
        during = await _sign_all(http, tokens)

    conn = await asyncpg.connect(database_url)
    try:
        left = await conn.fetchval(
            "SELECT count(*) FROM keys WHERE sealed IS NOT NULL AND kek_id <> 'test-2'"
        )
        secrets_left = await conn.fetchval(
            "SELECT count(*) FROM client_secrets WHERE sealed IS NOT NULL"
            " AND kek_id <> 'test-2'"
        )
    finally:
        await conn.close()

    async with running(settings, generator, (newer,)) as (_, http):
        after = await _sign_all(http, tokens)

    assert set(before.values()) == {200}
    assert moved == 7  # two keys for each key-pair client, one secret
    assert failed == []
    assert set(during.values()) == {200}
    assert left == 0 and secrets_left == 0
    assert set(after.values()) == {200}


async def test_a_key_under_a_dropped_kek_is_a_503_that_names_the_kid(
    settings, generator, kek, admin, leak_watch
):
    async with running(settings, generator, (kek,)) as (_, http):
        response = await http.post(
            "/clients", json={"client_id": "stranded"}, headers=admin
        )
        created = await response.json()
        token = created["client_token"]
        leak_watch.add(token)
    lines_before = len(leak_watch.lines)

    async with running(settings, generator, (new_kek("other"),)) as (_, http):
        signed = await http.post(
            "/clients/stranded/assertions",
            json={"audience": "https://as"},
            headers={"Authorization": f"Bearer {token}"},
        )
        problem = await signed.json()

    kid = created["active"]["kid"]
    assert signed.status == 503
    assert kid in problem["detail"]
    logged = [line for line in leak_watch.lines[lines_before:] if kid in line]
    assert any('"ERROR"' in line and "test-1" in line for line in logged)
