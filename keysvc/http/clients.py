"""Admin routes for clients, and each client's own key routes."""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from aiohttp import web

from keysvc.errors import InvalidRequest, NotFound
from keysvc.http import render
from keysvc.http.appkeys import LIFECYCLE, LIMITS, STORE
from keysvc.http.auth import require_admin, require_client
from keysvc.http.schemas import (
    CREATE_CLIENT,
    IMPORT_KEY,
    PATCH_CLIENT,
    ROTATE,
    BodyValidator,
    read_json,
)
from keysvc.lifecycle import ClientRequest
from keysvc.models import AuthMethod, KeySource, KeyState
from keysvc.periods import parse_period

_CLIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~-]{0,127}")
_KID = re.compile(r"[A-Za-z0-9_-]{1,128}")

_create = BodyValidator(CREATE_CLIENT)
_patch = BodyValidator(PATCH_CLIENT)
_rotate = BodyValidator(ROTATE)
_import = BodyValidator(IMPORT_KEY)

_PERIOD_FIELDS = {
    "rotation_period": "rotation_period_seconds",
    "prepublish_period": "prepublish_period_seconds",
    "grace_period": "grace_period_seconds",
}
MAX_PAGE = 500
DEFAULT_PAGE = 100


def _client_id(request: web.Request) -> str:
    client_id = request.match_info["client_id"]
    if not _CLIENT_ID.fullmatch(client_id):
        raise NotFound(f"no client {client_id[:128]!r}")

    return client_id


def _json(body: Any, status: int = 200, **headers: str) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers={"Cache-Control": "no-store", **headers},
    )


def _periods(body: dict[str, Any]) -> dict[str, int]:
    out = {}
    for name, column in _PERIOD_FIELDS.items():
        if name in body:
            try:
                out[column] = parse_period(body[name])
            except ValueError as exc:
                raise InvalidRequest(f"{name}: {exc}") from exc

    return out


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", str(DEFAULT_PAGE))
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        raise InvalidRequest(f"limit must be an integer from 1 to {MAX_PAGE}")

    return int(raw)


