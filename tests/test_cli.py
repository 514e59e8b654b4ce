"""The keysvc command, run as operators run it: a separate process."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import asyncpg
import pytest

from keysvc.sealing import SealedBlob, Sealer, format_kek, new_kek

ADMIN = "ksad_" + "c" * 43


@pytest.fixture
def keysvc(leak_watch):
    """Run the command; its log lines join the session's leak watch."""

    async def run(*args: str, env: dict[str, str]) -> tuple[int, dict, str]:
        code, body, err = await _run(*args, env=env)
        leak_watch.lines.extend(err.splitlines())
        return code, body, err

    return run


async def _run(*args: str, env: dict[str, str]) -> tuple[int, dict, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "keysvc", *args,
        env={"PATH": os.environ["PATH"], **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    body = json.loads(out) if out.strip() else {}

    return process.returncode or 0, body, err.decode()


def _env(database_url: str, *keks) -> dict[str, str]:
    return {
        "KEYSVC_DATABASE_URL": database_url,
        "KEYSVC_ADMIN_TOKEN": ADMIN,
        "KEYSVC_KEKS": ",".join(format_kek(k) for k in keks),
        "KEYSVC_KEYGEN_WORKERS": "1",
    }


async def test_migrate_is_idempotent_and_reports_the_version(keysvc, database_url, kek):
    code, body, _ = await keysvc("migrate", env=_env(database_url, kek))

    assert code == 0
    assert body["applied"] == []
    assert body["schema_version"] >= 1


async def test_a_missing_secret_in_production_stops_with_the_variable_named(
    keysvc, database_url
):
    env = _env(database_url, new_kek("x"))
    del env["KEYSVC_KEKS"]

    code, _, err = await keysvc("migrate", env=env)

    assert code == 2
    assert "KEYSVC_KEKS" in err


async def test_client_administration_mirrors_the_api(
    keysvc, database_url, kek, leak_watch
):
    env = _env(database_url, kek)

    code, created, _ = await keysvc(
        "client", "create", "cli-one", "--alg", "EdDSA", env=env
    )
    leak_watch.add(created["client_token"])
    _, shown, _ = await keysvc("client", "get", "cli-one", env=env)
    _, rotated, _ = await keysvc("key", "rotate", "cli-one", "--force", env=env)
    _, listed, _ = await keysvc("client", "list", env=env)

    assert code == 0
    assert created["client"]["alg"] == "EdDSA"
    assert {k["state"] for k in shown["keys"]} == {"active", "next"}
    assert rotated["active"]["kid"] == created["keys"][1]["kid"]
    assert [c["client_id"] for c in listed["clients"]] == ["cli-one"]


async def test_rewrap_moves_every_blob_to_the_first_kek_and_loses_none(
    keysvc, database_url, kek, leak_watch
):
    env = _env(database_url, kek)
    for n in range(3):
        _, created, _ = await keysvc("client", "create", f"wrap-{n}", env=env)
        leak_watch.add(created["client_token"])
    newer = new_kek("test-2")
    leak_watch.add(format_kek(newer).split(":", 1)[1])

    code, report, err = await keysvc("rewrap", env=_env(database_url, newer, kek))
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT client_id, kid, kek_id, sealed FROM keys WHERE sealed IS NOT NULL"
        )
    finally:
        await conn.close()

    assert code == 0, err
    assert report == {"rewrapped": 6, "failed": []}
    assert len(rows) == 6
    only_new = Sealer((newer,))
    for row in rows:
        assert row["kek_id"] == "test-2"
        blob = SealedBlob(row["kek_id"], bytes(row["sealed"]))
        assert b'"d"' in only_new.unseal(
            blob, client_id=row["client_id"], kid=row["kid"]
        )


async def test_rewrap_reports_a_blob_under_an_unknown_kek_by_kid(
    keysvc, database_url, kek, leak_watch
):
    env = _env(database_url, kek)
    _, created, _ = await keysvc("client", "create", "orphan", env=env)
    leak_watch.add(created["client_token"])
    stranger = new_kek("gone")
    leak_watch.add(format_kek(stranger).split(":", 1)[1])
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("UPDATE keys SET kek_id = 'gone' WHERE client_id = 'orphan'")
    finally:
        await conn.close()

    code, report, err = await keysvc(
        "rewrap", env=_env(database_url, new_kek("fresh"), kek)
    )

    assert code == 1
    assert sorted(report["failed"]) == sorted(k["kid"] for k in created["keys"])
    for kid in report["failed"]:
        assert kid in err
