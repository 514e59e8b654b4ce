"""Scheduled rotation of many due clients, 1 and 2 replicas, against key
generation alone; and the JWKS p99 while it runs, against the p99 idle.

The due clients are copied into the database in one commit while the
replicas run with a half-second scheduler tick; the clock, the database's,
starts at that commit and stops at the last rotation seen (a retired key's
``retired_at``), so a poll of progress every half second does not blur it.
Their existing
keys are two real key pairs shared by every client (the rotation reads
neither; each client's own fresh ``next`` key is what it makes). Every
replica, its key workers and PostgreSQL share core 0; the p99 probe (an
open-loop GET of one client's cached JWKS, 250 a second: a load well above
what caching authorization servers send, small enough not to be the
rotation's competitor itself) runs on core 1.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from bench import keymaker
from bench.context import Context
from bench.database import BulkKey, jwk_text, load_generated_clients
from bench.load import paced, percentile
from bench.procs import SERVER_CORE, Server
from bench.service import ROOT, Api, migrate, start_keysvc
from bench.stats import Figure, Row, missing
from bench.stats import Target as Goal

logger = logging.getLogger(__name__)

TICK_SECONDS = 0.5
PROBE_RATE = 250.0
POLL_SECONDS = 0.5
IDLE_SECONDS = 2.0
PROBE = "bench-probe"
PREFIX = "rot-"
_RSA_SAMPLE = 200


@dataclass(frozen=True, slots=True)
class Case:
    alg: str
    key_size: int | None
    clients: int

    @property
    def title(self) -> str:
        kind = "RSA-2048" if self.key_size else self.alg
        return f"{self.clients:,} {kind} due clients"


def _pair(alg: str) -> tuple[BulkKey, BulkKey]:
    keys = []
    for _ in range(2):
        jwk = keymaker.published_jwk(keymaker.new_private(alg), alg)
        keys.append(BulkKey(jwk["kid"], alg, jwk_text(jwk)))

    return keys[0], keys[1]


def keygen_rate(case: Case) -> float:
    """Keys a second from keysvc's own pool, pinned like the server."""
    count = min(case.clients, _RSA_SAMPLE) if case.key_size else case.clients
    done = subprocess.run(
        [
            "taskset",
            "-c",
            str(SERVER_CORE),
            sys.executable,
            "-m",
            "bench.keygen_alone",
            case.alg,
            str(case.key_size or "-"),
            str(count),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
        check=True,
    )

    return float(done.stdout.split()[-1])


async def _has_scheduler(api: Api) -> bool:
    """Whether the live service runs scheduler jobs: their runs show on /metrics."""
    for _ in range(12):
        if await api.metric("keysvc_scheduler_runs_total") > 0:
            return True
        await asyncio.sleep(0.5)

    return False


async def _progress(dsn: str) -> tuple[int, datetime | None]:
    """Clients rotated so far, and the database time of the latest rotation."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS n, max(retired_at) AS last FROM keys"
            " WHERE state = 'retired' AND client_id LIKE $1",
            PREFIX + "%",
        )
    finally:
        await conn.close()
    assert row is not None  # an aggregate always answers one row

    return int(row["n"]), row["last"]


async def _db_now(dsn: str) -> datetime:
    conn = await asyncpg.connect(dsn)
    try:
        value: datetime = await conn.fetchval("SELECT clock_timestamp()")
    finally:
        await conn.close()

    return value


async def _clear(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DELETE FROM clients WHERE client_id LIKE $1", PREFIX + "%")
        await conn.execute("DELETE FROM events WHERE client_id LIKE $1", PREFIX + "%")
    finally:
        await conn.close()


@dataclass(frozen=True, slots=True)
class RunResult:
    rate: float
    p99_idle_ms: float
    p99_during_ms: float
    rotated: int
    seconds: float


def _replicas(ctx: Context, dsn: str, count: int) -> tuple[list[Server], str]:
    """Start ``count`` replicas with the scheduler on; the first one's URL."""
    servers: list[Server] = []
    urls = []
    try:
        for n in range(count):
            server, url = start_keysvc(
                f"keysvc-rot{n}",
                dsn,
                ctx.credentials,
                ctx.workdir,
                scheduler=True,
                scheduler_interval=TICK_SECONDS,
                extra_env={
                    "KEYSVC_SHUTDOWN_TIMEOUT": "3",
                    "KEYSVC_SHUTDOWN_DELAY": "0",
                },
            )
            servers.append(server)
            urls.append(url)
    except BaseException:
        for server in servers:
            server.stop()
        raise

    return servers, urls[0]


async def _one_run(
    ctx: Context, dsn: str, case: Case, replicas: int, pair: tuple[BulkKey, BulkKey]
) -> RunResult | None:
    """One mass rotation on fresh replicas; None if they run no scheduler.

    The run is time-boxed: the rate is what was rotated in the window, which
    a mass rotation's steady pace makes a fair figure when it does not finish.
    """
    await _clear(dsn)
    servers, url = _replicas(ctx, dsn, replicas)
    try:
        async with Api(url, ctx.credentials.admin_token) as api:
            if not await _has_scheduler(api):
                return None
            status, _ = await api.call("GET", f"/clients/{PROBE}")
            if status == 404:
                await api.expect(
                    "POST", "/clients", {"client_id": PROBE, "alg": "ES256"}
                )
            await api.jwks(PROBE)
        probe_url = f"{url}/clients/{PROBE}/jwks.json"
        idle = await paced(probe_url, rate=PROBE_RATE, seconds=IDLE_SECONDS)

        ids = [f"{PREFIX}{i:06d}" for i in range(case.clients)]
        await load_generated_clients(
            dsn,
            ids,
            [pair] * case.clients,
            key_size=case.key_size,
            age_seconds=7200,
            rotation_period_seconds=3600,
            prepublish_period_seconds=60,
        )
        started_at = await _db_now(dsn)
        started = time.perf_counter()
        stop = asyncio.Event()
        probe = asyncio.create_task(
            paced(probe_url, rate=PROBE_RATE, seconds=3600, stop=stop)
        )
        try:
            # The clock is the database's: from the load's commit to the
            # transaction of the last rotation seen, so how often progress is
            # polled (rarely: a poll is a scan on the server's core) neither
            # credits nor charges the rate.
            rotated, elapsed = 0, 0.0
            window = ctx.budget.rotation_window * (2.5 if case.key_size else 1)
            while rotated < case.clients:
                if time.perf_counter() - started > window:
                    break
                await asyncio.sleep(POLL_SECONDS)
                rotated, last = await _progress(dsn)
                if last is not None:
                    elapsed = (last - started_at).total_seconds()
        finally:
            stop.set()
            during = await probe
    finally:
        for server in servers:
            server.stop()

    return RunResult(
        rotated / elapsed if rotated and elapsed > 0 else 0.0,
        percentile(idle, 99),
        percentile(during, 99),
        rotated,
        elapsed,
    )


async def _case_runs(
    ctx: Context, case: Case, replicas: int
) -> tuple[Figure, Figure, Figure, list[RunResult]] | None:
    dsn = await ctx.pg.fresh_database("bench_rotation")
    migrate(dsn, ctx.credentials, ctx.workdir)
    pair = _pair(case.alg)
    results = []
    for _ in range(ctx.budget.rotation_runs):
        result = await _one_run(ctx, dsn, case, replicas, pair)
        if result is None:
            return None
        logger.info(
            "%s, %d replica(s): %d rotated in %.1f s (%.0f clients/s), "
            "p99 %.1f ms idle, %.1f ms during",
            case.title,
            replicas,
            result.rotated,
            result.seconds,
            result.rate,
            result.p99_idle_ms,
            result.p99_during_ms,
        )
        results.append(result)

    return (
        Figure.of([r.rate for r in results]),
        Figure.of([r.p99_idle_ms for r in results]),
        Figure.of([r.p99_during_ms for r in results]),
        results,
    )


async def measure(ctx: Context) -> list[Row]:
    budget = ctx.budget
    cases = [
        Case("ES256", None, budget.es256_clients),
        Case("RS256", 2048, budget.rsa_clients),
    ]
    rows: list[Row] = []
    for case in cases:
        ceiling: Figure | None = None
        for replicas in (1, 2):
            title = f"scheduled rotation, {case.title}, {replicas} replica(s)"
            p99_title = f"JWKS p99 during rotation, {case.title}, {replicas} replica(s)"
            figures = await _case_runs(ctx, case, replicas)
            if figures is None:
                rows.append(missing(title, "clients/s", "key generation alone"))
                rows.append(missing(p99_title, "ms", "JWKS p99 idle"))
                continue
            if ceiling is None:
                ceiling = Figure.of(
                    [keygen_rate(case) for _ in range(budget.rotation_runs)]
                )
            rate, idle, during, runs = figures
            done = [f"{r.rotated}/{case.clients} in {r.seconds:.1f} s" for r in runs]
            unfinished = any(r.rotated < case.clients for r in runs)
            rows.append(
                Row(
                    title,
                    "clients/s",
                    rate,
                    ceiling_name="key generation alone, keys/s",
                    ceiling=ceiling,
                    target=Goal(0.8),
                    note="time-boxed: " + ", ".join(done) if unfinished else "",
                    extra={"runs": done},
                )
            )
            rows.append(
                Row(
                    p99_title,
                    "ms",
                    during,
                    ceiling_name="JWKS p99 idle",
                    ceiling=idle,
                    target=Goal(2.0, at_most=True),
                    extra={"probe_rate_per_second": PROBE_RATE},
                )
            )

    return rows
