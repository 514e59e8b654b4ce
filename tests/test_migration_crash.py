"""A `keysvc migrate` killed at any moment leaves a database the next one finishes."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import asyncpg
import pytest

from keysvc import migrations
from keysvc.sealing import format_kek, new_kek

pytestmark = pytest.mark.slow


async def _reset(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    finally:
        await conn.close()


@pytest.mark.parametrize("delay", [0.0, 0.35, 0.5, 0.65, 0.8])
async def test_migrate_killed_midway_leaves_no_half_applied_file(database_url, delay):
    await _reset(database_url)
    env = {
        "PATH": os.environ["PATH"],
        "KEYSVC_DATABASE_URL": database_url,
        "KEYSVC_ADMIN_TOKEN": "ksad_" + "m" * 43,
        "KEYSVC_KEKS": format_kek(new_kek("m1")),
    }
    killed = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "keysvc", "migrate", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    await asyncio.sleep(delay)
    if killed.returncode is None:
        killed.send_signal(signal.SIGKILL)
    await asyncio.wait_for(killed.wait(), 30)

    conn = await asyncpg.connect(database_url)
    try:
        partial = await migrations.database_version(conn)
        applied = await migrations.migrate(conn)
        final = await migrations.database_version(conn)
        lock_free = await conn.fetchval(
            "SELECT pg_try_advisory_lock($1)", migrations.MIGRATION_LOCK_ID
        )
    finally:
        await conn.close()

    assert 0 <= partial <= migrations.code_version()
    assert applied == list(range(partial + 1, migrations.code_version() + 1))
    assert final == migrations.code_version()
    assert lock_free
