"""The jobs keysvc runs on its clock, and their registration with the scheduler.

``rotate`` (keysvc.rotation) promotes the keys of due generated clients.
The others keep the rest of the lifecycle moving:

``expire``
    retired keys past their grace period become ``expired``; their sealed
    private part is removed from the row in the same write.
``report_overdue``
    an imported client whose active key outlived its rotation period is
    reported once for that key (a WARNING and an audit event): keysvc cannot
    make keys for it, the client must bring one.
``purge``
    used ``jti`` values past their expiry are deleted, and ``expired`` key
    rows past ``KEYSVC_EXPIRED_KEY_RETENTION``. ``revoked`` rows are kept:
    their kid stops a compromised key from being imported again.
``gauges``
    the database gauges (keys by state, oldest active key, overdue clients)
    are refreshed here, so that no scrape of ``/metrics`` queries the database.

Row work is claimed with ``FOR UPDATE SKIP LOCKED``; the purge, which is
whole-table work, takes an advisory lock that the other replicas skip.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable

from keysvc.keygen import KeyGenerator
from keysvc.lifecycle import NOTIFY_CHANNEL, Lifecycle
from keysvc.metrics import Metrics
from keysvc.models import KeyState
from keysvc.rotation import ACTOR, ScheduledRotation
from keysvc.scheduler import Scheduler
from keysvc.settings import Settings

logger = logging.getLogger(__name__)

EXPIRY_BATCH = 200
REPORT_BATCH = 500
PURGE_BATCH = 5000
# An arbitrary constant, the same in every replica ("keysvc" and 2; the
# migrations hold 1).
PURGE_LOCK_ID = 0x6B65797376630002

Stopping = Callable[[], bool]


class Housekeeping:
    """Expiry, the overdue report, the purge and the gauges."""

    def __init__(
        self,
        lifecycle: Lifecycle,
        metrics: Metrics,
        *,
        expired_key_retention_seconds: int,
    ) -> None:
        self.lifecycle = lifecycle
        self.metrics = metrics
        self.retention_seconds = expired_key_retention_seconds

    async def expire(self, stopping: Stopping = lambda: False) -> int:
        """End every retired key past its grace period; return how many."""
        expired = 0
        while not stopping():
            async with self.lifecycle.store.transaction("expire keys") as tx:
                keys = await tx.lock_expirable_keys(limit=EXPIRY_BATCH)
                for key in keys:
                    await tx.end(key.client_id, key.kid, KeyState.EXPIRED)
                    await tx.record(
                        key.client_id, "key.expired", actor=ACTOR, kid=key.kid
                    )
                changed = sorted({key.client_id for key in keys})
                for client_id in changed:
                    await tx.notify(NOTIFY_CHANNEL, client_id)

            for key in keys:
                logger.info(
                    "client %s: key %s expired, its private part destroyed",
                    key.client_id,
                    key.kid,
                    extra={"client_id": key.client_id, "kid": key.kid},
                )
            for client_id in changed:
                for callback in self.lifecycle.on_change:
                    callback(client_id)
            expired += len(keys)
            if len(keys) < EXPIRY_BATCH:
                break

        return expired

    async def report_overdue(self, stopping: Stopping = lambda: False) -> int:
        """Report each imported client's overdue active key once; return how many."""
        reported = 0
        while not stopping():
            async with self.lifecycle.store.transaction("report overdue") as tx:
                overdue = await tx.claim_overdue_reports(limit=REPORT_BATCH)
                for item in overdue:
                    await tx.record(
                        item.client_id,
                        "key.rotation_overdue",
                        actor=ACTOR,
                        kid=item.kid,
                        overdue_seconds=int(item.overdue_seconds),
                    )

            for item in overdue:
                logger.warning(
                    "client %s is overdue for rotation: its active key %s is %d s "
                    "past the rotation period; the client must import a new key",
                    item.client_id,
                    item.kid,
                    item.overdue_seconds,
                    extra={"client_id": item.client_id, "kid": item.kid},
                )
            reported += len(overdue)
            if len(overdue) < REPORT_BATCH:
                break

        return reported

    async def purge(self, stopping: Stopping = lambda: False) -> tuple[int, int]:
        """Delete used jtis past expiry, expired keys past retention.

        Returns (jtis, keys) deleted; (0, 0) where another replica is at it.
        """
        jtis = keys = 0
        while not stopping():
            async with self.lifecycle.store.transaction("purge") as tx:
                if not await tx.try_lock(PURGE_LOCK_ID):
                    break
                batch_jtis = await tx.purge_used_jtis(limit=PURGE_BATCH)
                batch_keys = 0
                if self.retention_seconds > 0:
                    batch_keys = await tx.purge_expired_keys(
                        older_than_seconds=self.retention_seconds, limit=PURGE_BATCH
                    )
            jtis += batch_jtis
            keys += batch_keys
            if batch_jtis < PURGE_BATCH and batch_keys < PURGE_BATCH:
                break

        if jtis or keys:
            logger.info(
                "purged %d used jtis and %d expired keys past retention", jtis, keys
            )

        return jtis, keys

    async def refresh_gauges(self) -> None:
        gauges = await self.lifecycle.store.key_gauges()
        for state in KeyState:
            count = gauges.keys_by_state.get(state.value, 0)
            self.metrics.keys.labels(state.value).set(count)
        self.metrics.oldest_active_key_age.set(gauges.oldest_active_key_age_seconds)
        self.metrics.clients_rotation_overdue.set(gauges.clients_rotation_overdue)


def replica_name() -> str:
    """This process as the claims name it: host (a pod's name) and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def register_jobs(
    scheduler: Scheduler,
    *,
    lifecycle: Lifecycle,
    generator: KeyGenerator,
    metrics: Metrics,
    settings: Settings,
) -> None:
    """Add keysvc's own jobs, each every ``KEYSVC_SCHEDULER_INTERVAL`` seconds."""
    rotation = ScheduledRotation(
        lifecycle,
        generator,
        batch=settings.rotation_batch,
        concurrency=settings.rotation_concurrency,
        lease_seconds=settings.rotation_lease_seconds,
        owner=replica_name(),
    )
    housekeeping = Housekeeping(
        lifecycle,
        metrics,
        expired_key_retention_seconds=settings.expired_key_retention_seconds,
    )

    def stopping() -> bool:
        return scheduler.stopping

    async def rotate() -> None:
        await rotation.run(stopping)

    async def expire() -> None:
        await housekeeping.expire(stopping)

    async def report_overdue() -> None:
        await housekeeping.report_overdue(stopping)

    async def purge() -> None:
        await housekeeping.purge(stopping)

    interval = settings.scheduler_interval_seconds
    scheduler.add_job("rotate", rotate, interval)
    scheduler.add_job("expire", expire, interval)
    scheduler.add_job("report_overdue", report_overdue, interval)
    scheduler.add_job("purge", purge, interval)
    scheduler.add_job("gauges", housekeeping.refresh_gauges, interval)
