"""Named jobs on an interval, run by APScheduler inside every serve process.

Every replica runs the same jobs; each job claims its own rows in the
database, so N replicas do each piece of work once. This module only runs
them: every job is wrapped so that a failure is logged and counted but never
reaches APScheduler (the next tick runs as usual), a tick that finds the job
still running is coalesced into it, and a shutdown lets the job in hand
finish its current step instead of cancelling it in the middle.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from keysvc.errors import KeysvcError
from keysvc.metrics import Metrics

logger = logging.getLogger(__name__)

JobFunc = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class _Job:
    name: str
    func: JobFunc
    seconds: float


class Scheduler:
    """A registry of jobs, started and stopped with the application.

    Jobs may be added before or after :meth:`start`. A job that runs for a
    long time should check :attr:`stopping` between its steps.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._jobs: dict[str, _Job] = {}
        self._running: dict[asyncio.Task[object], str] = {}
        self._engine: AsyncIOScheduler | None = None
        self._stopping = False

    @property
    def stopping(self) -> bool:
        """True once a shutdown began: a job ends after its current step."""
        return self._stopping

    @property
    def running(self) -> bool:
        return self._engine is not None

    @property
    def job_names(self) -> list[str]:
        return sorted(self._jobs)

    def add_job(self, name: str, func: JobFunc, seconds: float) -> None:
        """Run ``func`` every ``seconds``; one job a name."""
        if name in self._jobs:
            raise ValueError(f"a scheduler job named {name!r} exists already")
        if not seconds > 0:
            raise ValueError(f"job {name!r} needs a positive interval")

        job = _Job(name, func, seconds)
        self._jobs[name] = job
        if self._engine is not None:
            self._schedule(self._engine, job)

    def remove_job(self, name: str) -> None:
        if self._jobs.pop(name, None) is not None and self._engine is not None:
            self._engine.remove_job(name)

    async def run_now(self, name: str) -> bool:
        """Run one job once, outside the schedule; return whether it succeeded.

        Measured and guarded like a tick, but not kept from overlapping one:
        for tests and operators, not for code that the schedule also runs.
        """
        return await self._run(self._jobs[name])

    def start(self) -> None:
        engine = AsyncIOScheduler(timezone=UTC)
        for job in self._jobs.values():
            self._schedule(engine, job)
        engine.start()
        self._engine = engine
        logger.info("scheduler started: %s", ", ".join(self.job_names))

    async def shutdown(self, timeout_seconds: float) -> None:
        """Fire no more ticks, let running jobs finish their step, then stop."""
        self._stopping = True
        engine, self._engine = self._engine, None
        if engine is None:
            return
        engine.pause()

        running = dict(self._running)
        if running:
            _, late = await asyncio.wait(running, timeout=timeout_seconds)
            for task in late:
                logger.warning(
                    "scheduler job %s outlived the shutdown timeout: cancelled",
                    running[task],
                )
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=timeout_seconds)
        engine.shutdown(wait=False)
        # APScheduler stops on the next turn of the loop.
        await asyncio.sleep(0)
        logger.info("scheduler stopped")

    def _schedule(self, engine: AsyncIOScheduler, job: _Job) -> None:
        engine.add_job(
            functools.partial(self._run, job),
            "interval",
            seconds=job.seconds,
            id=job.name,
            name=job.name,
            # The first run is now: after downtime, the work waiting is due.
            next_run_time=datetime.now(UTC),
            # A tick that finds the job still running is dropped, and ticks
            # missed while the loop was busy collapse into one late run.
            coalesce=True,
            max_instances=1,
            misfire_grace_time=None,
        )

    async def _run(self, job: _Job) -> bool:
        if self._stopping:
            return False
        task = asyncio.current_task()
        if task is not None:
            self._running[task] = job.name
        started = time.perf_counter()
        try:
            await job.func()
        except asyncio.CancelledError:
            self._count(job, "cancelled", started)
            raise
        # A job's fault, whatever it is, must not stop the other jobs or the
        # next tick of this one; it is logged and counted instead.
        except Exception as exc:
            self._count(job, "error", started)
            logger.warning(
                "scheduler job %s failed: %s",
                job.name,
                describe_failure(exc),
                extra={"job": job.name, "where": _where(exc)},
            )
            return False
        finally:
            if task is not None:
                self._running.pop(task, None)

        self._count(job, "success", started)
        self._metrics.scheduler_last_success.labels(job.name).set(time.time())

        return True

    def _count(self, job: _Job, outcome: str, started: float) -> None:
        elapsed = time.perf_counter() - started
        self._metrics.scheduler_duration.labels(job.name).observe(elapsed)
        self._metrics.scheduler_runs.labels(job.name, outcome).inc()
        logger.debug("scheduler job %s: %s in %.3f s", job.name, outcome, elapsed)


def describe_failure(exc: BaseException) -> str:
    """A failure in words that cannot quote a row, a key or a secret.

    A driver error's text may carry a DETAIL with the failing row, sealed
    blob included, so only its class and SQLSTATE are given.
    """
    if isinstance(exc, KeysvcError):
        return f"{type(exc).__name__}: {exc.detail}"
    if isinstance(exc, asyncpg.PostgresError):
        return f"{type(exc).__name__} (SQLSTATE {exc.sqlstate})"

    return type(exc).__name__


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    last = frames[-1]

    return f"{Path(last.filename).name}:{last.lineno} in {last.name}"
