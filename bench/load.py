"""Load generators, all on core 1: wrk for throughput, aiohttp for the rest.

wrk is closed-loop (each of the 50 connections sends its next request when
the last one is answered), which measures the most a server does on its core.
The p99 while a rotation runs is measured open-loop instead, at a fixed rate
well under saturation, so that it shows the event loop being held up rather
than the core being shared.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.procs import LOAD_CORE

LUA = Path(__file__).with_name("lua")
CONNECTIONS = 50
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}
_LATENCY = re.compile(r"^\s*(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    bad: int


def parse_wrk(output: str) -> WrkResult:
    """Read throughput, latency percentiles and error counts from wrk's report."""
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    if rate is None or total is None:
        raise RuntimeError(f"wrk gave no figures: {output[-500:]}")
    percentiles = {
        int(p): float(v) * _UNITS[unit] for p, v, unit in _LATENCY.findall(output)
    }
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    socket = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    bad = re.search(r"bench-bad (\d+) of (\d+)", output)
    errors = int(non_2xx.group(1)) if non_2xx else 0
    if socket:
        errors += sum(int(g) for g in socket.groups())

    return WrkResult(
        requests_per_second=float(rate.group(1)),
        p50_ms=percentiles.get(50, float("nan")),
        p99_ms=percentiles.get(99, float("nan")),
        requests=int(total.group(1)),
        errors=errors,
        bad=int(bad.group(1)) if bad else 0,
    )


def wrk(
    url: str,
    *,
    seconds: float,
    script: str | None = None,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    connections: int = CONNECTIONS,
) -> WrkResult:
    """One wrk run: one thread on the load core, ``connections`` connections."""
    argv = [
        "taskset",
        "-c",
        str(LOAD_CORE),
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds:g}s",
        "--latency",
        "--timeout",
        "10s",
    ]
    if script is not None:
        argv += ["-s", str(LUA / script)]
    argv.append(url)
    if args:
        argv += ["--", *args]
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed: {done.stderr[-500:]}")

    return parse_wrk(done.stdout)


async def paced(
    url: str,
    *,
    rate: float,
    seconds: float,
    stop: asyncio.Event | None = None,
    connections: int = CONNECTIONS,
) -> list[float]:
    """GET ``url`` at a fixed rate for ``seconds`` (or until ``stop``); latencies in ms.

    Open-loop: a request's latency counts from when it was due, not from when
    a connection was free, so a stalled server cannot hide its stall.
    """
    latencies: list[float] = []
    interval = 1.0 / rate
    connector = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(due: float) -> None:
            async with session.get(url) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"{url} answered {response.status}")
            latencies.append((time.perf_counter() - due) * 1000)

        tasks = []
        start = time.perf_counter()
        for i in range(int(rate * seconds)):
            if stop is not None and stop.is_set():
                break
            due = start + i * interval
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(due)))
        await asyncio.wait_for(asyncio.gather(*tasks), 60)

    return latencies


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(pct / 100 * len(ordered))))

    return ordered[rank - 1]


async def fetch_all(urls: Sequence[str], *, connections: int = CONNECTIONS) -> int:
    """GET every URL once, ``connections`` at a time; the sum of body bytes."""
    total = 0
    queue = iter(urls)
    connector = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            nonlocal total
            for url in queue:
                async with session.get(url) as response:
                    body = await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"{url} answered {response.status}")
                total += len(body)

        await asyncio.gather(*(worker() for _ in range(connections)))

    return total


@dataclass(frozen=True, slots=True)
class Target:
    """One thing wrk is pointed at in a series."""

    label: str
    url: str
    script: str | None = None
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()


def interleaved(
    targets: Sequence[Target], *, runs: int, seconds: float, warmup: float = 1.0
) -> dict[str, list[WrkResult]]:
    """Run every target once a round, ``runs`` rounds, after one warm-up each.

    Interleaving spreads the machine's drift over every target alike, so a
    ratio compares figures taken side by side.
    """
    for target in targets:
        wrk(
            target.url,
            seconds=warmup,
            script=target.script,
            args=target.args,
            env=dict(target.env),
        )
    results: dict[str, list[WrkResult]] = {t.label: [] for t in targets}
    for _ in range(runs):
        for target in targets:
            results[target.label].append(
                wrk(
                    target.url,
                    seconds=seconds,
                    script=target.script,
                    args=target.args,
                    env=dict(target.env),
                )
            )

    return results
