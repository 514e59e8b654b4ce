"""Bearer tokens: who is calling, and may they act on this client."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from aiohttp import web

from keysvc.errors import Forbidden, Unauthorized
from keysvc.http.appkeys import ADMIN_TOKEN_HASH, STORE, TOKENS, VERIFIERS
from keysvc.tokens import token_hash


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller: the admin, or one client."""

    client_id: str | None

    @property
    def is_admin(self) -> bool:
        return self.client_id is None

    @property
    def actor(self) -> str:
        return "admin" if self.client_id is None else f"client:{self.client_id}"


ADMIN = Caller(None)


def bearer(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("send a bearer token in the Authorization header")

    return token.strip()


async def client_for(request: web.Request, digest: bytes) -> str | None:
    """The client whose token hashes to ``digest``, from memory when it can."""
    tokens = request.app[TOKENS]
    client_id = tokens.get(digest)
    if client_id is None:
        client_id = await request.app[STORE].client_for_token(digest)
        if client_id is not None:
            tokens.put(digest, client_id)

    return client_id


async def authenticate(request: web.Request) -> Caller:
    """Resolve the bearer token to the admin or a client.

    An unknown token is a 401; a verifier token, valid but of the wrong kind
    for these routes, is a 403.
    """
    token = bearer(request)
    digest = token_hash(token)
    if hmac.compare_digest(digest, request.app[ADMIN_TOKEN_HASH]):
        return ADMIN
    client_id = await client_for(request, digest)
    if client_id is not None:
        return Caller(client_id)
    if await request.app[VERIFIERS].for_token(token) is not None:
        raise Forbidden("a verifier token is only good for POST /verify")

    raise Unauthorized("the bearer token is not valid")


async def require_admin(request: web.Request) -> Caller:
    caller = await authenticate(request)
    if not caller.is_admin:
        raise Forbidden("this route needs the admin token")

    return caller


async def require_client(request: web.Request, client_id: str) -> Caller:
    """The admin, or the client named in the path; another client gets 403."""
    caller = await authenticate(request)
    if not caller.is_admin and caller.client_id != client_id:
        raise Forbidden("a client token acts only on its own client")

    return caller
