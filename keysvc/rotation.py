"""Scheduled rotation of every due generated client, a batch at a time.

A mass rotation (thousands of clients due at once, after downtime) runs in
three steps a batch, so that nothing waits on key generation but the batch
itself:

1. claim: one short transaction leases up to ``batch`` due clients
   (``FOR UPDATE SKIP LOCKED``, then a lease on the database clock), so
   replicas that scan at once take different clients;
2. generate: the batch's fresh ``next`` keys are made in the worker
   processes, with no transaction open, no row locked, no connection held;
3. rotate: the batch in up to ``concurrency`` groups at once, each group one
   transaction of set-based statements (a handful for the whole group), which
   re-checks that each client is still due and clears its lease. If the
   database refuses a group, it is redone client by client in savepoints, so
   a client that fails rolls back alone.

The steps overlap: batch n+1 is claimed and its keys generated while batch n
commits, so the key workers are not idle while the database works.

A replica killed between the steps leaves leases that run out, and the
clients are claimed again by whoever scans next; no client is half-rotated,
since its step 3 commits whole or not at all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

import asyncpg

from keysvc.errors import KeysvcError
from keysvc.keygen import KeyGenerator
from keysvc.keys import KeySpec
from keysvc.lifecycle import DueRotation, Lifecycle
from keysvc.models import Client
from keysvc.scheduler import describe_failure

logger = logging.getLogger(__name__)

ACTOR = "scheduler"


class ScheduledRotation:
    """Rotates due generated clients; run as the scheduler's ``rotate`` job."""

    def __init__(
        self,
        lifecycle: Lifecycle,
        generator: KeyGenerator,
        *,
        batch: int,
        concurrency: int,
        lease_seconds: int,
        owner: str,
    ) -> None:
        self.lifecycle = lifecycle
        self.generator = generator
        self.batch = batch
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self.owner = owner

    async def run(self, stopping: Callable[[], bool] = lambda: False) -> int:
        """Rotate until no client is due (or ``stopping``); return how many.

        A client whose rotation failed keeps its lease until it runs out, so
        one run does not retry it in a loop; the run then fails as a whole.
        """
        rotated = failed = 0
        upcoming = await self._next_batch(stopping)
        try:
            while upcoming is not None:
                due = await upcoming
                # Claim and generate the following batch while this one commits.
                upcoming = await self._next_batch(stopping)
                done, errors = await self._rotate_batch(due)
                rotated += done
                failed += errors
                if not done and not errors:
                    # Nothing in the batch was still due (rotated by hand, or
                    # its policy changed meanwhile): leave the rest to the next
                    # tick rather than claim the same clients again and again.
                    break
        finally:
            if upcoming is not None:
                await self._give_back(upcoming)

        if rotated or failed:
            logger.info("scheduled rotation: %d rotated, %d failed", rotated, failed)
        if failed:
            raise KeysvcError(
                f"{failed} scheduled rotations failed; their clients are claimed "
                f"again when their lease of {self.lease_seconds} s runs out"
            )

        return rotated

    async def _next_batch(
        self, stopping: Callable[[], bool]
    ) -> asyncio.Task[list[DueRotation]] | None:
        """Claim a batch and start making its keys; None when none is due."""
        if stopping():
            return None
        claimed = await self._claim()
        if not claimed:
            return None

        return asyncio.create_task(self._generate(claimed))

    async def _claim(self) -> list[Client]:
        async with self.lifecycle.store.transaction("claim due rotations") as tx:
            return await tx.claim_due_rotations(
                limit=self.batch, lease_seconds=self.lease_seconds, owner=self.owner
            )

    async def _generate(self, claimed: Sequence[Client]) -> list[DueRotation]:
        specs = [KeySpec(c.policy.alg, c.policy.key_size) for c in claimed]
        try:
            generated = await self.generator.generate_many(specs)
        except BaseException:
            # Give the clients back at once rather than when the lease ends.
            await asyncio.shield(self._release([c.client_id for c in claimed]))
            raise

        return [
            DueRotation(client.client_id, spec, key)
            for client, spec, key in zip(claimed, specs, generated, strict=True)
        ]

    async def _rotate_batch(self, due: Sequence[DueRotation]) -> tuple[int, int]:
        # ``concurrency`` groups at once, each one transaction.
        size = max(1, -(-len(due) // self.concurrency))
        groups = [due[i : i + size] for i in range(0, len(due), size)]
        results = await asyncio.gather(*(self._rotate_group(g) for g in groups))
        outcomes = [outcome for group in results for outcome in group]

        return outcomes.count(True), outcomes.count(None)

    async def _rotate_group(self, group: Sequence[DueRotation]) -> list[bool | None]:
        """True when rotated, False when no longer due, None when it failed."""
        try:
            return await self.lifecycle.rotate_batch_if_due(group, actor=ACTOR)
        except (KeysvcError, asyncpg.PostgresError) as exc:
            logger.warning(
                "scheduled rotation of %d clients failed: %s",
                len(group),
                describe_failure(exc),
            )
            return [None] * len(group)

    async def _give_back(self, upcoming: asyncio.Task[list[DueRotation]]) -> None:
        """Release a batch claimed ahead and not rotated, at once rather than
        when its lease ends. Cancelled while its keys are made, it releases
        them itself; made already, its clients are released here."""
        upcoming.cancel()
        (made,) = await asyncio.gather(upcoming, return_exceptions=True)
        if isinstance(made, list):
            try:
                await asyncio.shield(self._release([d.client_id for d in made]))
            except KeysvcError as exc:
                # The leases run out by themselves; keep the error in flight.
                logger.warning("claims not released: %s", exc.detail)

    async def _release(self, client_ids: Sequence[str]) -> None:
        async with self.lifecycle.store.transaction("release claims") as tx:
            await tx.release_rotation_claims(client_ids)
