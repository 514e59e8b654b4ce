"""Fetching a client-hosted JWKS document over HTTP, within fixed bounds.

One :class:`Fetcher` a process holds one aiohttp session. Every request it
makes is bounded: a connect timeout and a total one, a body size cap counted
as the bytes arrive (after decompression), redirects followed only within
the same origin, and a resolver that hands the connector only addresses the
:class:`~keysvc.remote_guard.AddressGuard` lets through, so the address
checked is the address connected to, whatever the DNS answers next time.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import zlib
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from keysvc import __version__
from keysvc.errors import InvalidJwksUri, UpstreamFailed
from keysvc.remote_guard import AddressGuard, Target

logger = logging.getLogger(__name__)

# Same-origin redirects (a trailing slash, a versioned path) are followed;
# a redirect elsewhere is refused, since it would leave the checked address.
MAX_REDIRECTS = 2
_REDIRECTS = (301, 302, 303, 307, 308)
_CHUNK = 16 * 1024
_ACCEPT = "application/jwk-set+json, application/json;q=0.9, */*;q=0.1"


@dataclass(frozen=True, slots=True)
class Upstream:
    """What the upstream answered: a 200 with its body, or a 304."""

    status: int
    body: bytes
    etag: str | None
    cache_control: str | None
    expires: str | None
    date: str | None
    age: str | None


class AddressRefused(OSError):
    """Raised by the resolver; aiohttp wraps OSErrors, so this is one."""


class GuardedResolver(AbstractResolver):
    """A resolver that refuses a host if any of its addresses is not allowed."""

    def __init__(self, guard: AddressGuard, inner: AbstractResolver) -> None:
        self._guard = guard
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            try:
                self._guard.check_address(host, result["host"])
            except InvalidJwksUri as exc:
                raise AddressRefused(exc.detail) from exc

        return results

    async def close(self) -> None:
        await self._inner.close()


class Fetcher:
    """GETs a ``jwks_uri``; every failure is an :class:`UpstreamFailed`."""

    def __init__(
        self,
        guard: AddressGuard,
        *,
        timeout_seconds: float,
        connect_timeout_seconds: float,
        max_bytes: int,
        resolver: AbstractResolver | None = None,
    ) -> None:
        self.guard = guard
        self.timeout_seconds = timeout_seconds
        self.max_bytes = max_bytes
        self._connect_timeout = min(connect_timeout_seconds, timeout_seconds)
        self._resolver = resolver
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        resolver = GuardedResolver(self.guard, self._resolver or ThreadedResolver())
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(resolver=resolver, limit=100),
            timeout=aiohttp.ClientTimeout(
                total=self.timeout_seconds, sock_connect=self._connect_timeout
            ),
            headers={"User-Agent": f"keysvc/{__version__}", "Accept": _ACCEPT},
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            trust_env=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def fetch(self, target: Target, *, etag: str | None = None) -> Upstream:
        """GET the document, conditionally when ``etag`` is given."""
        try:
            async with asyncio.timeout(self.timeout_seconds):
                return await self._follow(target, etag)
        except TimeoutError as exc:
            raise UpstreamFailed(
                f"no answer within {self.timeout_seconds:g} s", outcome="timeout"
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, AddressRefused):
                raise UpstreamFailed(str(exc.os_error), outcome="refused") from exc
            raise UpstreamFailed(
                f"cannot connect ({type(exc).__name__})", outcome="network"
            ) from exc
        except aiohttp.InvalidURL as exc:
            raise UpstreamFailed("the address is not valid", outcome="refused") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamFailed(
                f"the connection failed ({type(exc).__name__})", outcome="network"
            ) from exc

    async def _follow(self, target: Target, etag: str | None) -> Upstream:
        if self._session is None:
            raise RuntimeError("Fetcher.open() was not called")
        headers = {"Accept-Encoding": "gzip, deflate"}
        if etag is not None:
            headers["If-None-Match"] = etag

        url = URL(target.uri)
        for _ in range(MAX_REDIRECTS + 1):
            async with self._session.get(
                url, headers=headers, allow_redirects=False
            ) as response:
                if response.status not in _REDIRECTS:
                    return await self._answer(response, conditional=etag is not None)
                url = self._redirect(target, response)

        raise UpstreamFailed(f"more than {MAX_REDIRECTS} redirects", outcome="redirect")

    def _redirect(self, target: Target, response: aiohttp.ClientResponse) -> URL:
        location = response.headers.get("Location")
        if not location:
            raise UpstreamFailed("a redirect without a Location", outcome="redirect")
        try:
            url = response.url.join(URL(location))
            following = self.guard.target(str(url))
        except (ValueError, InvalidJwksUri) as exc:
            raise UpstreamFailed(
                "redirected to an address that is not allowed", outcome="redirect"
            ) from exc
        if following.origin != target.origin:
            raise UpstreamFailed(
                "redirected to another host; only same-origin redirects are followed",
                outcome="redirect",
            )

        return url

    async def _answer(
        self, response: aiohttp.ClientResponse, *, conditional: bool
    ) -> Upstream:
        status = response.status
        if status == 304 and not conditional:
            raise UpstreamFailed("answered 304 to a plain GET", outcome="http_error")
        if status not in (200, 304):
            raise UpstreamFailed(f"answered HTTP {status}", outcome="http_error")

        body = b"" if status == 304 else await self._body(response)
        h = response.headers

        return Upstream(
            status=status,
            body=body,
            etag=h.get("ETag"),
            cache_control=h.get("Cache-Control"),
            expires=h.get("Expires"),
            date=h.get("Date"),
            age=h.get("Age"),
        )

    async def _body(self, response: aiohttp.ClientResponse) -> bytes:
        """Read at most ``max_bytes`` of decoded body; stop as soon as it is more."""
        declared = response.content_length
        if declared is not None and declared > self.max_bytes:
            raise self._too_large()
        decoder = _decoder(response.headers.get("Content-Encoding", "identity"))

        parts, size = [], 0
        async for chunk in response.content.iter_chunked(_CHUNK):
            data = chunk
            if decoder is not None:
                # max_length bounds what one chunk may inflate to.
                data = decoder.decompress(chunk, self.max_bytes - size + 1)
                if decoder.unconsumed_tail:
                    raise self._too_large()
            size += len(data)
            if size > self.max_bytes:
                raise self._too_large()
            parts.append(data)
        if decoder is not None:
            rest = decoder.flush()
            if size + len(rest) > self.max_bytes:
                raise self._too_large()
            parts.append(rest)

        return b"".join(parts)

    def _too_large(self) -> UpstreamFailed:
        return UpstreamFailed(
            f"the document exceeds {self.max_bytes} bytes", outcome="too_large"
        )


def _decoder(encoding: str) -> zlib._Decompress | None:
    coding = encoding.strip().lower()
    if coding in ("", "identity"):
        return None
    if coding in ("gzip", "x-gzip", "deflate"):
        # 32 + MAX_WBITS takes a gzip or a zlib header, whichever comes.
        return zlib.decompressobj(32 + zlib.MAX_WBITS)

    raise UpstreamFailed(
        f"unsupported Content-Encoding {coding[:20]!r}", outcome="invalid"
    )
