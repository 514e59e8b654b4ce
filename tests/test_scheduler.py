"""The scheduler and its jobs, in one process over the real PostgreSQL.

Time is moved by shifting a client's key timestamps back in the database,
which is the clock every job reads; the jobs are run once each through the
same wrapper a tick uses, so their metrics and failure handling are tested
too. What needs several processes is in test_replicas.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from jwcrypto import jwk
from prometheus_client.parser import text_string_to_metric_families

from keysvc.errors import ConfigError
from keysvc.http.app import create_app
from keysvc.http.appkeys import (
    GENERATOR,
    LIFECYCLE,
    METRICS,
    SCHEDULER,
    STATUS,
    STORE,
)
from keysvc.jobs import register_jobs
from keysvc.keys import KeySpec
from keysvc.metrics import Metrics
from keysvc.scheduler import Scheduler
from keysvc.settings import Settings
from keysvc.store import Tx

BATCH = 4
LEASE_SECONDS = 1


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return replace(
        settings,
        rotation_batch=BATCH,
        rotation_concurrency=2,
        rotation_lease_seconds=LEASE_SECONDS,
        expired_key_retention_seconds=3600,
    )


@pytest.fixture
async def jobs(server: Any, app: web.Application, settings: Settings) -> Scheduler:
    """keysvc's jobs on the test server's resources, run only when a test says."""
    scheduler = Scheduler(app[METRICS])
    register_jobs(
        scheduler,
        lifecycle=app[LIFECYCLE],
        generator=app[GENERATOR],
        metrics=app[METRICS],
        settings=settings,
    )
    return scheduler


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


async def run(jobs: Scheduler, name: str) -> None:
    assert await asyncio.wait_for(jobs.run_now(name), 30), f"job {name} failed"


async def shift_back(db: asyncpg.Connection, client_id: str, seconds: float) -> None:
    """Make every timestamp of a client's keys ``seconds`` older."""
    await db.execute(
        """
        UPDATE keys SET
            created_at = created_at - make_interval(secs => $2),
            published_at = published_at - make_interval(secs => $2),
            activated_at = activated_at - make_interval(secs => $2),
            retired_at = retired_at - make_interval(secs => $2),
            ended_at = ended_at - make_interval(secs => $2)
        WHERE client_id = $1
        """,
        client_id,
        seconds,
    )


async def states(db: asyncpg.Connection, client_id: str) -> dict[str, str]:
    rows = await db.fetch("SELECT kid, state FROM keys WHERE client_id = $1", client_id)
    return {row["kid"]: row["state"] for row in rows}


async def activations(db: asyncpg.Connection, client_id: str) -> list[str]:
    rows = await db.fetch(
        "SELECT detail->>'trigger' AS trigger FROM events"
        " WHERE client_id = $1 AND kind = 'key.activated' ORDER BY event_id",
        client_id,
    )
    return [row["trigger"] for row in rows]


def sample(app: web.Application, name: str, **labels: str) -> float:
    value = app[METRICS].registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def jwks_kids(http: aiohttp.ClientSession, client_id: str) -> list[str]:
    response = await http.get(f"/clients/{client_id}/jwks.json")
    assert response.status == 200
    return [k["kid"] for k in (await response.json())["keys"]]


# -- rotation ------------------------------------------------------------------


async def test_due_client_is_rotated_once_and_its_jwks_follows(
    http, create_client, db, jobs, app
):
    created = await create_client(
        "due", rotation_period="1h", prepublish_period="10m", grace_period="1h"
    )
    old_active, old_next = created["active"]["kid"], created["next"]["kid"]
    assert await jwks_kids(http, "due") == [old_active, old_next]
    await shift_back(db, "due", 3600)

    await run(jobs, "rotate")
    await run(jobs, "rotate")

    after = await states(db, "due")
    fresh = [kid for kid, state in after.items() if state == "next"]
    assert after[old_next] == "active"
    assert after[old_active] == "retired"
    assert len(fresh) == 1 and fresh[0] not in (old_active, old_next)
    assert await activations(db, "due") == ["scheduled"]
    assert await jwks_kids(http, "due") == [old_next, fresh[0], old_active]
    assert sample(app, "keysvc_rotations_total", trigger="scheduled") == 1
    claim = await db.fetchval(
        "SELECT rotation_claimed_until FROM clients WHERE client_id = 'due'"
    )
    assert claim is None


