"""Operations, with `keysvc serve` as a real process: logs, metrics, shutdown."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest
from harness import KeysvcProcess, free_port

from keysvc.sealing import format_kek

pytestmark = pytest.mark.slow

ADMIN = "ksad_" + "o" * 43


@pytest.fixture
async def serve(database_url, kek, leak_watch):
    started: list[KeysvcProcess] = []

    async def start(**env: str) -> KeysvcProcess:
        process = KeysvcProcess(
            {
                "KEYSVC_DATABASE_URL": database_url,
                "KEYSVC_ADMIN_TOKEN": ADMIN,
                "KEYSVC_KEKS": format_kek(kek),
                "KEYSVC_KEYGEN_WORKERS": "1",
                "KEYSVC_SCHEDULER": "0",
                **env,
            }
        )
        started.append(process)
        return await process.started()

    yield start
    for process in started:
        if process.running:
            await process.kill()
        leak_watch.lines.extend(process.lines)


async def _traffic(base: str, leak_watch) -> None:
    """One request of every kind keysvc answers."""
    admin = {"Authorization": f"Bearer {ADMIN}"}
    async with aiohttp.ClientSession(base_url=base) as http:
        created = await (
            await http.post(
                "/clients",
                json={"client_id": "ops", "prepublish_period": 0},
                headers=admin,
            )
        ).json()
        leak_watch.add(created["client_token"])
        own = {
            "Authorization": f"Bearer {created['client_token']}",
            "X-Request-ID": "rq-1",
        }
        first = await http.get("/clients/ops/jwks.json")
        await http.get(
            "/clients/ops/jwks.json", headers={"If-None-Match": first.headers["ETag"]}
        )
        await http.post("/clients/ops/keys/rotate", headers=own)
        await http.post(
            f"/clients/ops/keys/{created['next']['kid']}/revoke", headers=admin
        )
        await http.get("/clients/ops/keys", headers=own)
        await http.get("/clients/nobody/jwks.json")
        await http.post("/clients", data=b"{", headers=admin)
        await http.get("/clients", headers={"Authorization": "Bearer nope"})
        await http.get("/readyz")


async def test_every_log_line_is_json_with_level_message_and_request_id(
    serve, leak_watch
):
    keysvc = await serve(KEYSVC_LOG_LEVEL="INFO")

    await _traffic(keysvc.base, leak_watch)
    code = await keysvc.stop()

    assert code == 0
    entries = [json.loads(line) for line in keysvc.lines]
    assert entries
    for entry in entries:
        assert entry["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
        assert isinstance(entry["message"], str)
    access = [e for e in entries if e["logger"] == "keysvc.access"]
    assert len(access) >= 10
    assert all(e["request_id"] and e["route"] and e["status"] for e in access)
    rotated = [e for e in entries if "rotated" in e["message"]]
    assert rotated and rotated[0]["request_id"] == "rq-1"
    assert any(
        e["request_id"] == "rq-1" and e["logger"] == "keysvc.access" for e in access
    )


async def test_sigterm_drains_accepted_requests_and_exits_in_time(serve, leak_watch):
    keysvc = await serve(KEYSVC_SHUTDOWN_DELAY="1", KEYSVC_SHUTDOWN_TIMEOUT="10")
    admin = {"Authorization": f"Bearer {ADMIN}"}

    async with aiohttp.ClientSession(base_url=keysvc.base) as http:
        slow = [
            asyncio.create_task(
                http.post(
                    "/clients",
                    json={"client_id": f"slow-{n}", "alg": "RS256", "key_size": 3072},
                    headers=admin,
                )
            )
            for n in range(4)
        ]
        await asyncio.sleep(0.3)
        started = time.monotonic()
        keysvc.signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        during = await http.get("/readyz")
        responses = await asyncio.wait_for(asyncio.gather(*slow), 30)
        for response in responses:
            leak_watch.add((await response.json())["client_token"])
    code = await keysvc.wait(within=30)
    elapsed = time.monotonic() - started

    assert during.status == 503
    assert (await during.json())["checks"]["draining"] is True
    assert [r.status for r in responses] == [201] * 4
    assert code == 0
    assert elapsed < 15


async def test_metrics_can_live_on_their_own_port(serve):
    metrics_port = free_port()
    keysvc = await serve(KEYSVC_METRICS_PORT=str(metrics_port))

    async with aiohttp.ClientSession() as http:
        separate = await http.get(f"http://127.0.0.1:{metrics_port}/metrics")
        text = await separate.text()
        main = await http.get(f"{keysvc.base}/metrics")

    assert separate.status == 200
    assert "keysvc_build_info" in text
    assert main.status == 404


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
async def test_promtool_accepts_a_scrape_after_traffic(serve, leak_watch, tmp_path):
    keysvc = await serve()
    await _traffic(keysvc.base, leak_watch)

    async with aiohttp.ClientSession() as http:
        scrape = await (await http.get(f"{keysvc.base}/metrics")).text()
    result = await asyncio.to_thread(
        subprocess.run,
        ["promtool", "check", "metrics"],
        input=scrape,
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    for family in ("keysvc_http_requests_total", "keysvc_jwks_cache_hits_total",
                   "keysvc_rotations_total", "keysvc_revocations_total",
                   "keysvc_key_generation_duration_seconds_bucket"):  # fmt: skip
        assert family in scrape
    # Route templates name {client_id}; no label may carry an actual value.
    assert '"ops"' not in scrape and "/clients/ops" not in scrape
    assert "kid=" not in scrape


@pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="prometheus not installed"
)
async def test_a_real_prometheus_scrapes_keysvc(serve, tmp_path: Path):
    keysvc = await serve()
    prom_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: keysvc\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{keysvc.port}']}}]\n"
    )
    prometheus = await asyncio.create_subprocess_exec(
        "prometheus",
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'db'}",
        f"--web.listen-address=127.0.0.1:{prom_port}",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        found = None
        deadline = time.monotonic() + 40
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline and not found:
                await asyncio.sleep(1)
                try:
                    async with http.get(
                        f"http://127.0.0.1:{prom_port}/api/v1/query",
                        params={"query": 'keysvc_build_info{job="keysvc"}'},
                    ) as response:
                        if response.status == 200:
                            found = (await response.json())["data"]["result"]
                except aiohttp.ClientError:
                    continue
    finally:
        prometheus.terminate()
        await asyncio.wait_for(prometheus.wait(), 10)

    assert found, "Prometheus never returned a keysvc series"
    assert found[0]["metric"]["instance"] == f"127.0.0.1:{keysvc.port}"
