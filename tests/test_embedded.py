"""The embedded default: `keysvc serve` with no DSN runs its own PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
import sys
import time
from pathlib import Path

import aiohttp
import pytest

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _wait_ready(base: str, process: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if process.returncode is not None:
                raise AssertionError(f"serve exited with {process.returncode}")
            try:
                async with session.get(f"{base}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise AssertionError("serve did not become ready within 60 s")


async def _serve(data_dir: Path, port: int) -> asyncio.subprocess.Process:
    env = {
        "PATH": os.environ["PATH"],
        "KEYSVC_DATA_DIR": str(data_dir),
        "KEYSVC_PORT": str(port),
        "KEYSVC_KEYGEN_WORKERS": "1",
        "KEYSVC_SCHEDULER": "0",
    }
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "keysvc", "serve", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def _stop(process: asyncio.subprocess.Process) -> str:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    try:
        _, err = await asyncio.wait_for(process.communicate(), 30)
    except TimeoutError:
        process.kill()
        _, err = await process.communicate()
        raise
    return err.decode()


async def test_serve_runs_on_its_own_postgres_and_reuses_it(tmp_path, leak_watch):
    data_dir = tmp_path / "data"
    port = free_port()
    base = f"http://127.0.0.1:{port}"

    first = await _serve(data_dir, port)
    try:
        await _wait_ready(base, first)
        token = (data_dir / "admin-token").read_text().strip()
        leak_watch.add(token, (data_dir / "keks").read_text().split(":", 1)[1].strip())
        async with aiohttp.ClientSession(base_url=base) as http:
            created = await http.post(
                "/clients",
                json={"client_id": "dev"},
                headers={"Authorization": f"Bearer {token}"},
            )
            body = await created.json()
            leak_watch.add(body["client_token"])
            jwks = await (await http.get("/clients/dev/jwks.json")).json()
    finally:
        first_log = await _stop(first)
    leak_watch.lines.extend(first_log.splitlines())

    assert created.status == 201
    assert len(jwks["keys"]) == 2
    for name in ("admin-token", "keks"):
        assert stat.S_IMODE((data_dir / name).stat().st_mode) == 0o600
    assert "DEVELOPMENT ONLY" in first_log
    assert token not in first_log
    assert first.returncode == 0

    second = await _serve(data_dir, port)
    try:
        await _wait_ready(base, second)
        async with aiohttp.ClientSession(base_url=base) as http:
            again = await (await http.get("/clients/dev/jwks.json")).json()
    finally:
        second_log = await _stop(second)
    leak_watch.lines.extend(second_log.splitlines())

    assert again == jwks
    assert (data_dir / "admin-token").read_text().strip() == token
    assert not (data_dir / "pg" / "postmaster.pid").exists()
