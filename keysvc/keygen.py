"""Key generation off the event loop, in a pool of worker processes."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import select
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

from keysvc.keys import GeneratedKey, KeySpec, generate_key
from keysvc.metrics import Metrics

logger = logging.getLogger(__name__)


def _die_with_parent(keysvc_pid: int) -> None:
    """Worker initializer: end when the keysvc process that owns us ends.

    A worker outliving a SIGKILLed keysvc would hold its stderr and memory
    forever, and keep the fork server alive with it (workers hold the fork
    server's liveness pipe). A daemon thread waits on a pidfd of keysvc.
    """
    try:
        pidfd = os.pidfd_open(keysvc_pid)
    except (AttributeError, OSError):
        return  # not Linux, or keysvc is already gone; the pool notices

    def watch() -> None:
        select.select([pidfd], [], [])
        os._exit(0)

    threading.Thread(target=watch, name="keysvc-watch", daemon=True).start()


def _timed_generate(spec: KeySpec) -> tuple[GeneratedKey, float]:
    # Timed inside the worker, so the figure leaves out time spent queued.
    started = time.perf_counter()
    key = generate_key(spec)

    return key, time.perf_counter() - started


class KeyGenerator:
    """Generates keys in worker processes; RSA-4096 would stall the loop ~1 s."""

    def __init__(self, workers: int = 0, metrics: Metrics | None = None) -> None:
        self.workers = workers or max(1, (os.cpu_count() or 2) - 1)
        # forkserver: workers start from a clean interpreter, not a copy of a
        # process that holds sockets, threads and secrets.
        context = multiprocessing.get_context("forkserver")
        self._executor = ProcessPoolExecutor(
            self.workers,
            mp_context=context,
            initializer=_die_with_parent,
            initargs=(os.getpid(),),
        )
        self._metrics = metrics

    async def generate(self, spec: KeySpec) -> GeneratedKey:
        loop = asyncio.get_running_loop()
        key, seconds = await loop.run_in_executor(self._executor, _timed_generate, spec)
        if self._metrics is not None:
            self._metrics.key_generation.labels(spec.alg).observe(seconds)
        logger.debug("generated %s key %s in %.3f s", spec.alg, key.kid, seconds)

        return key

    async def generate_many(self, specs: Sequence[KeySpec]) -> list[GeneratedKey]:
        return list(await asyncio.gather(*(self.generate(s) for s in specs)))

    async def warm_up(self) -> None:
        """Start the workers now, so the first request does not pay for it."""
        await self.generate_many([KeySpec("ES256", None)] * self.workers)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