async def test_client_whose_active_key_is_young_is_not_rotated(create_client, db, jobs):
    created = await create_client("young", rotation_period="1h", prepublish_period=0)
    await shift_back(db, "young", 3500)

    await run(jobs, "rotate")

    assert await states(db, "young") == {
        created["active"]["kid"]: "active",
        created["next"]["kid"]: "next",
    }


async def test_rotation_waits_until_the_next_key_was_published_for_prepublish(
    http, create_client, db, jobs
):
    created = await create_client(
        "fresh-next", rotation_period="1h", prepublish_period="30m"
    )
    await shift_back(db, "fresh-next", 7200)
    # A revoked next key was replaced a minute ago: its successor is young.
    replaced = await http.post(
        f"/clients/fresh-next/keys/{created['next']['kid']}/revoke",
        headers=auth(created["client_token"]),
    )
    assert replaced.status == 200

    await run(jobs, "rotate")
    young = await states(db, "fresh-next")
    await db.execute(
        "UPDATE keys SET published_at = published_at - interval '30 minutes'"
        " WHERE client_id = 'fresh-next' AND state = 'next'"
    )
    await run(jobs, "rotate")

    assert young[created["active"]["kid"]] == "active"
    assert await activations(db, "fresh-next") == ["scheduled"]


async def test_many_due_clients_are_rotated_in_batches_without_locks_during_keygen(
    create_client, db, jobs, app, monkeypatch
):
    """While a batch's keys are made, none of its rows is locked, and the
    claim that leased them has committed (the previous batch may be
    committing meanwhile: that overlap is the point)."""
    names = [f"mass-{i}" for i in range(3 * BATCH + 1)]
    for name in names:
        await create_client(name, rotation_period="1h", prepublish_period="1h")
    await db.execute(
        "UPDATE keys SET published_at = published_at - interval '2 hours',"
        " activated_at = activated_at - interval '2 hours'"
    )
    claims: list[list[str]] = []
    real_claim = Tx.claim_due_rotations

    async def recorded_claim(self: Tx, **kwargs: Any) -> list[Any]:
        claimed = await real_claim(self, **kwargs)
        claims.append([c.client_id for c in claimed])
        return claimed

    monkeypatch.setattr(Tx, "claim_due_rotations", recorded_claim)
    generator = app[GENERATOR]
    real_generate_many = generator.generate_many
    seen: list[tuple[int, list[str], int]] = []

    async def watched(specs):
        batch = claims[-1]
        # NOWAIT fails at once on a row another transaction holds; the
        # lease is visible only if its claim committed. The test's own locks
        # end with its transaction, before the keys are made.
        async with db.transaction():
            leased = await db.fetchval(
                "SELECT count(*) FROM (SELECT 1 FROM clients"
                " WHERE client_id = ANY($1::text[]) AND rotation_claimed_until > now()"
                " FOR UPDATE NOWAIT) AS unlocked",
                batch,
            )
        seen.append((len(specs), batch, leased))
        return await real_generate_many(specs)

    generator.generate_many = watched  # type: ignore[method-assign]
    try:
        await run(jobs, "rotate")
    finally:
        del generator.generate_many

    assert [size for size, _, _ in seen] == [BATCH, BATCH, BATCH, 1]
    assert all(len(batch) == size == leased for size, batch, leased in seen), seen
    assert sorted(c for _, batch, _ in seen for c in batch) == sorted(names)
    counts = await db.fetch(
        "SELECT client_id, count(*) AS n FROM events"
        " WHERE kind = 'key.activated' GROUP BY client_id"
    )
    assert {row["client_id"]: row["n"] for row in counts} == dict.fromkeys(names, 1)


