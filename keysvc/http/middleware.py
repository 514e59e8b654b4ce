"""The one middleware: request id, errors as problems, metrics, access log."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from keysvc.errors import KeysvcError
from keysvc.http import problems
from keysvc.http.appkeys import METRICS
from keysvc.logs import request_id_var
from keysvc.metrics import child

access_logger = logging.getLogger("keysvc.access")
logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def _route(request: web.Request) -> str:
    info = request.match_info
    if info.http_exception is not None:
        return "unmatched"
    resource = info.route.resource

    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer every failure as a problem+json and count every request."""
    started = time.perf_counter()
    given = request.headers.get("X-Request-ID")
    request_id = (
        given if given and _REQUEST_ID.fullmatch(given) else os.urandom(8).hex()
    )
    token = request_id_var.set(request_id)
    try:
        try:
            response = await handler(request)
        except KeysvcError as exc:
            response = problems.from_error(exc)
            if exc.status >= 500:
                logger.error("%s failed: %s", _route(request), exc.detail)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = problems.from_http_exception(exc)
        except Exception:
            # The one catch-all: a bug must not reach the caller as a trace.
            logger.exception(
                "unhandled error on %s %s", request.method, _route(request)
            )
            response = problems.problem(
                500, "internal", "Internal error", "an unexpected error occurred"
            )

        response.headers["X-Request-ID"] = request_id
        _record(request, response.status, started)

        return response
    finally:
        request_id_var.reset(token)


def _record(request: web.Request, status: int, started: float) -> None:
    elapsed = time.perf_counter() - started
    route = _route(request)
    metrics = request.app[METRICS]
    child(metrics.http_requests, route, request.method, str(status)).inc()
    child(metrics.http_duration, route, request.method).observe(elapsed)
    if access_logger.isEnabledFor(logging.INFO):
        access_logger.info(
            "%s %s %d %.1f ms",
            request.method,
            route,
            status,
            elapsed * 1000,
            extra={
                "route": route,
                "method": request.method,
                "status": status,
                "duration_ms": round(elapsed * 1000, 3),
            },
        )
