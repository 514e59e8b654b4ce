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
from keysvc.metrics import Metrics, child

logger = logging.getLogger(__name__)


# Key generation is background work next to the requests this process
# answers: on a shared core, the scheduler should never win over a JWKS fetch.
WORKER_NICENESS = 10
# Keys made per round trip to a worker: the pickling and the queue's threads
# cost more than an EC key does, so a batch travels in chunks.
CHUNK_MAX = 32


def _start_worker(keysvc_pid: int) -> None:
    """Worker initializer: a lower priority, and end when keysvc ends.

    A worker outliving a SIGKILLed keysvc would hold its stderr and memory
    forever, and keep the fork server alive with it (workers hold the fork
    server's liveness pipe). A daemon thread waits on a pidfd of keysvc.
    """
    try:
        os.nice(WORKER_NICENESS)
    except OSError:
        pass  # not permitted here: run at the parent's priority
    try:
        pidfd = os.pidfd_open(keysvc_pid)
    except (AttributeError, OSError):
        return  # not Linux, or keysvc is already gone; the pool notices

    def watch() -> None:
        select.select([pidfd], [], [])
        os._exit(0)

    threading.Thread(target=watch, name="keysvc-watch", daemon=True).start()


def _timed_generate(specs: Sequence[KeySpec]) -> list[tuple[GeneratedKey, float]]:
    # Timed inside the worker, so the figures leave out time spent queued.
    made = []
    for spec in specs:
        started = time.perf_counter()
        key = generate_key(spec)
        made.append((key, time.perf_counter() - started))

    return made


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
            initializer=_start_worker,
            initargs=(os.getpid(),),
        )
        self._metrics = metrics

    async def generate(self, spec: KeySpec) -> GeneratedKey:
        (key,) = await self.generate_many([spec])
        return key

    async def generate_many(self, specs: Sequence[KeySpec]) -> list[GeneratedKey]:
        """Keys for ``specs``, in order, spread over the workers in chunks."""
        if not specs:
            return []
        size = min(CHUNK_MAX, -(-len(specs) // self.workers))
        chunks = [specs[i : i + size] for i in range(0, len(specs), size)]
        loop = asyncio.get_running_loop()
        done = await asyncio.gather(
            *(
                loop.run_in_executor(self._executor, _timed_generate, chunk)
                for chunk in chunks
            )
        )
        keys = []
        for key, seconds in (made for chunk in done for made in chunk):
            if self._metrics is not None:
                child(self._metrics.key_generation, key.alg).observe(seconds)
            keys.append(key)
        logger.debug("generated %d keys in %d chunks", len(keys), len(chunks))

        return keys

    async def warm_up(self) -> None:
        """Start the workers now, so the first request does not pay for it."""
        await self.generate_many([KeySpec("ES256", None)] * self.workers)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