async def test_a_batch_claimed_ahead_is_given_back_when_the_run_stops_early(
    create_client, db, jobs, app
):
    """The run stops when a batch turns out not due; the batch it had
    already claimed (and whose keys it made meanwhile) is released at once,
    not left leased until the lease runs out."""
    names = [f"ahead-{i}" for i in range(2 * BATCH)]
    for name in names:
        await create_client(name, rotation_period="1h", prepublish_period="1h")
    await shift_back_all(db, 7200)
    generator = app[GENERATOR]
    real_generate_many = generator.generate_many
    calls = 0

    async def first_batch_changes_policy(specs):
        nonlocal calls
        calls += 1
        made = await real_generate_many(specs)
        if calls == 1:
            # The keys just made no longer fit: this batch is not due now.
            await db.execute(
                "UPDATE clients SET alg = 'EdDSA' WHERE rotation_claimed_until"
                " IS NOT NULL"
            )
        return made

    generator.generate_many = first_batch_changes_policy  # type: ignore[method-assign]
    try:
        await run(jobs, "rotate")
    finally:
        del generator.generate_many

    assert calls == 2  # the second batch was claimed and made ahead
    leased = await db.fetchval(
        "SELECT count(*) FROM clients WHERE rotation_claimed_until IS NOT NULL"
    )
    rotated = await db.fetchval("SELECT count(*) FROM keys WHERE state = 'retired'")
    assert (leased, rotated) == (0, 0)

    await run(jobs, "rotate")  # nothing waits for a lease to run out

    rotated = await db.fetchval("SELECT count(*) FROM keys WHERE state = 'retired'")
    assert rotated == 2 * BATCH


async def test_a_client_the_database_refuses_fails_alone_and_keeps_its_keys(
    create_client, db, jobs
):
    """One refused row sends its batch down the client-at-a-time path."""
    names = [f"batch-{i}" for i in range(BATCH)]
    for name in names:
        await create_client(name, rotation_period="1h", prepublish_period="1h")
    await shift_back_all(db, 7200)
    before = await db.fetch(
        "SELECT kid, state FROM keys WHERE client_id = 'batch-2' ORDER BY kid"
    )
    # A stand-in for any per-row refusal (a constraint, a full disk page).
    await db.execute(
        """
        CREATE FUNCTION refuse_batch_2() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.client_id = 'batch-2' THEN
                RAISE EXCEPTION 'refused for the test';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER refuse_batch_2 BEFORE INSERT ON keys
            FOR EACH ROW EXECUTE FUNCTION refuse_batch_2();
        """
    )

    assert not await jobs.run_now("rotate")  # the job reports the failure

    retired = await db.fetch(
        "SELECT client_id FROM keys WHERE state = 'retired' ORDER BY client_id"
    )
    assert [r["client_id"] for r in retired] == [n for n in names if n != "batch-2"]
    after = await db.fetch(
        "SELECT kid, state FROM keys WHERE client_id = 'batch-2' ORDER BY kid"
    )
    assert after == before
    events = await db.fetchval(
        "SELECT count(*) FROM events WHERE client_id = 'batch-2'"
        " AND kind IN ('key.activated', 'key.retired', 'key.generated')"
        " AND actor = 'scheduler'"
    )
    assert events == 0


@pytest.mark.slow
async def test_mass_rotation_keeps_the_event_loop_responsive(
    http, admin, create_client, db, jobs
):
    for i in range(2 * BATCH):
        await create_client(f"rsa-{i}", rotation_period="1h", prepublish_period="1h")
        # The fresh next keys of the rotation will be RSA-3072, slow to make.
        patched = await http.patch(
            f"/clients/rsa-{i}", json={"alg": "RS256", "key_size": 3072}, headers=admin
        )
        assert patched.status == 200
    await shift_back_all(db, 7200)
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    watcher = asyncio.create_task(ticker())
    try:
        await run(jobs, "rotate")
    finally:
        done.set()
        await asyncio.wait_for(watcher, 5)

    rotated = await db.fetchval(
        "SELECT count(*) FROM events WHERE kind = 'key.activated'"
    )
    fresh = await db.fetchval(
        "SELECT count(*) FROM keys WHERE state = 'next' AND alg = 'RS256'"
    )
    assert rotated == fresh == 2 * BATCH
    # RSA-3072 takes ~0.2-1 s a key: made on the loop, it would show here.
    assert max(gaps) < 0.15, max(gaps)