def _cursor(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


def _uncursor(raw: str) -> str:
    try:
        value = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequest("cursor is not one this service issued") from exc
    if not _CLIENT_ID.fullmatch(value):
        raise InvalidRequest("cursor is not one this service issued")

    return value


# -- admin ---------------------------------------------------------------------


async def create_client(request: web.Request) -> web.Response:
    caller = await require_admin(request)
    body = await read_json(request, _create)

    periods = _periods(body)
    created = await request.app[LIFECYCLE].create_client(
        ClientRequest(
            client_id=body["client_id"],
            auth_method=AuthMethod(body.get("auth_method", "private_key_jwt")),
            key_source=KeySource(body.get("key_source", "generated")),
            alg=body.get("alg"),
            key_size=body.get("key_size"),
            jwks_uri=body.get("jwks_uri"),
            **periods,
        ),
        actor=caller.actor,
    )

    answer: dict[str, Any] = {
        "client": render.client(created.client),
        "active": None,
        "next": None,
        "client_token": created.client_token,
    }
    for key in created.keys:
        answer[key.state.value] = render.key(key)
    if created.client_secret is not None:
        answer["client_secret"] = created.client_secret
    location = f"/clients/{created.client.client_id}"

    return _json(answer, 201, Location=location)


async def list_clients(request: web.Request) -> web.Response:
    await require_admin(request)
    limit = _limit(request)
    raw_cursor = request.query.get("cursor")
    after = _uncursor(raw_cursor) if raw_cursor else None

    clients = await request.app[STORE].list_clients(after=after, limit=limit + 1)
    page = clients[:limit]
    more = len(clients) > limit

    return _json(
        {
            "clients": [render.client(c) for c in page],
            "next_cursor": _cursor(page[-1].client_id) if more else None,
        }
    )


async def get_client(request: web.Request) -> web.Response:
    await require_admin(request)
    client_id = _client_id(request)
    client = await request.app[STORE].get_client(client_id)
    if client is None:
        raise NotFound(f"no client {client_id}")

    return _json({"client": render.client(client)})


async def patch_client(request: web.Request) -> web.Response:
    caller = await require_admin(request)
    client_id = _client_id(request)
    body = await read_json(request, _patch)

    changes: dict[str, Any] = _periods(body)
    for name in ("alg", "key_size", "jwks_uri"):
        if name in body:
            changes[name] = body[name]
    client = await request.app[LIFECYCLE].update_policy(
        client_id, changes, actor=caller.actor
    )

    return _json({"client": render.client(client)})


async def delete_client(request: web.Request) -> web.Response:
    caller = await require_admin(request)
    client_id = _client_id(request)
    await request.app[LIFECYCLE].delete_client(client_id, actor=caller.actor)

    return web.Response(status=204)


async def list_events(request: web.Request) -> web.Response:
    await require_admin(request)
    client_id = _client_id(request)
    limit = _limit(request)
    raw_after = request.query.get("after")
    if raw_after is not None and not (raw_after.isdigit() and len(raw_after) < 19):
        raise InvalidRequest("after must be an event_id")
    after = int(raw_after) if raw_after else None

    events = await request.app[STORE].events(client_id, after=after, limit=limit)
    if (
        not events
        and after is None
        and await request.app[STORE].get_client(client_id) is None
    ):
        raise NotFound(f"no client {client_id}")

    return _json(
        {
            "events": [render.event(e) for e in events],
            "next_after": events[-1].event_id if len(events) == limit else None,
        }
    )


# -- a client's own keys -------------------------------------------------------


async def list_keys(request: web.Request) -> web.Response:
    client_id = _client_id(request)
    await require_client(request, client_id)
    store = request.app[STORE]
    records = await store.list_keys(client_id)
    if not records and await store.get_client(client_id) is None:
        raise NotFound(f"no client {client_id}")

    return _json({"keys": [render.key(k) for k in records]})


async def rotate(request: web.Request) -> web.Response:
    client_id = _client_id(request)
    caller = await require_client(request, client_id)
    body = await read_json(request, _rotate)
    request.app[LIMITS].rotations.check(client_id)

    after = await request.app[LIFECYCLE].rotate(
        client_id, force=bool(body.get("force", False)), actor=caller.actor
    )

    return _json(
        {
            state.value: render.key(after[state]) if state in after else None
            for state in (KeyState.ACTIVE, KeyState.NEXT, KeyState.RETIRED)
        },
        201,
    )


async def import_key(request: web.Request) -> web.Response:
    client_id = _client_id(request)
    caller = await require_client(request, client_id)
    body = await read_json(request, _import)

    record = await request.app[LIFECYCLE].import_key(
        client_id,
        body["jwk"],
        activate=bool(body.get("activate", False)),
        actor=caller.actor,
    )

    return _json({"key": render.key(record)}, 201)


async def revoke(request: web.Request) -> web.Response:
    client_id = _client_id(request)
    caller = await require_client(request, client_id)
    kid = request.match_info["kid"]
    if not _KID.fullmatch(kid):
        raise NotFound(f"client {client_id} has no key {kid[:128]!r}")
    await read_json(request, _empty_body)

    record = await request.app[LIFECYCLE].revoke(client_id, kid, actor=caller.actor)

    return _json({"key": render.key(record)})


_empty_body = BodyValidator({"type": "object", "additionalProperties": False})


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/clients", create_client)
    r.add_get("/clients", list_clients, allow_head=False)
    r.add_get("/clients/{client_id}", get_client, allow_head=False)
    r.add_patch("/clients/{client_id}", patch_client)
    r.add_delete("/clients/{client_id}", delete_client)
    r.add_get("/clients/{client_id}/events", list_events, allow_head=False)
    r.add_get("/clients/{client_id}/keys", list_keys, allow_head=False)
    r.add_post("/clients/{client_id}/keys", import_key)
    r.add_post("/clients/{client_id}/keys/rotate", rotate)
    r.add_post("/clients/{client_id}/keys/{kid}/revoke", revoke)
