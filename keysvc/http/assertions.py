"""Client assertion routes: signing, secret rotation, verifiers and /verify.

``/verify`` answers a refused assertion with ``200 {"valid": false}``: the
verifier asked a question and that is its answer. Only a malformed request
is a 400. Every response that carries a credential (an assertion, a secret,
a verifier token) is marked ``no-store``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from keysvc.assertions import ASSERTION_TYPE
from keysvc.errors import (
    AssertionRejected,
    Forbidden,
    InvalidRequest,
    NotFound,
    Unauthorized,
)
from keysvc.http import render
from keysvc.http.appkeys import (
    ADMIN_TOKEN_HASH,
    CLIENT_CACHES,
    LIFECYCLE,
    LIMITS,
    METRICS,
    SETTINGS,
    SIGNER,
    STORE,
    VERIFIER,
    VERIFIERS,
)
from keysvc.http.auth import bearer, client_for, require_admin, require_client
from keysvc.http.schemas import (
    CLIENT_ID_PATTERN,
    CREATE_VERIFIER,
    SIGN_ASSERTION,
    VERIFIER_ID_PATTERN,
    VERIFY,
    BodyValidator,
    read_json,
)
from keysvc.periods import parse_period
from keysvc.signing import AssertionSigner
from keysvc.store import VerifierRecord
from keysvc.tokens import matches, token_hash
from keysvc.verification import AssertionVerifier, DbClock
from keysvc.verifiers import Verifiers

_CLIENT_ID = re.compile(CLIENT_ID_PATTERN)
_VERIFIER_ID = re.compile(VERIFIER_ID_PATTERN)

_sign = BodyValidator(SIGN_ASSERTION)
_create_verifier = BodyValidator(CREATE_VERIFIER)
_verify = BodyValidator(VERIFY)
_empty = BodyValidator({"type": "object", "additionalProperties": False})


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def _client_id(request: web.Request) -> str:
    client_id = request.match_info["client_id"]
    if not _CLIENT_ID.fullmatch(client_id):
        raise NotFound(f"no client {client_id[:128]!r}")

    return client_id


def _at(unix_seconds: int) -> str:
    # What render.timestamp writes for a whole second, without a datetime.
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix_seconds))


def _verifier_json(record: VerifierRecord) -> dict[str, Any]:
    return {
        "verifier_id": record.verifier_id,
        "name": record.name,
        "audiences": list(record.audiences),
        "require_typ": record.require_typ,
        "created_at": render.timestamp(record.created_at),
    }


async def _calling_verifier(request: web.Request) -> VerifierRecord:
    token = bearer(request)
    if matches(token, request.app[ADMIN_TOKEN_HASH]):
        raise Forbidden("/verify takes a verifier token, not the admin token")
    verifier = await request.app[VERIFIERS].for_token(token)
    if verifier is None:
        if await client_for(request, token_hash(token)) is not None:
            raise Forbidden("/verify takes a verifier token, not a client token")
        raise Unauthorized("the bearer token is not a verifier token")

    return verifier


def _lifetime(body: dict[str, Any]) -> int | None:
    # The schema admits '9999999999w'; only the parser knows it is past the bound.
    if "lifetime" not in body:
        return None
    try:
        return parse_period(body["lifetime"])
    except ValueError as exc:
        raise InvalidRequest(f"lifetime: {exc}") from exc


# -- a client's assertions and secret ------------------------------------------


async def sign(request: web.Request) -> web.Response:
    """POST /clients/{client_id}/assertions"""
    client_id = _client_id(request)
    await require_client(request, client_id)
    body = await read_json(request, _sign)
    request.app[LIMITS].assertions.check(client_id)

    signer = request.app[SIGNER]
    lifetime = _lifetime(body)
    signed = await signer.sign(
        client_id,
        audience=body["audience"],
        lifetime_seconds=signer.lifetime(lifetime),
        explicit_typ=bool(body.get("explicit_typ", False)),
    )

    return _json(
        {
            "client_assertion": signed.token,
            "client_assertion_type": ASSERTION_TYPE,
            "expires_at": _at(signed.expires_at),
        }
    )


async def rotate_secret(request: web.Request) -> web.Response:
    """POST /clients/{client_id}/secret/rotate"""
    client_id = _client_id(request)
    caller = await require_client(request, client_id)
    await read_json(request, _empty)

    issued = await request.app[LIFECYCLE].rotate_secret(client_id, actor=caller.actor)

    return _json(
        {
            "client_secret": issued.secret,
            "secret_id": issued.secret_id,
            "previous_valid_until": render.timestamp(issued.previous_valid_until),
        },
        201,
    )


# -- verifiers -----------------------------------------------------------------


async def create_verifier(request: web.Request) -> web.Response:
    caller = await require_admin(request)
    body = await read_json(request, _create_verifier)

    created = await request.app[VERIFIERS].create(
        body["name"],
        body["audiences"],
        require_typ=bool(body.get("require_typ", False)),
        actor=caller.actor,
    )

    return _json(
        {
            "verifier": _verifier_json(created.verifier),
            "verifier_token": created.verifier_token,
        },
        201,
    )


async def list_verifiers(request: web.Request) -> web.Response:
    await require_admin(request)
    verifiers = await request.app[VERIFIERS].list()

    return _json({"verifiers": [_verifier_json(v) for v in verifiers]})


async def delete_verifier(request: web.Request) -> web.Response:
    caller = await require_admin(request)
    verifier_id = request.match_info["verifier_id"]
    if not _VERIFIER_ID.fullmatch(verifier_id):
        raise NotFound(f"no verifier {verifier_id[:64]!r}")
    await request.app[VERIFIERS].delete(verifier_id, actor=caller.actor)

    return web.Response(status=204)


async def verify(request: web.Request) -> web.Response:
    """POST /verify: every check of RFC 7523 §3 and RFC 8725, cheapest first."""
    verifier = await _calling_verifier(request)
    service = request.app[VERIFIER]
    service.admit(verifier)
    body = await read_json(request, _verify)

    policy = service.policy(
        verifier, audience=body.get("audience"), client_id=body.get("client_id")
    )
    try:
        verified = await service.verify(body["client_assertion"], policy)
    except AssertionRejected as exc:
        return _json({"valid": False, "error": "invalid_client", "reason": exc.reason})

    return _json(
        {
            "valid": True,
            "client_id": verified.client_id,
            "kid": verified.kid,
            "alg": verified.alg,
            "expires_at": _at(verified.expires_at),
        }
    )


# -- wiring --------------------------------------------------------------------


async def services(app: web.Application) -> AsyncIterator[None]:
    """The signer, the verifier and the verifier registry (a cleanup context)."""
    settings, store, metrics = app[SETTINGS], app[STORE], app[METRICS]
    sealer = app[LIFECYCLE].sealer
    clock = DbClock()
    await clock.sync(store)

    verifier = AssertionVerifier(
        store,
        sealer,
        clock,
        metrics,
        max_lifetime_seconds=settings.max_assertion_lifetime_seconds,
        cache_ttl_seconds=settings.jwks_cache_ttl_seconds,
        max_entries=settings.jwks_cache_max_entries,
    )
    signer = AssertionSigner(
        store,
        sealer,
        clock,
        metrics,
        max_lifetime_seconds=settings.max_assertion_lifetime_seconds,
        ttl_seconds=settings.jwks_cache_ttl_seconds,
    )
    app[CLIENT_CACHES].add(verifier)
    app[CLIENT_CACHES].add(signer)
    app[VERIFIER], app[SIGNER], app[VERIFIERS] = verifier, signer, Verifiers(store)
    yield


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/clients/{client_id}/assertions", sign)
    r.add_post("/clients/{client_id}/secret/rotate", rotate_secret)
    r.add_post("/verifiers", create_verifier)
    r.add_get("/verifiers", list_verifiers, allow_head=False)
    r.add_delete("/verifiers/{verifier_id}", delete_verifier)
    r.add_post("/verify", verify)
