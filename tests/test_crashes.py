"""A replica SIGKILLed in the middle of imports, revocations and rotations."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import asyncpg
import pytest
from harness import KeysvcProcess
from jwcrypto import jwk

from keysvc.sealing import format_kek

pytestmark = pytest.mark.slow

ADMIN = "ksad_" + "k" * 43
CLIENTS = 12


async def _fire(http: aiohttp.ClientSession, base: str, clients: list[dict]) -> None:
    """Key changes on every client at once, until the process dies under them."""

    async def one(created: dict) -> None:
        client_id = created["client"]["client_id"]
        own = {"Authorization": f"Bearer {created['client_token']}"}
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            if created["client"]["key_source"] == "imported":
                for _ in range(3):
                    key = jwk.JWK.generate(kty="EC", crv="P-256")
                    await http.post(
                        f"{base}/clients/{client_id}/keys",
                        json={"jwk": key.export_public(as_dict=True), "activate": True},
                        headers=own,
                    )
            else:
                await http.post(
                    f"{base}/clients/{client_id}/keys/{created['next']['kid']}/revoke",
                    headers=own,
                )
                for _ in range(3):
                    await http.post(
                        f"{base}/clients/{client_id}/keys/rotate",
                        json={"force": True},
                        headers=own,
                    )

    await asyncio.gather(*(one(c) for c in clients))


def by_kind_of(events: list, kind: str) -> list:
    return [e for e in events if e["kind"] == kind]


async def test_sigkill_mid_change_leaves_every_change_whole(
    database_url, kek, leak_watch
):
    env = {
        "KEYSVC_DATABASE_URL": database_url,
        "KEYSVC_ADMIN_TOKEN": ADMIN,
        "KEYSVC_KEKS": format_kek(kek),
        "KEYSVC_KEYGEN_WORKERS": "1",
        "KEYSVC_SCHEDULER": "0",
        "KEYSVC_ROTATION_RATE": "0",
    }
    first = await KeysvcProcess(env, name="doomed").started()
    survivor = None
    try:
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=10)
        ) as http:
            clients = []
            for n in range(CLIENTS):
                source = "imported" if n % 2 else "generated"
                response = await http.post(
                    f"{first.base}/clients",
                    json={
                        "client_id": f"crash-{n}",
                        "key_source": source,
                        "alg": "ES256",
                    },
                    headers={"Authorization": f"Bearer {ADMIN}"},
                )
                created = await response.json()
                leak_watch.add(created["client_token"])
                clients.append(created)

            storm = asyncio.create_task(_fire(http, first.base, clients))
            await asyncio.sleep(0.25)
            await first.kill()
            await asyncio.wait_for(storm, 30)

            survivor = await KeysvcProcess(env, name="survivor").started()
            jwks_statuses = []
            for created in clients:
                client_id = created["client"]["client_id"]
                async with http.get(
                    f"{survivor.base}/clients/{client_id}/jwks.json"
                ) as response:
                    jwks_statuses.append(response.status)
            generated = clients[0]
            async with http.post(
                f"{survivor.base}/clients/crash-0/keys/rotate",
                json={"force": True},
                headers={"Authorization": f"Bearer {generated['client_token']}"},
            ) as response:
                rotated = response.status
    finally:
        leak_watch.lines.extend(first.lines)
        if survivor is not None:
            await survivor.stop()
            leak_watch.lines.extend(survivor.lines)

    conn = await asyncpg.connect(database_url)
    try:
        keys = await conn.fetch("SELECT client_id, kid, state, origin FROM keys")
        events = await conn.fetch(
            "SELECT client_id, kind, kid FROM events WHERE kid IS NOT NULL"
        )
    finally:
        await conn.close()

    assert len(by_kind_of(events, "key.imported")) > 0, "the kill came too early"
    assert set(jwks_statuses) == {200}
    assert rotated == 201
    by_kind: dict[str, list[tuple[str, str]]] = {}
    for event in events:
        by_kind.setdefault(event["kind"], []).append((event["client_id"], event["kid"]))
    for key in keys:
        ident = (key["client_id"], key["kid"])
        made = "key.generated" if key["origin"] == "generated" else "key.imported"
        assert by_kind[made].count(ident) == 1, ident
        if key["state"] == "revoked":
            assert by_kind["key.revoked"].count(ident) == 1, ident
    stored = {(k["client_id"], k["kid"]) for k in keys}
    for kind in ("key.generated", "key.imported", "key.revoked", "key.activated"):
        assert set(by_kind.get(kind, [])) <= stored, kind
    for n in range(0, CLIENTS, 2):
        states = [k["state"] for k in keys if k["client_id"] == f"crash-{n}"]
        assert states.count("active") == 1 and states.count("next") == 1, states
