"""RFC 9457 problem documents, the only shape an error takes on the wire."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from keysvc.errors import (
    PROBLEM_BASE,
    Conflict,
    KeysvcError,
    RateLimited,
    Unauthorized,
    Unavailable,
)

PROBLEM_TYPE = "application/problem+json"

# aiohttp's own refusals (unknown route, wrong method, body too large) mapped
# to the same vocabulary as ours.
_HTTP_CODES = {
    400: "invalid_request",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def problem(
    status: int,
    code: str,
    title: str,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> web.Response:
    body = {
        "type": PROBLEM_BASE + code,
        "title": title,
        "status": status,
        "detail": detail,
        **extra,
    }

    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type=PROBLEM_TYPE,
        headers=headers,
    )


def from_error(error: KeysvcError) -> web.Response:
    headers: dict[str, str] = {}
    retry_after = None
    if isinstance(error, Conflict | RateLimited | Unavailable):
        retry_after = error.retry_after
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    if isinstance(error, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="keysvc"'
    extra = {"retry_after": retry_after} if retry_after is not None else {}
    status = error.status if 400 <= error.status < 600 else 500

    return problem(
        status, error.code, error.title, error.detail, headers=headers, **extra
    )


def from_http_exception(exc: web.HTTPException) -> web.Response:
    code = _HTTP_CODES.get(exc.status, "http_error")
    headers = {}
    if "Allow" in exc.headers:
        headers["Allow"] = exc.headers["Allow"]
    detail = {
        404: "no such resource",
        405: "this resource does not take that method",
        413: "the request body is larger than this service accepts",
    }.get(exc.status, exc.reason)

    return problem(exc.status, code, exc.reason, detail, headers=headers)