async def shift_back_all(db: asyncpg.Connection, seconds: float) -> None:
    for row in await db.fetch("SELECT client_id FROM clients"):
        await shift_back(db, row["client_id"], seconds)


async def test_a_claim_left_by_a_dead_replica_is_taken_again_when_its_lease_ends(
    create_client, db, jobs, app
):
    await create_client("orphan", rotation_period="1h", prepublish_period="1h")
    await shift_back(db, "orphan", 7200)
    # What a replica killed between its claim and its rotations leaves behind.
    async with app[STORE].transaction("claim") as tx:
        claimed = await tx.claim_due_rotations(
            limit=10, lease_seconds=LEASE_SECONDS, owner="dead:1"
        )
    assert [c.client_id for c in claimed] == ["orphan"]
    owner = await db.fetchval(
        "SELECT rotation_claimed_by FROM clients WHERE client_id = 'orphan'"
    )
    assert owner == "dead:1"

    await run(jobs, "rotate")
    while_leased = await activations(db, "orphan")
    await asyncio.sleep(LEASE_SECONDS + 0.1)
    await run(jobs, "rotate")

    assert while_leased == []
    assert await activations(db, "orphan") == ["scheduled"]


async def test_a_key_made_for_an_old_policy_is_not_used_after_the_policy_changed(
    http, admin, create_client, db, app
):
    await create_client(
        "changed", alg="ES256", rotation_period="1h", prepublish_period="1h"
    )
    await shift_back(db, "changed", 7200)
    async with app[STORE].transaction("claim") as tx:
        await tx.claim_due_rotations(limit=10, lease_seconds=60, owner="t:1")
    stale_spec = KeySpec("ES256", None)
    stale_key = await app[GENERATOR].generate(stale_spec)
    patched = await http.patch("/clients/changed", json={"alg": "ES384"}, headers=admin)
    assert patched.status == 200

    rotated = await app[LIFECYCLE].rotate_if_due(
        "changed", stale_spec, stale_key, actor="test"
    )

    assert rotated is False
    assert stale_key.kid not in await states(db, "changed")
    claim = await db.fetchval(
        "SELECT rotation_claimed_until FROM clients WHERE client_id = 'changed'"
    )
    assert claim is None


async def test_imported_and_remote_clients_are_never_rotated_by_the_scheduler(
    http, create_client, db, jobs
):
    created = await create_client(
        "byok", key_source="imported", rotation_period=60, prepublish_period=0
    )
    key = jwk.JWK.generate(kty="EC", crv="P-256").export_public(as_dict=True)
    imported = await http.post(
        "/clients/byok/keys",
        json={"jwk": key},
        headers=auth(created["client_token"]),
    )
    assert imported.status == 201
    await shift_back(db, "byok", 7200)

    await run(jobs, "rotate")

    assert list((await states(db, "byok")).values()) == ["active"]


# -- the other jobs ------------------------------------------------------------


async def test_imported_client_overdue_is_reported_once_per_active_key(
    http, create_client, db, jobs, app, caplog
):
    created = await create_client(
        "late", key_source="imported", rotation_period=60, prepublish_period=0
    )
    key = jwk.JWK.generate(kty="EC", crv="P-256").export_public(as_dict=True)
    imported = await http.post(
        "/clients/late/keys", json={"jwk": key}, headers=auth(created["client_token"])
    )
    kid = (await imported.json())["key"]["kid"]
    await shift_back(db, "late", 600)

    with caplog.at_level(logging.WARNING, logger="keysvc.jobs"):
        await run(jobs, "report_overdue")
        await run(jobs, "report_overdue")
    await run(jobs, "gauges")

    reports = await db.fetch(
        "SELECT kid, detail FROM events WHERE kind = 'key.rotation_overdue'"
    )
    warnings = [r for r in caplog.records if "overdue" in r.getMessage()]
    assert [
        (r["kid"], json.loads(r["detail"])["overdue_seconds"] >= 539) for r in reports
    ] == [(kid, True)]
    assert len(warnings) == 1 and "late" in warnings[0].getMessage()
    assert sample(app, "keysvc_clients_rotation_overdue") == 1


