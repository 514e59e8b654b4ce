"""``POST /verify`` and ``POST /clients/{id}/assertions`` against raw cryptography.

Verification: the bench holds the private keys of imported clients (and the
secret of a ``client_secret_jwt`` client), signs distinct assertions ahead of
the runs, and wrk posts each one once, so no answer is a replay. The ceiling
is the bare aiohttp server verifying the same assertions with keys parsed
once, plus one jti insert into the same PostgreSQL.

Signing: keysvc signs for generated clients with the keys it holds; the
ceiling signs the same claims with a key of the same kind loaded once.
"""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from cryptography.hazmat.primitives import serialization

from bench import keymaker
from bench.ceiling import compact
from bench.context import Context
from bench.load import Target, WrkResult, interleaved, wrk
from bench.peers import start_ceiling
from bench.procs import unpin
from bench.service import Api, start_keysvc
from bench.stats import Figure, Row, missing
from bench.stats import Target as Goal

logger = logging.getLogger(__name__)

ALGS = ("ES256", "RS256", "EdDSA", "HS256")
AUDIENCE = "https://as.bench.example/token"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
VERIFY_ROUTE = "/verify"
SIGN_ROUTE = "/clients/{client_id}/assertions"
RPS = "req/s"
_CALIBRATION = 3000
_HEADROOM = 1.5


@dataclass(slots=True)
class Signer:
    """One client of the bench: its alg, and the key material the bench holds."""

    alg: str
    client_id: str
    kid: str | None
    material: bytes = field(repr=False)
    token: str = field(default="", repr=False)


def _load(alg: str, material: bytes) -> Any:
    if alg == "HS256":
        return material
    return serialization.load_pem_private_key(material, password=None)


def _assertion_lines(args: tuple[str, str | None, str, bytes, int]) -> list[str]:
    alg, kid, client_id, material, count = args
    key = _load(alg, material)
    now = int(time.time())
    lines = []
    for _ in range(count):
        claims = {
            "iss": client_id,
            "sub": client_id,
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + 300,
            "jti": keymaker.b64url(os.urandom(16)),
        }
        token = compact(alg, kid, claims, key)
        lines.append(
            json.dumps(
                {"client_assertion": token, "client_assertion_type": ASSERTION_TYPE}
            )
        )

    return lines


def write_assertions(
    pool: ProcessPoolExecutor, signer: Signer, count: int, path: Path
) -> None:
    """``count`` distinct assertions, one request body a line, made in the pool."""
    chunk = 2000
    jobs = [
        (
            signer.alg,
            signer.kid,
            signer.client_id,
            signer.material,
            min(chunk, count - i),
        )
        for i in range(0, count, chunk)
    ]
    with path.open("w") as out:
        for lines in pool.map(_assertion_lines, jobs):
            out.write("\n".join(lines) + "\n")


async def _imported_client(api: Api, alg: str) -> Signer | None:
    """A client whose key the bench holds; None if keysvc refuses the kind."""
    client_id = f"bench-verify-{alg.lower()}"
    if alg == "HS256":
        status, body = await api.call(
            "POST",
            "/clients",
            {"client_id": client_id, "auth_method": "client_secret_jwt"},
        )
        if status != 201 or not body.get("client_secret"):
            return None
        return Signer(alg, client_id, None, body["client_secret"].encode())

    private = keymaker.new_private(alg)
    jwk = keymaker.published_jwk(private, alg)
    fields: dict[str, Any] = {
        "client_id": client_id,
        "key_source": "imported",
        "alg": alg,
    }
    status, _ = await api.call("POST", "/clients", fields)
    if status != 201:
        return None
    status, _ = await api.call(
        "POST", f"/clients/{client_id}/keys", {"jwk": jwk, "activate": True}
    )
    if status >= 300:
        return None

    return Signer(alg, client_id, jwk["kid"], keymaker.pem(private))


