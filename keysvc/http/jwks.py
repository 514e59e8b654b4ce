"""The public JWKS routes: the hot path, fetched by every authorization server.

A cached document is served without touching the database: one dict lookup,
one header comparison, and a response built from ready bytes.
"""

from __future__ import annotations

import functools
import re

from aiohttp import web
from multidict import CIMultiDict

from keysvc.errors import DatabaseUnavailable, NotAcceptable, NotFound
from keysvc.http.appkeys import JWKS_CACHE, METRICS, REMOTE_JWKS, SETTINGS, STORE
from keysvc.jwks_cache import JwksEntry, build_entry, cache_policy
from keysvc.models import KeySource
from keysvc.remote import RemoteEntry

JWK_SET_TYPE = "application/jwk-set+json"
JWK_TYPE = "application/jwk+json"
_CLIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~-]{0,127}")
_CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": "ETag",
}


async def _entry(request: web.Request, client_id: str) -> JwksEntry:
    cache = request.app[JWKS_CACHE]
    entry = cache.get(client_id)
    if entry is not None:
        request.app[METRICS].jwks_cache_hits.inc()
        if isinstance(entry, RemoteEntry) and entry.stale:
            request.app[METRICS].remote_stale_served.inc()
        return entry

    request.app[METRICS].jwks_cache_misses.inc()
    if not _CLIENT_ID.fullmatch(client_id):
        raise NotFound(f"no client {client_id[:128]!r}")

    async def build() -> JwksEntry | None:
        published = await request.app[STORE].published_set(client_id)
        if published is None:
            return None
        if published.key_source is KeySource.REMOTE:
            return await request.app[REMOTE_JWKS].build(client_id)
        settings = request.app[SETTINGS]
        policy = cache_policy(
            prepublish_period_seconds=published.prepublish_period_seconds,
            grace_period_seconds=published.grace_period_seconds,
            cap_seconds=settings.jwks_max_age_seconds,
        )
        return build_entry(published.keys, policy, ttl=settings.jwks_cache_ttl_seconds)

    try:
        loaded = await cache.load(client_id, build)
    except DatabaseUnavailable:
        # stale-if-error: a document that merely aged out beats a 503.
        stale = cache.stale(
            client_id, max_stale=request.app[SETTINGS].jwks_stale_if_error_seconds
        )
        if stale is None:
            raise
        request.app[METRICS].jwks_stale_served.inc()
        return stale
    if loaded is None:
        raise NotFound(f"no client {client_id}")

    return loaded


def _media_type(request: web.Request, preferred: str) -> str:
    """``preferred`` where the client names it, JSON where it takes JSON, else 406."""
    accept = request.headers.get("Accept")
    if not accept:
        return "application/json"
    if preferred in accept:
        return preferred
    if "application/json" in accept or "*/*" in accept or "application/*" in accept:
        return "application/json"
    raise NotAcceptable(f"this resource is {preferred} or application/json")


@functools.lru_cache(maxsize=1024)
def _shared_headers(cache_control: str) -> CIMultiDict[str]:
    # Built once a Cache-Control value and copied a request: copying a
    # CIMultiDict costs less than half of building one from a dict.
    return CIMultiDict({"Cache-Control": cache_control, "Vary": "Accept", **_CORS})


def _conditional(
    request: web.Request, body: bytes, etag: str, cache_control: str, media: str
) -> web.Response:
    headers = _shared_headers(cache_control).copy()
    headers["ETag"] = etag
    match = request.headers.get("If-None-Match")
    if match is not None and (match.strip() == "*" or etag in match):
        return web.Response(status=304, headers=headers)

    headers["Content-Type"] = media
    return web.Response(body=body, headers=headers)


async def get_jwks(request: web.Request) -> web.Response:
    """GET /clients/{client_id}/jwks.json"""
    media = _media_type(request, JWK_SET_TYPE)
    entry = await _entry(request, request.match_info["client_id"])

    return _conditional(request, entry.body, entry.etag, entry.cache_control(), media)


async def get_jwk(request: web.Request) -> web.Response:
    """GET /clients/{client_id}/jwks/{kid}"""
    media = _media_type(request, JWK_TYPE)
    client_id = request.match_info["client_id"]
    kid = request.match_info["kid"]
    entry = await _entry(request, client_id)
    found = entry.keys.get(kid)
    if found is None and isinstance(entry, RemoteEntry):
        # A kid the client added since the last fetch: refetch, rate-limited.
        if await request.app[REMOTE_JWKS].refetch_for_kid(client_id):
            entry = await _entry(request, client_id)
            found = entry.keys.get(kid)
    if found is None:
        raise NotFound(f"client {client_id} publishes no key {kid[:128]!r}")

    body, etag = found
    return _conditional(request, body, etag, entry.cache_control(), media)


async def preflight(request: web.Request) -> web.Response:
    """CORS preflight: browsers ask before sending If-None-Match cross-origin."""
    return web.Response(
        status=204,
        headers={
            **_CORS,
            "Access-Control-Allow-Methods": "GET, OPTIONS",
            "Access-Control-Allow-Headers": "If-None-Match, Accept",
            "Access-Control-Max-Age": "86400",
        },
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/clients/{client_id}/jwks.json", get_jwks, allow_head=False)
    app.router.add_route("OPTIONS", "/clients/{client_id}/jwks.json", preflight)
    app.router.add_get("/clients/{client_id}/jwks/{kid}", get_jwk, allow_head=False)
    app.router.add_route("OPTIONS", "/clients/{client_id}/jwks/{kid}", preflight)
