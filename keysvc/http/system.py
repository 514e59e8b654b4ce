"""Health, readiness, metrics and the OpenAPI document."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from keysvc import migrations
from keysvc.errors import KeysvcError
from keysvc.http.appkeys import METRICS, SETTINGS, STATUS, STORE
from keysvc.http.openapi import document

READY_TIMEOUT_SECONDS = 1.0


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"}, headers={"Cache-Control": "no-store"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when the database answers, is migrated, and the listener is up."""
    status = request.app[STATUS]
    checks = {
        "database": status.database,
        "migrations": False,
        "listener": status.listening,
        "draining": status.draining,
    }
    if status.database:
        try:
            async with asyncio.timeout(READY_TIMEOUT_SECONDS):
                version = await request.app[STORE].schema_version()
            checks["migrations"] = version == migrations.code_version()
        except (KeysvcError, TimeoutError):
            checks["database"] = False
    ready = (
        checks["database"]
        and checks["migrations"]
        and checks["listener"]
        and not status.draining
    )
    request.app[METRICS].ready.set(1 if ready else 0)

    return web.json_response(
        {"ready": ready, "checks": checks},
        status=200 if ready else 503,
        headers={"Cache-Control": "no-store"},
    )


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)

    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[_OPENAPI], content_type="application/json")


_OPENAPI = web.AppKey("openapi", bytes)


def add_routes(app: web.Application) -> None:
    app[_OPENAPI] = json.dumps(document()).encode()
    r = app.router
    r.add_get("/healthz", healthz, allow_head=False)
    r.add_get("/readyz", readyz, allow_head=False)
    r.add_get("/openapi.json", openapi, allow_head=False)
    if app[SETTINGS].metrics_port is None:
        r.add_get("/metrics", metrics, allow_head=False)
