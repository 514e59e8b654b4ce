"""What every section of the bench shares: folders, the database, the budget."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bench.database import Postgres
from bench.service import Credentials


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    return float(raw) if raw else default


@dataclass(frozen=True, slots=True)
class Budget:
    """How long each measure runs; every figure is a median over ``runs``."""

    runs: int
    seconds: float
    post_runs: int
    post_seconds: float
    rotation_runs: int
    rotation_window: float
    es256_clients: int
    rsa_clients: int
    memory_clients: int
    memory_runs: int

    @classmethod
    def from_env(cls) -> Budget:
        """Defaults fit a full run in about a quarter of an hour on 2 cores.

        ``BENCH_QUICK=1`` shrinks every count, for trying the harness out.
        """
        quick = os.environ.get("BENCH_QUICK") == "1"
        return cls(
            runs=_env_int("BENCH_RUNS", 3 if quick else 5),
            seconds=_env_float("BENCH_SECONDS", 1 if quick else 3),
            post_runs=_env_int("BENCH_POST_RUNS", 3),
            post_seconds=_env_float("BENCH_POST_SECONDS", 1 if quick else 3),
            rotation_runs=_env_int("BENCH_ROTATION_RUNS", 3),
            rotation_window=_env_float("BENCH_ROTATION_WINDOW", 5 if quick else 15),
            es256_clients=_env_int("BENCH_ES256_CLIENTS", 500 if quick else 10_000),
            rsa_clients=_env_int("BENCH_RSA_CLIENTS", 20 if quick else 1_000),
            memory_clients=_env_int("BENCH_MEMORY_CLIENTS", 2000 if quick else 100_000),
            memory_runs=_env_int("BENCH_MEMORY_RUNS", 3),
        )


@dataclass(frozen=True, slots=True)
class Context:
    workdir: Path
    pg: Postgres
    credentials: Credentials
    budget: Budget

    def private_file(self, name: str, data: bytes) -> Path:
        """A file only this user can read, for key material the ceilings load."""
        path = self.workdir / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        return path