async def test_retired_key_expires_after_grace_and_loses_its_private_part(
    http, create_client, db, jobs
):
    created = await create_client(
        "ends", rotation_period="1h", prepublish_period="1h", grace_period="10m"
    )
    rotated = await http.post(
        "/clients/ends/keys/rotate",
        json={"force": True},
        headers=auth(created["client_token"]),
    )
    retired = (await rotated.json())["retired"]["kid"]

    await run(jobs, "expire")
    within_grace = await jwks_kids(http, "ends")
    await db.execute(
        "UPDATE keys SET retired_at = retired_at - interval '10 minutes'"
        " WHERE client_id = 'ends' AND state = 'retired'"
    )
    await run(jobs, "expire")

    row = await db.fetchrow(
        "SELECT state, sealed, kek_id, ended_at FROM keys WHERE kid = $1", retired
    )
    assert retired in within_grace
    assert retired not in await jwks_kids(http, "ends")
    assert (row["state"], row["sealed"], row["kek_id"]) == ("expired", None, None)
    assert row["ended_at"] is not None
    expired_events = await db.fetchval(
        "SELECT count(*) FROM events WHERE kind = 'key.expired' AND kid = $1", retired
    )
    assert expired_events == 1


async def test_purge_deletes_spent_jtis_and_old_expired_keys_but_keeps_revoked(
    http, create_client, db, jobs
):
    created = await create_client(
        "old", rotation_period="1h", prepublish_period="1h", grace_period=0
    )
    token = created["client_token"]
    first = created["active"]["kid"]
    await http.post(
        "/clients/old/keys/rotate", json={"force": True}, headers=auth(token)
    )
    await run(jobs, "expire")
    revoked = created["next"]["kid"]
    second = await http.post(f"/clients/old/keys/{revoked}/revoke", headers=auth(token))
    assert second.status == 200
    await shift_back(db, "old", 7200)
    await db.executemany(
        "INSERT INTO used_jtis (client_id, jti, expires_at)"
        " VALUES ('old', $1, now() + make_interval(secs => $2))",
        [("spent-1", -60), ("spent-2", -1), ("live", 600)],
    )

    await run(jobs, "purge")

    jtis = await db.fetch("SELECT jti FROM used_jtis")
    assert [row["jti"] for row in jtis] == ["live"]
    remaining = await states(db, "old")
    assert first not in remaining
    assert remaining[revoked] == "revoked"


async def test_gauges_are_refreshed_by_the_job_and_scraped_without_the_database(
    http, create_client, db, jobs, app
):
    await create_client("g1", rotation_period="1h", prepublish_period="1h")
    await create_client("g2", rotation_period="1h", prepublish_period="1h")
    await shift_back(db, "g1", 4000)

    await run(jobs, "gauges")
    await db.execute("DELETE FROM clients")
    scraped = await (await http.get("/metrics")).text()

    assert scraped_value(scraped, "keysvc_keys", state="active") == 2
    assert scraped_value(scraped, "keysvc_keys", state="next") == 2
    assert scraped_value(scraped, "keysvc_keys", state="expired") == 0
    assert scraped_value(scraped, "keysvc_clients_rotation_overdue") == 1
    age = scraped_value(scraped, "keysvc_oldest_active_key_age_seconds")
    assert age is not None and 4000 <= age < 4100
    runs_done = scraped_value(
        scraped, "keysvc_scheduler_runs_total", task="gauges", outcome="success"
    )
    assert runs_done == 1


