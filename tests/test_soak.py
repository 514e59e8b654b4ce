"""A minute of JWKS traffic while rotations run: no error, memory flat.

Run by `make test-faults` (and CI), not by `make test`: it takes a minute.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from harness import KeysvcProcess

from keysvc.sealing import format_kek

pytestmark = pytest.mark.soak

ADMIN = "ksad_" + "s" * 43
CLIENTS = 100
SECONDS = 60
CONNECTIONS = 50


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_a_minute_of_jwks_load_during_rotations(database_url, kek, leak_watch):
    env = {
        "KEYSVC_DATABASE_URL": database_url,
        "KEYSVC_ADMIN_TOKEN": ADMIN,
        "KEYSVC_KEKS": format_kek(kek),
        "KEYSVC_KEYGEN_WORKERS": "1",
        "KEYSVC_SCHEDULER_INTERVAL": "0.5",
        "KEYSVC_LOG_LEVEL": "WARNING",
    }
    keysvc = await KeysvcProcess(env, name="soak").started()
    connector = aiohttp.TCPConnector(limit=CONNECTIONS)
    outcomes: dict[int | str, int] = {}
    samples: list[tuple[float, int]] = []
    try:
        async with aiohttp.ClientSession(
            keysvc.base, connector=connector, timeout=aiohttp.ClientTimeout(total=10)
        ) as http:
            for n in range(CLIENTS):
                response = await http.post(
                    "/clients",
                    json={
                        "client_id": f"soak-{n}",
                        "rotation_period": 3,
                        "prepublish_period": 1,
                        "grace_period": 2,
                    },
                    headers={"Authorization": f"Bearer {ADMIN}"},
                )
                leak_watch.add((await response.json())["client_token"])
            etags: dict[str, str] = {}
            started = time.monotonic()

            async def worker() -> None:
                while time.monotonic() - started < SECONDS:
                    client_id = f"soak-{random.randrange(CLIENTS)}"
                    headers = {}
                    if client_id in etags and random.random() < 0.5:
                        headers["If-None-Match"] = etags[client_id]
                    try:
                        async with http.get(
                            f"/clients/{client_id}/jwks.json", headers=headers
                        ) as response:
                            await response.read()
                            status: int | str = response.status
                            if status == 200:
                                etags[client_id] = response.headers["ETag"]
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        status = type(exc).__name__
                    outcomes[status] = outcomes.get(status, 0) + 1

            async def sampler() -> None:
                while time.monotonic() - started < SECONDS:
                    samples.append((time.monotonic() - started, rss_bytes(keysvc.pid)))
                    await asyncio.sleep(2)

            await asyncio.wait_for(
                asyncio.gather(sampler(), *(worker() for _ in range(CONNECTIONS))),
                SECONDS + 30,
            )
    finally:
        await keysvc.stop()
        leak_watch.lines.extend(keysvc.lines)

    conn = await asyncpg.connect(database_url)
    try:
        rotations = await conn.fetchval(
            "SELECT count(*) FROM events WHERE kind = 'key.activated'"
        )
    finally:
        await conn.close()

    total = sum(outcomes.values())
    rate = total / SECONDS
    warm = [rss for at, rss in samples if at >= 15]
    growth = warm[-1] - warm[0]
    print(
        f"soak: {total} requests ({rate:.0f}/s), outcomes {outcomes}, "
        f"{rotations} rotations, RSS {warm[0] >> 20}..{warm[-1] >> 20} MiB"
    )
    assert set(outcomes) <= {200, 304}, outcomes
    assert rate >= 1000
    assert rotations >= CLIENTS * 5
    assert growth < 16 * 1024 * 1024, [s >> 20 for _, s in samples]
