"""keysvc and PyJWT, both directions, over a live server.

PyJWT verifies what keysvc signs, finding the key through keysvc's JWKS URL
as an authorization server would; keysvc verifies what PyJWT signs with a
key the client holds and imported, or with its client secret.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp.test_utils import TestServer

TOKEN_ENDPOINT = "https://as.example/oauth2/token"
# PyJWT 2.x knows "EdDSA" but not RFC 9864's "Ed25519": see the last test.
PYJWT_ALGS = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
    "ES256", "ES384", "ES512", "EdDSA",
]  # fmt: skip


@pytest.mark.parametrize("alg", PYJWT_ALGS)
async def test_pyjwt_verifies_keysvc_assertions_through_the_jwks_url(
    http: aiohttp.ClientSession,
    server: TestServer,
    create_client: Callable[..., Awaitable[dict[str, Any]]],
    alg: str,
    signed_by_keysvc: Callable[[dict[str, Any]], Awaitable[str]],
) -> None:
    created = await create_client("pyjwt-as", alg=alg)
    token = await signed_by_keysvc(created)

    jwks_client = jwt.PyJWKClient(
        str(server.make_url("/clients/pyjwt-as/jwks.json")),
        cache_keys=False,
        timeout=10,
    )
    key = await asyncio.to_thread(jwks_client.get_signing_key_from_jwt, token)
    claims = jwt.decode(
        token,
        key,
        algorithms=[alg],
        audience=TOKEN_ENDPOINT,
        issuer="pyjwt-as",
        options={"require": ["exp", "iat", "jti", "sub"]},
    )

    assert key.key_id == created["active"]["kid"]
    assert claims["sub"] == "pyjwt-as"


async def test_pyjwt_verifies_keysvc_hs256_assertions_with_the_client_secret(
    http: aiohttp.ClientSession,
    create_client: Callable[..., Awaitable[dict[str, Any]]],
    signed_by_keysvc: Callable[[dict[str, Any]], Awaitable[str]],
) -> None:
    created = await create_client("pyjwt-hmac", auth_method="client_secret_jwt")
    token = await signed_by_keysvc(created)

    claims = jwt.decode(
        token,
        created["client_secret"],
        algorithms=["HS256"],
        audience=TOKEN_ENDPOINT,
        issuer="pyjwt-hmac",
    )

    assert claims["sub"] == "pyjwt-hmac"


@pytest.mark.parametrize("alg", ["RS256", "PS256", "ES256", "EdDSA"])
async def test_keysvc_verifies_pyjwt_assertions_made_with_an_imported_key(
    import_own_key: Callable[[str, str], Awaitable[tuple[str, str]]],
    verify_at_keysvc: Callable[[str], Awaitable[dict[str, Any]]],
    claims_of: Callable[[str], dict[str, Any]],
    alg: str,
) -> None:
    kid, pem = await import_own_key("pyjwt-client", alg)
    now = int(time.time())
    claims = {**claims_of("pyjwt-client"), "iat": now, "exp": now + 300}

    token = jwt.encode(claims, pem, algorithm=alg, headers={"kid": kid})
    verdict = await verify_at_keysvc(token)

    assert verdict["valid"] is True, verdict
    assert (verdict["client_id"], verdict["kid"], verdict["alg"]) == (
        "pyjwt-client",
        kid,
        alg,
    )


async def test_keysvc_verifies_pyjwt_hs256_assertions_made_with_the_secret(
    create_client: Callable[..., Awaitable[dict[str, Any]]],
    verify_at_keysvc: Callable[[str], Awaitable[dict[str, Any]]],
    claims_of: Callable[[str], dict[str, Any]],
) -> None:
    created = await create_client("pyjwt-hmac", auth_method="client_secret_jwt")
    now = int(time.time())
    claims = {**claims_of("pyjwt-hmac"), "iat": now, "exp": now + 300}

    token = jwt.encode(claims, created["client_secret"], algorithm="HS256")
    verdict = await verify_at_keysvc(token)

    assert verdict["valid"] is True, verdict
    assert verdict["alg"] == "HS256"


async def test_keysvc_jwks_of_every_algorithm_loads_in_pyjwkset(
    http: aiohttp.ClientSession, create_client: Callable[..., Awaitable[dict[str, Any]]]
) -> None:
    for alg in PYJWT_ALGS:
        created = await create_client(f"set-{alg.lower()}", alg=alg)
        jwks = await (await http.get(f"/clients/set-{alg.lower()}/jwks.json")).json()

        keys = jwt.PyJWKSet.from_dict(jwks).keys
        assert sorted(k.key_id for k in keys) == sorted(
            (created["active"]["kid"], created["next"]["kid"])
        )
        assert {k.algorithm_name for k in keys} == {alg}


async def test_pyjwt_skips_keys_published_under_the_name_ed25519(
    http: aiohttp.ClientSession, create_client: Callable[..., Awaitable[dict[str, Any]]]
) -> None:
    """Why the README advises EdDSA, not Ed25519, for PyJWT verifiers."""
    await create_client("set-ed25519", alg="Ed25519")
    jwks = await (await http.get("/clients/set-ed25519/jwks.json")).json()

    assert {k["alg"] for k in jwks["keys"]} == {"Ed25519"}
    with pytest.raises(jwt.PyJWKSetError):
        jwt.PyJWKSet.from_dict(jwks)