def scraped_value(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return float(found.value)
    return None


# -- the scheduler itself ------------------------------------------------------


async def wait_until(predicate) -> None:
    """Poll a condition for up to five seconds."""
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in five seconds")


def runs(metrics: Metrics, job: str, outcome: str) -> float:
    value = metrics.registry.get_sample_value(
        "keysvc_scheduler_runs_total", {"task": job, "outcome": outcome}
    )
    return 0.0 if value is None else value


async def test_a_failing_job_is_counted_and_logged_and_the_ticks_go_on(caplog):
    metrics = Metrics()
    scheduler = Scheduler(metrics)
    calls = {"broken": 0, "fine": 0}

    async def broken() -> None:
        calls["broken"] += 1
        raise ValueError("secret-looking text that must not be logged")

    async def fine() -> None:
        calls["fine"] += 1

    scheduler.add_job("broken", broken, 0.05)
    scheduler.add_job("fine", fine, 0.05)
    with caplog.at_level(logging.WARNING, logger="keysvc.scheduler"):
        scheduler.start()
        try:
            await wait_until(lambda: calls["broken"] >= 3 and calls["fine"] >= 3)
        finally:
            await scheduler.shutdown(5)

    assert runs(metrics, "broken", "error") >= 3
    assert runs(metrics, "fine", "success") >= 3
    assert (
        metrics.registry.get_sample_value(
            "keysvc_scheduler_last_success_timestamp_seconds", {"task": "broken"}
        )
        is None
    )
    assert metrics.registry.get_sample_value(
        "keysvc_scheduler_last_success_timestamp_seconds", {"task": "fine"}
    ) == pytest.approx(time.time(), abs=5)
    failures = [r for r in caplog.records if "broken failed" in r.getMessage()]
    assert failures and all("ValueError" in r.getMessage() for r in failures)
    assert not any("secret-looking" in r.getMessage() for r in caplog.records)


async def test_ticks_coalesce_while_a_job_runs_and_never_overlap():
    scheduler = Scheduler(Metrics())
    running = 0
    most = 0
    finished = 0

    async def slow() -> None:
        nonlocal running, most, finished
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.2)
        running -= 1
        finished += 1

    scheduler.add_job("slow", slow, 0.02)
    scheduler.start()
    try:
        await wait_until(lambda: finished >= 2)
    finally:
        await scheduler.shutdown(5)

    assert most == 1


async def test_shutdown_lets_the_running_job_finish_its_step_then_stops():
    scheduler = Scheduler(Metrics())
    started = asyncio.Event()
    steps: list[str] = []

    async def stepwise() -> None:
        started.set()
        for step in range(10):
            if scheduler.stopping:
                return
            await asyncio.sleep(0.1)
            steps.append(f"step {step} done")

    scheduler.add_job("stepwise", stepwise, 3600)
    scheduler.start()
    await asyncio.wait_for(started.wait(), 5)
    await asyncio.sleep(0.15)
    await asyncio.wait_for(scheduler.shutdown(5), 10)

    assert steps == ["step 0 done", "step 1 done"]
    assert scheduler.stopping
    assert await scheduler.run_now("stepwise") is False


async def test_shutdown_cancels_a_job_that_outlives_the_timeout():
    metrics = Metrics()
    scheduler = Scheduler(metrics)
    started = asyncio.Event()

    async def stuck() -> None:
        started.set()
        await asyncio.sleep(3600)

    scheduler.add_job("stuck", stuck, 3600)
    scheduler.start()
    await asyncio.wait_for(started.wait(), 5)
    began = time.monotonic()
    await asyncio.wait_for(scheduler.shutdown(0.2), 10)

    assert time.monotonic() - began < 2
    await wait_until(lambda: runs(metrics, "stuck", "cancelled") == 1)


async def test_a_job_name_is_registered_once():
    scheduler = Scheduler(Metrics())

    async def job() -> None:
        return None

    scheduler.add_job("once", job, 1)

    with pytest.raises(ValueError, match="once"):
        scheduler.add_job("once", job, 1)


async def test_serve_with_the_scheduler_on_runs_keysvc_jobs_on_its_clock(
    settings, generator, db, create_client
):
    """A second app on the same database, scheduler on, rotates a due client."""
    await create_client("ticked", rotation_period="1h", prepublish_period="1h")
    await shift_back(db, "ticked", 7200)
    ticking = create_app(
        replace(settings, scheduler=True, scheduler_interval_seconds=0.1),
        generator=generator,
    )
    server = TestServer(ticking, host="127.0.0.1")
    await asyncio.wait_for(server.start_server(), 30)
    try:
        deadline = time.monotonic() + 10
        while await activations(db, "ticked") == []:
            assert time.monotonic() < deadline, "no scheduled rotation"
            await asyncio.sleep(0.05)
        names = ticking[SCHEDULER].job_names
    finally:
        await asyncio.wait_for(server.close(), 30)

    assert await activations(db, "ticked") == ["scheduled"]
    assert {"expire", "gauges", "purge", "report_overdue", "rotate"} <= set(names)
    assert ticking[SCHEDULER].stopping


