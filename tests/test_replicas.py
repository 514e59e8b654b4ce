"""Several `keysvc serve` processes over one PostgreSQL, as in production.

Each replica is a real subprocess on a loopback port, with its scheduler on
a short interval and clients whose periods are seconds long. The tests read
the database for what happened (keys and the audit trail) and fetch every
replica's JWKS over HTTP for what verifiers see. Every replica's stderr is
kept: each line must be JSON and none may hold a secret.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from harness import KeysvcProcess as Replica

from keysvc.sealing import Kek, format_kek

pytestmark = pytest.mark.slow

ADMIN = "ksad_" + "r" * 43
INTERVAL = 0.2
LEASE_SECONDS = 2


class Cluster:
    """The replicas of one test, an HTTP client, and the secrets to look for."""

    def __init__(self, http: aiohttp.ClientSession, env: dict[str, str]) -> None:
        self.http = http
        self.env = env
        self.replicas: list[Replica] = []
        self.secrets = {ADMIN, env["KEYSVC_KEKS"].split(":", 1)[1]}

    async def start(self, count: int, **env: str) -> list[Replica]:
        started = [
            Replica({**self.env, **env}, name=f"replica-{len(self.replicas) + i}")
            for i in range(count)
        ]
        self.replicas.extend(started)
        for replica in started:
            await replica.start()
        await asyncio.gather(*(r.ready(self.http) for r in started))
        return started

    async def create(self, via: Replica, client_id: str, **fields: Any) -> dict:
        response = await self.http.post(
            f"{via.base}/clients",
            json={"client_id": client_id, **fields},
            headers={"Authorization": f"Bearer {ADMIN}"},
        )
        body = await response.json()
        assert response.status == 201, body
        self.secrets.add(body["client_token"])
        return dict(body)

    async def jwks(self, replica: Replica, client_id: str) -> tuple[str, ...]:
        """The kids a replica publishes for a client, in document order."""
        async with self.http.get(
            f"{replica.base}/clients/{client_id}/jwks.json"
        ) as response:
            assert response.status == 200, await response.text()
            body = await response.json()
        return tuple(key["kid"] for key in body["keys"])

    def check_logs(self) -> None:
        """Every line is one JSON object, and no secret is in any of them."""
        for replica in self.replicas:
            for line in replica.lines:
                entry = json.loads(line)
                assert isinstance(entry, dict) and "message" in entry, line
                for secret in self.secrets:
                    assert secret not in line, f"{replica.name} logged a secret"


@pytest.fixture
async def cluster(
    database_url: str, kek: Kek, tmp_path: Path, leak_watch: Any
) -> AsyncIterator[Cluster]:
    env = {
        "PATH": os.environ["PATH"],
        "KEYSVC_HOST": "127.0.0.1",
        "KEYSVC_DATABASE_URL": database_url,
        "KEYSVC_ADMIN_TOKEN": ADMIN,
        "KEYSVC_KEKS": format_kek(kek),
        "KEYSVC_DATA_DIR": str(tmp_path),
        "KEYSVC_LOG_FORMAT": "json",
        "KEYSVC_LOG_LEVEL": "INFO",
        "KEYSVC_KEYGEN_WORKERS": "1",
        "KEYSVC_DB_POOL_MIN": "1",
        "KEYSVC_DB_POOL_MAX": "6",
        "KEYSVC_SCHEDULER_INTERVAL": str(INTERVAL),
        "KEYSVC_ROTATION_LEASE": str(LEASE_SECONDS),
        "KEYSVC_SHUTDOWN_TIMEOUT": "5",
    }
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
    group = Cluster(http, env)
    try:
        yield group
    finally:
        await http.close()
        await asyncio.gather(
            *(r.stop() for r in group.replicas), return_exceptions=True
        )
        leak_watch.add(*group.secrets)
        for replica in group.replicas:
            leak_watch.lines.extend(replica.lines)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


async def poll(
    check: Callable[[], Awaitable[bool]], *, seconds: float, every: float = 0.02
) -> float:
    """Await ``check`` until true; return the seconds it took, fail past ``seconds``."""
    began = time.monotonic()
    while not await check():
        if time.monotonic() - began > seconds:
            raise AssertionError(f"not within {seconds} s")
        await asyncio.sleep(every)
    return time.monotonic() - began


# -- exactly once, the same everywhere -------------------------------------------


async def test_three_replicas_rotate_each_key_once_and_publish_the_same_jwks(
    cluster, db
):
    replicas = await cluster.start(3)
    clients = ["tri-a", "tri-b", "tri-c"]
    for client_id in clients:
        await cluster.create(
            replicas[0],
            client_id,
            rotation_period=2,
            prepublish_period=1,
            grace_period=2,
        )
    seen: dict[str, dict[str, list[datetime]]] = defaultdict(lambda: defaultdict(list))
    disagreeing_since: dict[str, float] = {}
    longest_disagreement = 0.0

    # Watch like three verifiers would, through three rotations.
    deadline = time.monotonic() + 6.5
    while time.monotonic() < deadline:
        for client_id in clients:
            documents = await asyncio.gather(
                *(cluster.jwks(r, client_id) for r in replicas)
            )
            now = time.monotonic()
            at = datetime.now(UTC)
            for kids in documents:
                for kid in kids:
                    seen[client_id][kid].append(at)
            if len(set(documents)) == 1:
                disagreeing_since.pop(client_id, None)
            else:
                began = disagreeing_since.setdefault(client_id, now)
                longest_disagreement = max(longest_disagreement, now - began)
        await asyncio.sleep(0.05)
    cache_control = (
        await cluster.http.get(f"{replicas[1].base}/clients/tri-a/jwks.json")
    ).headers["Cache-Control"]

    assert longest_disagreement < 1.0
    assert "max-age=0," in cache_control
    for client_id in clients:
        keys = await db.fetch(
            "SELECT kid, state, published_at, activated_at, retired_at, ended_at,"
            " sealed FROM keys WHERE client_id = $1 ORDER BY created_at",
            client_id,
        )
        events = await db.fetch(
            "SELECT kind, kid, detail FROM events WHERE client_id = $1"
            " ORDER BY event_id",
            client_id,
        )
        promoted = [e["kid"] for e in events if e["kind"] == "key.activated"]
        generated = [e["kid"] for e in events if e["kind"] == "key.generated"]
        by_kid = {k["kid"]: k for k in keys}
        states = [k["state"] for k in keys]

        # Each rotation once: one activation per key, a period apart.
        assert len(promoted) >= 2
        assert len(promoted) == len(set(promoted))
        assert sorted(generated) == sorted(by_kid) and len(keys) == 2 + len(promoted)
        assert all(
            json.loads(e["detail"])["trigger"] == "scheduled"
            for e in events
            if e["kind"] == "key.activated"
        )
        activated = sorted(by_kid[kid]["activated_at"] for kid in promoted)
        first = min(k["activated_at"] for k in keys if k["activated_at"])
        gaps = [b - a for a, b in zip([first, *activated], activated, strict=False)]
        assert all(gap >= timedelta(seconds=2) for gap in gaps), gaps
        assert states.count("active") == 1 and states.count("next") == 1

        for kid in promoted:
            key = by_kid[kid]
            # Published as next for the prepublish period before it signed,
            # and a verifier polling the JWKS saw it well before.
            assert key["activated_at"] - key["published_at"] >= timedelta(seconds=1)
            assert min(seen[client_id][kid]) <= key["activated_at"] - timedelta(
                seconds=0.5
            )
        for key in keys:
            if key["state"] != "expired":
                continue
            # Published through its grace period, then gone, private part too.
            grace_end = key["retired_at"] + timedelta(seconds=2)
            assert key["ended_at"] >= grace_end
            assert key["sealed"] is None
            assert max(seen[client_id][key["kid"]]) >= grace_end - timedelta(seconds=1)
            assert max(seen[client_id][key["kid"]]) <= key["ended_at"] + timedelta(
                seconds=1
            )
        assert any(k["state"] == "expired" for k in keys)
    cluster.check_logs()


async def test_a_revoke_sent_to_one_replica_is_gone_from_the_others_within_a_second(
    cluster,
):
    first, second = await cluster.start(2)
    (serve_only,) = await cluster.start(1, KEYSVC_SCHEDULER="0")
    created = await cluster.create(
        first, "rev", rotation_period="1h", prepublish_period=0, grace_period="1h"
    )
    own = {"Authorization": f"Bearer {created['client_token']}"}
    doomed = created["next"]["kid"]
    for replica in (first, second, serve_only):
        assert doomed in await cluster.jwks(replica, "rev")

    revoked = await cluster.http.post(
        f"{first.base}/clients/rev/keys/{doomed}/revoke", headers=own
    )
    assert revoked.status == 200

    async def gone() -> bool:
        documents = [await cluster.jwks(r, "rev") for r in (second, serve_only)]
        return all(doomed not in kids for kids in documents)

    assert await poll(gone, seconds=1.0) < 1.0

    # A manual rotation through one replica reaches the others as quickly.
    rotated = await cluster.http.post(
        f"{serve_only.base}/clients/rev/keys/rotate", headers=own
    )
    expected = await cluster.jwks(serve_only, "rev")

    async def everywhere() -> bool:
        documents = [await cluster.jwks(r, "rev") for r in (first, second)]
        return all(kids == expected for kids in documents)

    assert rotated.status == 201
    assert await poll(everywhere, seconds=1.0) < 1.0
    cluster.check_logs()


# -- crashes and lost connections ----------------------------------------------


async def test_a_replica_killed_in_the_middle_of_a_tick_leaves_no_partial_state(
    cluster, db
):
    """The survivors rotate what it had claimed once its leases run out."""
    survivors = await cluster.start(
        2, KEYSVC_SCHEDULER_INTERVAL="0.5", KEYSVC_ROTATION_BATCH="5"
    )
    names = [f"crash-{i}" for i in range(20)]
    for name in names:
        await cluster.create(
            survivors[0], name, rotation_period="1h", prepublish_period="1h"
        )
        # RSA keys are slow to make: the victim is caught holding its claims.
        patched = await cluster.http.patch(
            f"{survivors[0].base}/clients/{name}",
            json={"alg": "RS256", "key_size": 2048},
            headers={"Authorization": f"Bearer {ADMIN}"},
        )
        assert patched.status == 200
    (victim,) = await cluster.start(
        1,
        KEYSVC_SCHEDULER_INTERVAL="0.05",
        KEYSVC_ROTATION_BATCH="5",
        KEYSVC_ROTATION_CONCURRENCY="1",
    )
    owner = f"{socket.gethostname()}:{victim.pid}"

    await db.execute(
        "UPDATE keys SET published_at = published_at - interval '2 hours',"
        " activated_at = activated_at - interval '2 hours'"
    )

    async def victim_holds_claims() -> bool:
        held = await db.fetchval(
            "SELECT count(*) FROM clients WHERE rotation_claimed_by = $1"
            " AND rotation_claimed_until > now()",
            owner,
        )
        return bool(held)

    await poll(victim_holds_claims, seconds=10, every=0.005)
    await victim.kill()
    orphaned = {
        row["client_id"]
        for row in await db.fetch(
            "SELECT client_id FROM clients WHERE rotation_claimed_by = $1", owner
        )
    }
    await check_whole_rotations(db, names)

    async def all_rotated() -> bool:
        count = await db.fetchval(
            "SELECT count(DISTINCT client_id) FROM events WHERE kind = 'key.activated'"
        )
        return bool(count == len(names))

    await poll(all_rotated, seconds=LEASE_SECONDS + 15, every=0.1)

    assert orphaned
    await check_whole_rotations(db, names)
    per_client = await db.fetch(
        "SELECT client_id, count(*) AS n FROM events WHERE kind = 'key.activated'"
        " GROUP BY client_id"
    )
    assert {row["client_id"]: row["n"] for row in per_client} == dict.fromkeys(names, 1)
    cluster.check_logs()


async def check_whole_rotations(db: asyncpg.Connection, names: list[str]) -> None:
    """Each client rotated entirely or not at all, each stored key accounted for."""
    for name in names:
        states = sorted(
            row["state"]
            for row in await db.fetch(
                "SELECT state FROM keys WHERE client_id = $1", name
            )
        )
        generated = await db.fetchval(
            "SELECT count(*) FROM events WHERE client_id = $1"
            " AND kind = 'key.generated'",
            name,
        )
        activations = await db.fetchval(
            "SELECT count(*) FROM events WHERE client_id = $1"
            " AND kind = 'key.activated'",
            name,
        )
        expected = ["active", "next", "retired"] if activations else ["active", "next"]
        assert states == expected, (name, states)
        assert generated == len(states)


async def test_after_its_listener_is_cut_a_replica_reconnects_and_drops_its_cache(
    cluster, db
):
    replicas = await cluster.start(2, KEYSVC_SCHEDULER="0")
    created = await cluster.create(
        replicas[0], "cut", rotation_period="1h", prepublish_period=0
    )
    before = (created["active"]["kid"], created["next"]["kid"])
    for replica in replicas:
        assert await cluster.jwks(replica, "cut") == before
    # A change the listeners are never told of: only a dropped cache shows it.
    await db.execute(
        "UPDATE keys SET state = 'revoked', ended_at = now(), sealed = NULL,"
        " kek_id = NULL WHERE client_id = 'cut' AND state = 'next'"
    )
    for replica in replicas:
        assert await cluster.jwks(replica, "cut") == before

    cut = await db.fetch(
        "SELECT pg_terminate_backend(pid) AS done FROM pg_stat_activity"
        " WHERE application_name = 'keysvc-listener'"
        " AND datname = current_database()"
    )
    assert [row["done"] for row in cut] == [True, True]
    unready: set[str] = set()

    async def fresh_everywhere() -> bool:
        for replica in replicas:
            async with cluster.http.get(f"{replica.base}/readyz") as response:
                if response.status == 503:
                    assert (await response.json())["checks"]["listener"] is False
                    unready.add(replica.name)
        documents = [await cluster.jwks(r, "cut") for r in replicas]
        return all(kids == before[:1] for kids in documents)

    await poll(fresh_everywhere, seconds=5)

    for replica in replicas:
        await replica.ready(cluster.http)
        assert any("listener reconnected" in line for line in replica.lines)
    assert unready, "readiness never showed the listener down"
    # The new listening connections carry notifications again.
    deleted = await cluster.http.delete(
        f"{replicas[0].base}/clients/cut",
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    assert deleted.status == 204

    async def notified() -> bool:
        url = f"{replicas[1].base}/clients/cut/jwks.json"
        async with cluster.http.get(url) as response:
            return response.status == 404

    assert await poll(notified, seconds=1.0) < 1.0
    cluster.check_logs()
