"""``python -m bench``: every section in turn, one table, one JSON file."""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import assertions, jwks, memory, rotation
from bench.context import Budget, Context
from bench.database import Postgres
from bench.procs import LOAD_CORE, pin_self
from bench.service import Credentials
from bench.stats import Row, markdown_table, write_json

logger = logging.getLogger("bench")

RESULTS = Path(__file__).with_name("results") / "latest.json"
Section = Callable[[Context], Awaitable[list[Row]]]


def _sections() -> list[tuple[str, Section]]:
    return [
        ("jwks", jwks.measure),
        ("assertions", assertions.measure),
        ("memory", memory.measure),
        ("rotation", rotation.measure),
    ]


def _machine() -> dict[str, Any]:
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wrk": _version(["wrk", "-v"]),
        "nginx": _version(["nginx", "-v"]),
        "node": _version(["node", "--version"]),
    }


def _version(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None:
        return "missing"
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    return (
        (done.stdout + done.stderr).strip().splitlines()[0]
        if (done.stdout + done.stderr).strip()
        else ""
    )


async def _run(only: set[str]) -> int:
    budget = Budget.from_env()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="keysvc-bench-") as tmp:
        workdir = Path(tmp)
        pg = Postgres(workdir / "pg")
        pg.start()
        ctx = Context(workdir, pg, Credentials.generate(), budget)
        try:
            for name, section in _sections():
                if only and name not in only:
                    continue
                started = time.monotonic()
                logger.info("section %s", name)
                rows += await section(ctx)
                logger.info("section %s took %.0f s", name, time.monotonic() - started)
        finally:
            pg.stop()

    table = markdown_table(rows)
    sys.stdout.write("\n" + table)
    context = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": _machine(),
        "budget": budget.__dict__ if hasattr(budget, "__dict__") else _budget(budget),
    }
    write_json(RESULTS, rows, context)
    sys.stdout.write(f"\nwritten to {RESULTS}\n")

    return 0


def _budget(budget: Budget) -> dict[str, Any]:
    return {name: getattr(budget, name) for name in budget.__slots__}


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    pin_self(LOAD_CORE)
    only = set(sys.argv[1:])
    return asyncio.run(_run(only))