async def _generated_client(api: Api, alg: str) -> Signer | None:
    client_id = f"bench-sign-{alg.lower()}"
    fields: dict[str, Any] = {"client_id": client_id}
    if alg == "HS256":
        fields["auth_method"] = "client_secret_jwt"
    else:
        fields["alg"] = alg
        if alg == "RS256":
            fields["key_size"] = 2048
    status, body = await api.call("POST", "/clients", fields)
    if status != 201:
        return None
    signer = Signer(alg, client_id, None, b"", body["client_token"])
    probe, answer = await api.call(
        "POST",
        f"/clients/{client_id}/assertions",
        {"audience": AUDIENCE},
        token=signer.token,
    )
    return signer if probe == 200 and "client_assertion" in answer else None


def _ceiling_keys(ctx: Context, signers: dict[str, Signer]) -> list[dict[str, Any]]:
    entries = []
    for alg, signer in signers.items():
        path = ctx.private_file(f"ceiling-{alg}.key", signer.material)
        entries.append({"alg": alg, "kid": signer.kid, "file": str(path)})

    return entries


def _figure(results: list[WrkResult]) -> tuple[Figure, Figure]:
    return (
        Figure.of([r.requests_per_second for r in results]),
        Figure.of([r.p99_ms for r in results]),
    )


def _bad_note(results: list[WrkResult]) -> str:
    bad = sum(r.bad for r in results)
    seen = sum(r.requests for r in results)
    return (
        f"{bad} of {seen} answers not as expected" if bad > 0.001 * max(1, seen) else ""
    )


async def measure(ctx: Context) -> list[Row]:
    dsn = await ctx.pg.fresh_database("bench_assertions")
    ceiling_dsn = await ctx.pg.fresh_database("bench_ceiling")
    # The per-client limit on signing (50/s by default) would measure the
    # limiter, not the signing path: the bench lifts it.
    keysvc, url = start_keysvc(
        "keysvc-assertions",
        dsn,
        ctx.credentials,
        ctx.workdir,
        extra_env={"KEYSVC_ASSERTION_RATE": "0"},
    )
    servers = [keysvc]
    try:
        async with Api(url, ctx.credentials.admin_token) as api:
            routes = await api.routes()
            logger.info("keysvc up; setting up the clients")
            verifiers: dict[str, Signer] = {}
            verifier_token = ""
            if VERIFY_ROUTE in routes:
                created = await api.expect(
                    "POST", "/verifiers", {"name": "bench-as", "audiences": [AUDIENCE]}
                )
                verifier_token = created["verifier_token"]
                for alg in ALGS:
                    signer = await _imported_client(api, alg)
                    if signer is not None:
                        verifiers[alg] = signer
            signers: dict[str, Signer] = {}
            if SIGN_ROUTE in routes:
                for alg in ALGS:
                    signer = await _generated_client(api, alg)
                    if signer is not None:
                        signers[alg] = signer
        if not verifiers and not signers:
            return _rows({}, {})

        # The ceiling signs with keys of its own kind; it verifies the bench's.
        ceiling_keys = dict(verifiers)
        for alg in signers:
            if alg not in ceiling_keys:
                private = keymaker.new_private(alg) if alg != "HS256" else None
                material = os.urandom(32) if private is None else keymaker.pem(private)
                ceiling_keys[alg] = Signer(alg, "ceiling", f"ceiling-{alg}", material)
        jwks_file = ctx.workdir / "ceiling-jwks.json"
        jwks_file.write_bytes(b'{"keys":[]}')
        ceiling, ceiling_url = start_ceiling(
            ctx.workdir,
            {
                "jwks_file": str(jwks_file),
                "etag": '"-"',
                "dsn": ceiling_dsn,
                "audiences": [AUDIENCE],
                "keys": _ceiling_keys(ctx, ceiling_keys),
            },
        )
        servers.append(ceiling)
        logger.info("clients and ceiling ready: %s", ", ".join(sorted(verifiers)))

        verify = await _verify_runs(
            ctx, url, ceiling_url, ceiling_dsn, verifiers, verifier_token
        )
        sign = _sign_runs(ctx, url, ceiling_url, signers)

        return _rows(verify, sign)
    finally:
        for server in reversed(servers):
            server.stop()