async def test_serve_with_the_scheduler_off_runs_no_job(app, server):
    assert not app[SCHEDULER].running
    assert "rotate" not in app[SCHEDULER].job_names


# -- what caches may keep ------------------------------------------------------


@pytest.mark.parametrize("prepublish", [0, 1, 90, 3600, 2 * 86400])
async def test_jwks_cache_lifetime_fits_within_the_prepublish_period(
    http, create_client, prepublish
):
    """Every honest cache refetches before a next key, published that long, signs."""
    await create_client(
        f"cc-{prepublish}", rotation_period=2 * 86400, prepublish_period=prepublish
    )
    headers = set()
    for _ in range(20):
        response = await http.get(f"/clients/cc-{prepublish}/jwks.json")
        headers.add(response.headers["Cache-Control"])

    for header in headers:
        directives = dict(
            part.strip().partition("=")[::2] for part in header.split(",")
        )
        max_age = int(directives["max-age"])
        revalidate = int(directives["stale-while-revalidate"])
        assert "public" in directives
        assert 0 <= max_age <= prepublish
        assert max_age + revalidate <= prepublish


async def test_a_cached_jwks_lives_no_longer_than_the_cache_ttl(
    settings, generator, db, create_client
):
    """A notification lost for good costs at most KEYSVC_JWKS_CACHE_TTL."""
    created = await create_client("ttl", rotation_period="1h", prepublish_period=0)
    short = create_app(
        replace(settings, jwks_cache_ttl_seconds=0.5), generator=generator
    )
    server = TestServer(short, host="127.0.0.1")
    await asyncio.wait_for(server.start_server(), 30)
    try:
        async with aiohttp.ClientSession(
            base_url=str(server.make_url("/")), timeout=aiohttp.ClientTimeout(total=10)
        ) as http:
            before = await jwks_kids(http, "ttl")
            # Behind the listener's back: no NOTIFY is sent for this.
            await db.execute(
                "UPDATE keys SET state = 'revoked', ended_at = now(), sealed = NULL,"
                " kek_id = NULL WHERE client_id = 'ttl' AND state = 'next'"
            )
            cached = await jwks_kids(http, "ttl")
            await asyncio.sleep(0.6)
            after = await jwks_kids(http, "ttl")
    finally:
        await asyncio.wait_for(server.close(), 30)

    assert before == cached == [created["active"]["kid"], created["next"]["kid"]]
    assert after == [created["active"]["kid"]]


@pytest.mark.parametrize(
    "variable", ["KEYSVC_ROTATION_BATCH", "KEYSVC_ROTATION_CONCURRENCY"]
)
def test_a_zero_batch_or_concurrency_stops_the_start_naming_the_variable(variable):
    env = {"KEYSVC_DATA_DIR": "/nonexistent", variable: "0"}

    with pytest.raises(ConfigError, match=variable):
        Settings.from_env(env)


def test_rotation_settings_are_read_from_the_environment():
    settings = Settings.from_env(
        {
            "KEYSVC_ROTATION_BATCH": "250",
            "KEYSVC_ROTATION_CONCURRENCY": "8",
            "KEYSVC_ROTATION_LEASE": "5m",
            "KEYSVC_EXPIRED_KEY_RETENTION": "0",
        }
    )

    assert settings.rotation_batch == 250
    assert settings.rotation_concurrency == 8
    assert settings.rotation_lease_seconds == 300
    assert settings.expired_key_retention_seconds == 0


async def test_a_replica_serves_only_once_its_listener_is_in_place(app, server, db):
    listeners = await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE application_name = 'keysvc-listener' AND datname = current_database()"
    )

    assert app[STATUS].listening
    assert listeners == 1
