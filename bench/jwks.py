"""Cached JWKS, 200 and 304: keysvc beside nginx, bare aiohttp, node-oidc-provider.

Every server sends the same document: keysvc's JWKS of one RS256 client (two
2048-bit keys) is copied byte for byte to nginx's static file and to the bare
aiohttp handler; node-oidc-provider publishes two RSA-2048 keys of its own,
which makes a document of the same size. A ``jwks_uri`` client whose upstream
is that nginx file is measured beside the managed client, when keysvc has
remote clients.
"""

from __future__ import annotations

import contextlib
import json
import logging
import urllib.request
from collections.abc import Sequence

from bench import keymaker
from bench.context import Context
from bench.load import Target, WrkResult, interleaved
from bench.peers import node_ready, start_ceiling, start_nginx, start_oidc_provider
from bench.service import Api, start_keysvc
from bench.stats import Figure, Row, missing
from bench.stats import Target as Goal

logger = logging.getLogger(__name__)

MANAGED = "bench-jwks"
REMOTE = "bench-remote"
RPS = "req/s"


def _etag_of(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.headers["ETag"])


def _size_of(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as response:
        return len(response.read())


def _status(url: str, etag: str | None = None) -> int:
    request = urllib.request.Request(url)
    if etag is not None:
        request.add_header("If-None-Match", etag)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _figures(results: Sequence[WrkResult]) -> tuple[Figure, Figure]:
    return (
        Figure.of([r.requests_per_second for r in results]),
        Figure.of([r.p99_ms for r in results]),
    )


async def _remote_client(api: Api, upstream: str, managed_keys: list[object]) -> bool:
    """Register a jwks_uri client; True when keysvc serves the upstream's keys."""
    status, _ = await api.call(
        "POST",
        "/clients",
        {
            "client_id": REMOTE,
            "key_source": "remote",
            "alg": "RS256",
            "jwks_uri": upstream,
        },
    )
    if status != 201:
        logger.info("remote client refused (%s): feature missing", status)
        return False
    with contextlib.suppress(RuntimeError):
        body, _ = await api.jwks(REMOTE)
        return bool(json.loads(body).get("keys") == managed_keys)

    return False


async def measure(ctx: Context) -> list[Row]:
    budget = ctx.budget
    dsn = await ctx.pg.fresh_database("bench_jwks")
    keysvc, url = start_keysvc("keysvc-jwks", dsn, ctx.credentials, ctx.workdir)
    servers = [keysvc]
    try:
        info, info_url = start_keysvc(
            "keysvc-jwks-info", dsn, ctx.credentials, ctx.workdir, log_level="INFO"
        )
        servers.append(info)
        async with Api(url, ctx.credentials.admin_token) as api:
            await api.expect(
                "POST",
                "/clients",
                {"client_id": MANAGED, "alg": "RS256", "key_size": 2048},
            )
            body, etag = await api.jwks(MANAGED)
            managed_keys = json.loads(body)["keys"]

            nginx, nginx_url = start_nginx(ctx.workdir, body)
            servers.append(nginx)
            ceiling, ceiling_url = start_ceiling(
                ctx.workdir,
                {
                    "jwks_file": str(ctx.workdir / "nginx" / "www" / "jwks.json"),
                    "etag": etag,
                },
            )
            servers.append(ceiling)
            has_remote = await _remote_client(api, nginx_url, managed_keys)

        managed = f"{url}/clients/{MANAGED}/jwks.json"
        info_managed = f"{info_url}/clients/{MANAGED}/jwks.json"
        remote = f"{url}/clients/{REMOTE}/jwks.json"
        nginx_etag = _etag_of(nginx_url)
        targets = [
            Target("nginx 200", nginx_url),
            Target("nginx 304", nginx_url, "etag.lua", (nginx_etag,)),
            Target("aiohttp 200", ceiling_url + "/jwks.json"),
            Target("aiohttp 304", ceiling_url + "/jwks.json", "etag.lua", (etag,)),
            Target("keysvc 200", managed),
            Target("keysvc 304", managed, "etag.lua", (etag,)),
            Target("keysvc INFO 200", info_managed),
        ]
        if has_remote:
            remote_etag = _etag_of(remote)
            targets += [
                Target("remote 200", remote),
                Target("remote 304", remote, "etag.lua", (remote_etag,)),
            ]

        oidc_bytes = 0
        if node_ready():
            peer_keys = [
                keymaker.private_jwk(keymaker.new_private("RS256"), "RS256")
                for _ in range(2)
            ]
            oidc, oidc_url = start_oidc_provider(ctx.workdir, {"keys": peer_keys})
            servers.append(oidc)
            oidc_bytes = _size_of(oidc_url)
            targets.append(Target("oidc-provider 200", oidc_url))
        else:
            logger.warning("node-oidc-provider not installed: run `make bench`")

        for target in targets:
            expected = 304 if target.script == "etag.lua" else 200
            got = _status(target.url, target.args[0] if target.args else None)
            if got != expected:
                raise RuntimeError(f"{target.label} answered {got}, not {expected}")

        results = interleaved(targets, runs=budget.runs, seconds=budget.seconds)
    finally:
        for server in reversed(servers):
            server.stop()

    fig = {label: _figures(runs) for label, runs in results.items()}
    sizes = {"document_bytes": len(body), "oidc_provider_document_bytes": oidc_bytes}
    return _rows(fig, sizes, has_remote)


def _rows(
    fig: dict[str, tuple[Figure, Figure]], sizes: dict[str, int], has_remote: bool
) -> list[Row]:
    def row(
        measure: str, label: str, ceiling: str | None = None, goal: Goal | None = None
    ) -> Row:
        value, p99 = fig[label]
        return Row(
            measure,
            RPS,
            value,
            p99,
            ceiling_name=ceiling and _NAMES[ceiling],
            ceiling=fig[ceiling][0] if ceiling else None,
            target=goal,
        )

    speed = Goal(0.9, p99_ms_below=10)
    rows = [
        row("nginx static file, 200", "nginx 200"),
        row("nginx static file, 304", "nginx 304"),
        row("bare aiohttp handler, 200", "aiohttp 200"),
        row("bare aiohttp handler, 304", "aiohttp 304"),
        row("keysvc JWKS cached, 200", "keysvc 200", "aiohttp 200", speed),
        row("keysvc JWKS cached, 304", "keysvc 304", "aiohttp 304", speed),
        row("keysvc JWKS cached, 200", "keysvc 200", "nginx 200"),
        row("keysvc JWKS cached, 304", "keysvc 304", "nginx 304"),
        row("keysvc JWKS 200, access log at INFO", "keysvc INFO 200", "keysvc 200"),
    ]
    if "oidc-provider 200" in fig:
        rows.append(row("node-oidc-provider /jwks, 200", "oidc-provider 200"))
        rows.append(
            row("keysvc JWKS cached, 200", "keysvc 200", "oidc-provider 200", Goal(1.0))
        )
    else:
        rows.append(missing("node-oidc-provider /jwks, 200", RPS))
    if has_remote:
        same = Goal(0.95, p99_ms_below=10)
        rows.append(
            row("jwks_uri client cached, 200", "remote 200", "keysvc 200", same)
        )
        rows.append(
            row("jwks_uri client cached, 304", "remote 304", "keysvc 304", same)
        )
    else:
        rows.append(missing("jwks_uri client cached, 200", RPS, "keysvc managed 200"))
        rows.append(missing("jwks_uri client cached, 304", RPS, "keysvc managed 304"))
    rows[0].extra = sizes

    return rows


_NAMES = {
    "nginx 200": "nginx 200",
    "nginx 304": "nginx 304",
    "aiohttp 200": "bare aiohttp 200",
    "aiohttp 304": "bare aiohttp 304",
    "keysvc 200": "keysvc managed 200",
    "keysvc 304": "keysvc managed 304",
    "oidc-provider 200": "node-oidc-provider 200",
}
