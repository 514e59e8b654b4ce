"""Running the app: sockets, signals, and a graceful drain on SIGTERM.

On SIGTERM or SIGINT readiness turns false at once; after
``KEYSVC_SHUTDOWN_DELAY`` (time for a load balancer to notice) the listening
socket closes, in-flight requests get ``KEYSVC_SHUTDOWN_TIMEOUT`` to finish,
then the cleanup contexts close the scheduler, listener, workers and pools.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal

from aiohttp import web

from keysvc import __version__
from keysvc.http.appkeys import METRICS, STATUS
from keysvc.http.system import metrics as metrics_handler
from keysvc.settings import Settings

logger = logging.getLogger(__name__)


def _metrics_app(main: web.Application) -> web.Application:
    """A second app on KEYSVC_METRICS_PORT that serves only /metrics."""
    app = web.Application()
    app[METRICS] = main[METRICS]
    app.router.add_get("/metrics", metrics_handler, allow_head=False)

    return app


async def serve(app: web.Application, settings: Settings) -> None:
    """Serve until a signal, then drain and close everything."""
    runner = web.AppRunner(
        app, access_log=None, shutdown_timeout=settings.shutdown_timeout_seconds
    )
    await runner.setup()
    # What start-up allocated (modules, pools, settings) lives as long as the
    # process: keep it out of every later collection the hot path triggers.
    gc.freeze()
    runners = [runner]
    try:
        await web.TCPSite(runner, settings.host, settings.port).start()
        if settings.metrics_port is not None:
            side = web.AppRunner(_metrics_app(app), access_log=None)
            await side.setup()
            runners.append(side)
            await web.TCPSite(side, settings.host, settings.metrics_port).start()
        logger.info(
            "keysvc %s listening on http://%s:%d%s",
            __version__,
            settings.host,
            settings.port,
            f" (metrics on port {settings.metrics_port})"
            if settings.metrics_port is not None
            else "",
        )

        await _until_signalled()
        app[STATUS].draining = True
        app[METRICS].ready.set(0)
        logger.info(
            "stopping: readiness is false; draining in %.1f s",
            settings.shutdown_delay_seconds,
        )
        await asyncio.sleep(settings.shutdown_delay_seconds)
    finally:
        for each in reversed(runners):
            await each.cleanup()
    logger.info("keysvc stopped")


async def _until_signalled() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
