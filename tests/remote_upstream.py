"""Test doubles for client-hosted JWKS: an upstream on loopback, a fake resolver.

The upstream is a real aiohttp server on a loopback address whose answers a
test changes between requests. The resolver maps test host names to fixed
addresses, so a test can make a name resolve to 10.0.0.1 and see the guard
refuse it, without any packet leaving the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestServer
from jwcrypto import jwk


def signing_key(alg: str = "ES256", kid: str | None = None) -> dict[str, Any]:
    """A fresh private JWK as a dict; :func:`public` strips it."""
    if alg.startswith(("RS", "PS")):
        key = jwk.JWK.generate(kty="RSA", size=2048)
    elif alg == "EdDSA":
        key = jwk.JWK.generate(kty="OKP", crv="Ed25519")
    else:
        crv = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}[alg]
        key = jwk.JWK.generate(kty="EC", crv=crv)
    private: dict[str, Any] = json.loads(key.export_private())
    private["alg"] = alg
    private["kid"] = kid or key.thumbprint()

    return private


def public(private: dict[str, Any]) -> dict[str, Any]:
    members = ("kty", "kid", "use", "alg", "crv", "x", "y", "n", "e")
    return {name: private[name] for name in members if name in private}


class Upstream:
    """A client's JWKS host whose behaviour a test sets before each request."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.document: Any = {"keys": []}
        self.headers: dict[str, str] = {"Cache-Control": "max-age=300"}
        self.behaviour = "serve"
        self.status = 200
        self.raw = b""
        self.raw_headers: dict[str, str] = {}
        self.redirect_to = ""
        self.delay = 0.0
        self.etag: str | None = None
        self.hits = 0
        self.if_none_match: list[str | None] = []
        self._release = asyncio.Event()
        self._server: TestServer | None = None

    async def start(self) -> Upstream:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        self._server = TestServer(app, host=self.host)
        await asyncio.wait_for(self._server.start_server(), 10)
        return self

    async def close(self) -> None:
        self._release.set()
        if self._server is not None:
            await asyncio.wait_for(self._server.close(), 10)

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.port is not None
        return self._server.port

    def url(self, path: str = "/jwks.json", *, host: str | None = None) -> str:
        name = host or (f"[{self.host}]" if ":" in self.host else self.host)
        return f"http://{name}:{self.port}{path}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        self.if_none_match.append(request.headers.get("If-None-Match"))
        if self.delay:
            await asyncio.sleep(self.delay)

        if self.behaviour == "hang":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._release.wait(), 30)
            return web.Response(status=503)
        if self.behaviour == "trickle":
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            await response.prepare(request)
            for _ in range(600):
                if self._release.is_set():
                    break
                await response.write(b" ")
                await asyncio.sleep(0.05)
            return response
        if self.behaviour == "reset":
            if request.transport is not None:
                request.transport.abort()
            return web.Response()
        if self.behaviour == "status":
            return web.Response(status=self.status, text="upstream trouble")
        if self.behaviour == "stream":
            response = web.StreamResponse(headers=self.raw_headers)
            response.enable_chunked_encoding()
            await response.prepare(request)
            with contextlib.suppress(ConnectionResetError):
                for start in range(0, len(self.raw), 64 * 1024):
                    await response.write(self.raw[start : start + 64 * 1024])
            return response
        if self.behaviour == "raw":
            return web.Response(body=self.raw, headers=self.raw_headers)
        if self.behaviour in ("redirect", "redirect_once"):
            if self.behaviour == "redirect_once":
                self.behaviour = "serve"
            raise web.HTTPFound(self.redirect_to)

        headers = dict(self.headers)
        if self.etag is not None:
            headers["ETag"] = self.etag
            if request.headers.get("If-None-Match") == self.etag:
                return web.Response(status=304, headers=headers)
        return web.json_response(self.document, headers=headers)


class FakeResolver(AbstractResolver):
    """Resolves only the names it was given, to the addresses it was given."""

    def __init__(self, names: dict[str, list[str]]) -> None:
        self.names = names
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        if host not in self.names:
            raise OSError(f"{host} is not a test host name")

        return [
            {
                "hostname": host,
                "host": address,
                "port": port,
                "family": socket.AF_INET6 if ":" in address else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
            for address in self.names[host]
        ]

    async def close(self) -> None:
        return None
