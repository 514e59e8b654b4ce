"""The aiohttp application factory and the resources it owns.

Each resource (database, key generator, listener) is opened and closed by one
cleanup context, in order, so a failed start unwinds what it opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import replace

import asyncpg
from aiohttp import web

from keysvc import embedded, migrations, verifiers
from keysvc.db import CONNECTION_FAULTS, create_pool
from keysvc.embedded import dev_secrets
from keysvc.errors import ConfigError
from keysvc.http import assertions, clients, jwks, system
from keysvc.http.appkeys import (
    ADMIN_TOKEN_HASH,
    CLIENT_CACHES,
    GENERATOR,
    JWKS_CACHE,
    LIFECYCLE,
    LIMITS,
    METRICS,
    REMOTE_JWKS,
    REMOTE_RESOLVER,
    SCHEDULER,
    SETTINGS,
    STATUS,
    STORE,
    TOKENS,
    VERIFIER,
    VERIFIERS,
    ClientCaches,
    Limits,
    Status,
)
from keysvc.http.middleware import observe
from keysvc.jobs import register_jobs
from keysvc.jwks_cache import JwksCache
from keysvc.keygen import KeyGenerator
from keysvc.lifecycle import NOTIFY_CHANNEL, Defaults, Lifecycle
from keysvc.metrics import Metrics
from keysvc.ratelimit import RateLimiter
from keysvc.remote import RemoteJwks
from keysvc.remote_fetch import Fetcher
from keysvc.remote_guard import AddressGuard
from keysvc.scheduler import Scheduler
from keysvc.sealing import Sealer
from keysvc.secret import Secret
from keysvc.settings import Settings
from keysvc.store import Store
from keysvc.tokens import TokenCache, token_hash

logger = logging.getLogger(__name__)

LISTENER_CHECK_SECONDS = 5.0
LISTENER_RETRY_SECONDS = 1.0
# How the listener's backend shows in pg_stat_activity (the pool's is keysvc).
LISTENER_APPLICATION_NAME = "keysvc-listener"


def with_dev_secrets(settings: Settings) -> Settings:
    """In the embedded default, fill a missing admin token and KEK from files."""
    if not settings.embedded or (settings.admin_token and settings.keks):
        return settings

    secrets = dev_secrets(settings.data_dir)
    logger.warning(
        "DEVELOPMENT ONLY: %s admin token and KEK in %s (admin token file: %s); "
        "set KEYSVC_DATABASE_URL, KEYSVC_ADMIN_TOKEN and KEYSVC_KEKS in production",
        "generated" if secrets.generated else "using the",
        settings.data_dir,
        secrets.admin_token_file,
    )

    return replace(
        settings,
        admin_token=settings.admin_token or secrets.admin_token,
        keks=settings.keks or secrets.keks,
    )


def create_app(
    settings: Settings,
    *,
    metrics: Metrics | None = None,
    generator: KeyGenerator | None = None,
) -> web.Application:
    """Build the application; nothing is opened until it starts.

    A ``generator`` passed in is shared, and left open at cleanup (tests).
    """
    settings = with_dev_secrets(settings)
    if settings.admin_token is None or not settings.keks:
        raise ConfigError("KEYSVC_ADMIN_TOKEN and KEYSVC_KEKS are required")

    app = web.Application(
        middlewares=[observe], client_max_size=settings.max_body_bytes
    )
    app[SETTINGS] = settings
    app[METRICS] = metrics or Metrics()
    app[STATUS] = Status()
    app[ADMIN_TOKEN_HASH] = token_hash(settings.admin_token.reveal())
    app[LIMITS] = Limits(
        rotations=RateLimiter(settings.rotation_rate, what="rotations"),
        assertions=RateLimiter(settings.assertion_rate, what="assertions"),
    )
    app[JWKS_CACHE] = JwksCache(
        ttl=settings.jwks_cache_ttl_seconds, max_entries=settings.jwks_cache_max_entries
    )
    # Every per-client cache joins this, so that a change drops them all.
    app[TOKENS] = TokenCache()
    app[CLIENT_CACHES] = ClientCaches([app[JWKS_CACHE], app[TOKENS]])
    # Created here, started by its cleanup context: other parts of the app
    # may add their jobs before or after it starts.
    app[SCHEDULER] = Scheduler(app[METRICS])

    app.cleanup_ctx.append(_database)
    if generator is None:
        app.cleanup_ctx.append(_key_generator)
    else:
        app[GENERATOR] = generator
    app.cleanup_ctx.append(_lifecycle)
    app.cleanup_ctx.append(assertions.services)
    app.cleanup_ctx.append(_remote_jwks)
    app.cleanup_ctx.append(_listener)
    app.cleanup_ctx.append(_scheduler)
    app.on_shutdown.append(_drain)

    # aiohttp tries the routes under one path prefix in the order they were
    # added: the hot ones (JWKS, then signing) go first.
    jwks.add_routes(app)
    assertions.add_routes(app)
    clients.add_routes(app)
    system.add_routes(app)

    return app


async def _database(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    async with embedded.database(settings.database_url, settings.data_dir) as dsn:
        app[_DSN] = dsn
        pool = await create_pool(
            dsn,
            min_size=settings.db_pool_min,
            max_size=settings.db_pool_max,
            timeout_seconds=settings.db_timeout_seconds,
        )
        try:
            async with pool.acquire() as conn:
                await migrations.migrate(conn)
            app[STORE] = Store(pool)
            app[STATUS].database = True
            yield
        finally:
            app[STATUS].database = False
            await asyncio.wait_for(pool.close(), settings.shutdown_timeout_seconds)


async def _key_generator(app: web.Application) -> AsyncIterator[None]:
    generator = KeyGenerator(app[SETTINGS].keygen_workers, app[METRICS])
    app[GENERATOR] = generator
    try:
        await generator.warm_up()
        yield
    finally:
        await asyncio.to_thread(generator.close)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    lifecycle = Lifecycle(
        app[STORE],
        Sealer(settings.keks),
        app[GENERATOR],
        Defaults(
            alg=settings.default_alg,
            rsa_key_size=settings.default_rsa_key_size,
            rotation_period_seconds=settings.default_rotation_period_seconds,
            prepublish_period_seconds=settings.default_prepublish_period_seconds,
            grace_period_seconds=settings.default_grace_period_seconds,
        ),
        app[METRICS],
    )
    lifecycle.on_change.append(app[CLIENT_CACHES].invalidate)
    app[LIFECYCLE] = lifecycle
    yield


async def _remote_jwks(app: web.Application) -> AsyncIterator[None]:
    """The one client session that fetches jwks_uri documents, and its cache."""
    settings = app[SETTINGS]
    fetcher = Fetcher(
        AddressGuard(settings.remote_allow, allow_http=settings.remote_allow_http),
        timeout_seconds=settings.remote_timeout_seconds,
        connect_timeout_seconds=settings.remote_connect_timeout_seconds,
        max_bytes=settings.remote_max_bytes,
        resolver=app.get(REMOTE_RESOLVER),
    )
    await fetcher.open()
    remote = RemoteJwks(app[STORE], fetcher, app[JWKS_CACHE], app[METRICS], settings)
    app[REMOTE_JWKS] = remote
    app[LIFECYCLE].check_jwks_uri = remote.check_uri
    if VERIFIER in app:
        app[VERIFIER].remote = remote
    app[SCHEDULER].add_job(
        "remote_jwks",
        remote.refresh_due,
        min(
            settings.scheduler_interval_seconds,
            settings.remote_refetch_interval_seconds,
        ),
    )
    try:
        yield
    finally:
        await remote.close()
        await fetcher.close()


async def _listener(app: web.Application) -> AsyncIterator[None]:
    listening = asyncio.Event()
    task = asyncio.create_task(_listen_forever(app, listening), name="keysvc-listener")
    try:
        # Serve once LISTEN is in place, so that nothing is cached unwatched;
        # a listener that cannot connect yet leaves the replica up, not ready.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(listening.wait(), app[SETTINGS].db_timeout_seconds)
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _scheduler(app: web.Application) -> AsyncIterator[None]:
    settings, scheduler = app[SETTINGS], app[SCHEDULER]
    if not settings.scheduler:
        logger.info("scheduler off (KEYSVC_SCHEDULER=0): this replica only serves")
        yield
        return

    register_jobs(
        scheduler,
        lifecycle=app[LIFECYCLE],
        generator=app[GENERATOR],
        metrics=app[METRICS],
        settings=settings,
    )
    scheduler.start()
    try:
        yield
    finally:
        await scheduler.shutdown(settings.shutdown_timeout_seconds)


async def _listen_forever(app: web.Application, listening: asyncio.Event) -> None:
    """LISTEN for key changes; after any reconnect, drop every per-client cache."""
    settings, status, cache = app[SETTINGS], app[STATUS], app[CLIENT_CACHES]
    connected_before = False

    def on_notify(_conn: object, _pid: int, _channel: str, client_id: object) -> None:
        cache.invalidate(str(client_id))

    def on_verifier(_conn: object, _pid: int, _channel: str, verifier: object) -> None:
        app[VERIFIERS].invalidate(str(verifier))

    while True:
        conn = None
        try:
            conn = await asyncpg.connect(
                app[_DSN].reveal(),
                timeout=settings.db_timeout_seconds,
                server_settings={"application_name": LISTENER_APPLICATION_NAME},
            )
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
            await conn.add_listener(NOTIFY_CHANNEL, on_notify)
            await conn.add_listener(verifiers.NOTIFY_CHANNEL, on_verifier)
            # Whatever was cached before LISTEN took effect may have missed a
            # notification, at start as after a reconnect: drop it all.
            cache.clear()
            app[VERIFIERS].clear()
            if connected_before:
                logger.warning("listener reconnected: dropped every cached key set")
            connected_before = True
            status.listening = True
            listening.set()
            while not conn.is_closed():
                # Woken at once when the server ends the connection; the
                # ping finds a connection that died without a word.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), LISTENER_CHECK_SECONDS)
                if lost.is_set():
                    break
                await conn.execute("SELECT 1", timeout=settings.db_timeout_seconds)
            logger.warning("listener connection closed by the server")
        except CONNECTION_FAULTS as exc:
            logger.warning("listener connection lost: %s", type(exc).__name__)
        finally:
            status.listening = False
            if conn is not None and not conn.is_closed():
                conn.terminate()
        await asyncio.sleep(LISTENER_RETRY_SECONDS)


async def _drain(app: web.Application) -> None:
    app[STATUS].draining = True
    logger.info("shutting down: readiness is now false")


_DSN = web.AppKey("dsn", Secret)
