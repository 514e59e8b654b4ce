"""Resident memory with 100,000 clients' JWKS cached, against their bytes.

The clients are copied into the database directly, each with two real P-256
keys (200,000 distinct keys, made in a process pool, each kid its
thumbprint). A fresh ``serve`` process then answers each client's JWKS once;
its VmRSS before and after, over the sum of the documents' bytes, is the
figure.
"""

from __future__ import annotations

import logging

from bench import keymaker
from bench.context import Context
from bench.database import load_generated_clients
from bench.load import fetch_all
from bench.service import Api, migrate, start_keysvc
from bench.stats import Figure, Row
from bench.stats import Target as Goal

logger = logging.getLogger(__name__)

MIB = 1024 * 1024


async def measure(ctx: Context) -> list[Row]:
    count = ctx.budget.memory_clients
    dsn = await ctx.pg.fresh_database("bench_memory")
    migrate(dsn, ctx.credentials, ctx.workdir)

    keys = keymaker.p256_public_keys(2 * count)
    ids = [f"mem-{i:06d}" for i in range(count)]
    pairs = [(keys[2 * i], keys[2 * i + 1]) for i in range(count)]
    await load_generated_clients(dsn, ids, pairs)
    logger.info("%d clients with %d distinct P-256 keys loaded", count, len(keys))

    deltas, documents = [], []
    for run in range(ctx.budget.memory_runs):
        server, url = start_keysvc(
            f"keysvc-mem{run}", dsn, ctx.credentials, ctx.workdir
        )
        try:
            async with Api(url, ctx.credentials.admin_token) as api:
                await fetch_all([f"{url}/healthz"] * 200)
                before = server.rss_bytes()
                total = await fetch_all([f"{url}/clients/{c}/jwks.json" for c in ids])
                after = server.rss_bytes()
                misses = await api.metric("keysvc_jwks_cache_misses_total")
        finally:
            server.stop()
        if misses < count:
            raise RuntimeError(f"only {misses:.0f} of {count} documents were built")
        logger.info(
            "run %d: RSS %.1f -> %.1f MiB for %.1f MiB of documents",
            run,
            before / MIB,
            after / MIB,
            total / MIB,
        )
        deltas.append((after - before) / MIB)
        documents.append(total / MIB)

    return [
        Row(
            f"resident memory, {count:,} clients' JWKS cached (RSS delta)",
            "MiB",
            Figure.of(deltas),
            ceiling_name="bytes of those documents",
            ceiling=Figure.of(documents),
            target=Goal(3.0, at_most=True),
            extra={"clients": count, "keys": 2 * count},
        )
    ]