async def _truncate(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("TRUNCATE used_jtis")
    finally:
        await conn.close()


async def _verify_runs(
    ctx: Context,
    url: str,
    ceiling_url: str,
    ceiling_dsn: str,
    signers: dict[str, Signer],
    verifier_token: str,
) -> dict[str, tuple[list[WrkResult], list[WrkResult]]]:
    """Per alg: (keysvc runs, ceiling runs), interleaved."""
    budget = ctx.budget
    files: dict[str, Path] = {}
    offsets: dict[str, int] = {}
    env = (("BENCH_TOKEN", verifier_token),)
    with ProcessPoolExecutor(2, initializer=unpin) as pool:
        # Calibrate: a short run on each side tells how many assertions to make.
        rates = {}
        for alg, signer in signers.items():
            probe = ctx.workdir / f"probe-{alg}.txt"
            write_assertions(pool, signer, _CALIBRATION, probe)
            result = wrk(
                url + VERIFY_ROUTE,
                seconds=1,
                script="post.lua",
                args=(str(probe), "0", '"valid": true'),
                env=dict(env),
            )
            rates[alg] = result.requests_per_second
            count = int(
                rates[alg] * budget.post_seconds * (budget.post_runs + 1) * _HEADROOM
            )
            files[alg] = ctx.workdir / f"assertions-{alg}.txt"
            write_assertions(pool, signer, max(count, 1000), files[alg])
            offsets[alg] = 0
            logger.info(
                "%s: %d assertions for about %.0f req/s", alg, count, rates[alg]
            )

    results: dict[str, tuple[list[WrkResult], list[WrkResult]]] = {
        alg: ([], []) for alg in signers
    }
    for _ in range(budget.post_runs):
        for alg in signers:
            mine, theirs = results[alg]
            done = wrk(
                url + VERIFY_ROUTE,
                seconds=budget.post_seconds,
                script="post.lua",
                args=(str(files[alg]), str(offsets[alg]), '"valid": true'),
                env=dict(env),
            )
            offsets[alg] += done.requests + 200
            mine.append(done)
            await _truncate(ceiling_dsn)
            theirs.append(
                wrk(
                    ceiling_url + "/verify",
                    seconds=budget.post_seconds,
                    script="post.lua",
                    args=(str(files[alg]), "0", '"valid": true'),
                )
            )

    return results


def _sign_runs(
    ctx: Context, url: str, ceiling_url: str, signers: dict[str, Signer]
) -> dict[str, tuple[list[WrkResult], list[WrkResult]]]:
    body = ctx.workdir / "sign-body.txt"
    body.write_text(json.dumps({"audience": AUDIENCE}) + "\n")
    targets = []
    for alg, signer in signers.items():
        targets.append(
            Target(
                f"keysvc {alg}",
                f"{url}/clients/{signer.client_id}/assertions",
                "post.lua",
                (str(body), "0", "client_assertion"),
                (("BENCH_TOKEN", signer.token),),
            )
        )
        targets.append(
            Target(
                f"ceiling {alg}",
                f"{ceiling_url}/sign/{alg}",
                "post.lua",
                (str(body), "0", "client_assertion"),
            )
        )
    if not targets:
        return {}
    runs = interleaved(
        targets, runs=ctx.budget.post_runs, seconds=ctx.budget.post_seconds
    )

    return {alg: (runs[f"keysvc {alg}"], runs[f"ceiling {alg}"]) for alg in signers}


def _rows(
    verify: dict[str, tuple[list[WrkResult], list[WrkResult]]],
    sign: dict[str, tuple[list[WrkResult], list[WrkResult]]],
) -> list[Row]:
    rows = []
    for title, results, ceiling, goal in (
        ("POST /verify", verify, "raw cryptography verify + jti INSERT", Goal(0.6)),
        ("POST /clients/{id}/assertions", sign, "raw cryptography sign", Goal(0.8)),
    ):
        for alg in ALGS:
            measure = f"{title} {alg}"
            if alg not in results:
                rows.append(missing(measure, RPS, ceiling))
                continue
            mine, theirs = results[alg]
            value, p99 = _figure(mine)
            rows.append(
                Row(
                    measure,
                    RPS,
                    value,
                    p99,
                    ceiling_name=ceiling,
                    ceiling=_figure(theirs)[0],
                    target=goal,
                    note=_bad_note(mine) or _bad_note(theirs),
                    invalid=bool(_bad_note(mine) or _bad_note(theirs)),
                )
            )

    return rows
