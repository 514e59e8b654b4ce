"""The bare aiohttp ceilings: what the same stack does with no keysvc in it.

``python -m bench.ceiling CONFIG`` serves, on one port:

- ``GET /jwks.json``: constant bytes (a keysvc JWKS), with a strong ETag and a
  304 for a matching ``If-None-Match``;
- ``POST /verify``: raw ``cryptography`` verifying a compact JWS with a key
  parsed once at start, plus one ``INSERT … ON CONFLICT DO NOTHING`` of its
  jti, the least any correct verifier does;
- ``POST /sign/{alg}``: raw ``cryptography`` signing the claims of a client
  assertion with a key loaded once at start.

CONFIG is a JSON file written by the bench (mode 0600: it names key files).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

CONFIG = web.AppKey("config", dict)
POOL = web.AppKey("pool", asyncpg.Pool)
SIGNERS = web.AppKey("signers", dict)
VERIFIERS = web.AppKey("verifiers", dict)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_input(alg: str, key: Any, message: bytes) -> bytes:
    """The JWS signature of ``message`` with a raw cryptography key."""
    if alg == "HS256":
        return hmac.new(key, message, hashlib.sha256).digest()
    if alg == "RS256":
        return bytes(key.sign(message, padding.PKCS1v15(), hashes.SHA256()))
    if alg == "ES256":
        r, s = decode_dss_signature(key.sign(message, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")
    if alg == "EdDSA":
        return bytes(key.sign(message))
    raise ValueError(f"no {alg}")


def verify_input(alg: str, key: Any, message: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is a JWS signature of ``message``; never raises."""
    try:
        if alg == "HS256":
            return hmac.compare_digest(sign_input(alg, key, message), signature)
        if alg == "RS256":
            key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        elif alg == "ES256":
            der = encode_dss_signature(
                int.from_bytes(signature[:32], "big"),
                int.from_bytes(signature[32:], "big"),
            )
            key.verify(der, message, ec.ECDSA(hashes.SHA256()))
        elif alg == "EdDSA":
            key.verify(signature, message)
        else:
            return False
    except Exception:  # cryptography's InvalidSignature, or a malformed one
        return False

    return True


def compact(alg: str, kid: str | None, claims: dict[str, Any], key: Any) -> str:
    header: dict[str, Any] = {"alg": alg, "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    signing_input = (
        _b64(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + _b64(json.dumps(claims, separators=(",", ":")).encode())
    )
    signature = sign_input(alg, key, signing_input.encode())

    return signing_input + "." + _b64(signature)


def load_key(entry: dict[str, str]) -> tuple[str, str | None, Any]:
    """(alg, kid, key) from the config: a PEM file, or an HMAC secret file."""
    raw = Path(entry["file"]).read_bytes()
    if entry["alg"] == "HS256":
        return "HS256", entry.get("kid"), raw
    key = serialization.load_pem_private_key(raw, password=None)
    if not isinstance(
        key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise TypeError("unexpected key type")

    return entry["alg"], entry.get("kid"), key


async def jwks(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    etag = config["etag"]
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers={"ETag": etag})

    return web.Response(
        body=config["body"], content_type="application/json", headers={"ETag": etag}
    )


async def verify(request: web.Request) -> web.Response:
    token = (await request.json())["client_assertion"]
    head, payload, signature = token.split(".")
    header = json.loads(_unb64(head))
    claims = json.loads(_unb64(payload))
    alg, key = request.app[VERIFIERS][header.get("kid")]
    now = time.time()
    valid = (
        header["alg"] == alg
        and verify_input(alg, key, f"{head}.{payload}".encode(), _unb64(signature))
        and claims["exp"] > now
        and claims["aud"] in request.app[CONFIG]["audiences"]
    )
    if valid:
        status = await request.app[POOL].execute(
            "INSERT INTO used_jtis (client_id, jti, expires_at)"
            " VALUES ($1, $2, to_timestamp($3)) ON CONFLICT DO NOTHING",
            claims["iss"],
            claims["jti"],
            claims["exp"],
        )
        valid = status == "INSERT 0 1"

    return web.json_response({"valid": valid, "client_id": claims.get("iss")})


async def sign(request: web.Request) -> web.Response:
    alg = request.match_info["alg"]
    body = await request.json()
    kid, key = request.app[SIGNERS][alg]
    now = int(time.time())
    claims = {
        "iss": "bench",
        "sub": "bench",
        "aud": body["audience"],
        "iat": now,
        "exp": now + 300,
        "jti": _b64(os.urandom(16)),
    }

    return web.json_response(
        {"client_assertion": compact(alg, kid, claims, key), "expires_at": now + 300}
    )


async def _pool(app: web.Application) -> AsyncIterator[None]:
    dsn = app[CONFIG].get("dsn")
    if dsn is None:
        yield
        return
    pool = await asyncpg.create_pool(dsn, min_size=4, max_size=10)
    async with pool.acquire() as conn:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS used_jtis (client_id text NOT NULL,"
            " jti text NOT NULL, expires_at timestamptz NOT NULL,"
            " PRIMARY KEY (client_id, jti))"
        )
    app[POOL] = pool
    yield
    await pool.close()


def build(config: dict[str, Any]) -> web.Application:
    app = web.Application()
    config["body"] = Path(config["jwks_file"]).read_bytes()
    app[CONFIG] = config
    signers, verifiers = {}, {}
    for entry in config.get("keys", []):
        alg, kid, key = load_key(entry)
        signers[alg] = (kid, key)
        public = key if alg == "HS256" else key.public_key()
        verifiers[kid] = (alg, public)
    app[SIGNERS], app[VERIFIERS] = signers, verifiers
    app.cleanup_ctx.append(_pool)
    app.router.add_get("/jwks.json", jwks)
    app.router.add_post("/verify", verify)
    app.router.add_post("/sign/{alg}", sign)

    return app


def main() -> None:
    config = json.loads(Path(sys.argv[1]).read_text())
    web.run_app(
        build(config),
        host="127.0.0.1",
        port=int(config["port"]),
        access_log=None,
        print=None,
    )


if __name__ == "__main__":
    main()
