"""keysvc and node's jose and jsonwebtoken, both directions, over a live server.

jose verifies what keysvc signs against keysvc's JWKS, fetched by jose itself
from the live server (createRemoteJWKSet) or handed to it (createLocalJWKSet);
keysvc verifies what jsonwebtoken signs, written as the tutorials write it
(which adds iat and a five-minute exp), and what jose signs where jsonwebtoken
has no algorithm (EdDSA).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

TOKEN_ENDPOINT = "https://as.example/oauth2/token"
ALL_ALGS = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
    "ES256", "ES384", "ES512", "EdDSA", "Ed25519",
]  # fmt: skip
CreateClient = Callable[..., Awaitable[dict[str, Any]]]
RunNode = Callable[[str, dict[str, Any]], Awaitable[Any]]


@pytest.mark.parametrize("alg", ALL_ALGS)
async def test_jose_verifies_keysvc_assertions_with_a_remote_jwks(
    http: aiohttp.ClientSession,
    server: TestServer,
    create_client: CreateClient,
    run_node: RunNode,
    alg: str,
    signed_by_keysvc: Callable[[dict[str, Any]], Awaitable[str]],
) -> None:
    created = await create_client("jose-as", alg=alg)
    token = await signed_by_keysvc(created)

    [answer] = await run_node(
        "verify",
        {
            "jwks_url": str(server.make_url("/clients/jose-as/jwks.json")),
            "items": [
                {"token": token, "audience": TOKEN_ENDPOINT, "issuer": "jose-as"}
            ],
        },
    )

    assert answer["ok"] is True, answer
    assert answer["header"] == {"alg": alg, "kid": created["active"]["kid"]}
    assert answer["payload"]["sub"] == "jose-as"


async def test_jose_refuses_a_keysvc_assertion_for_another_audience(
    http: aiohttp.ClientSession,
    create_client: CreateClient,
    run_node: RunNode,
    signed_by_keysvc: Callable[[dict[str, Any]], Awaitable[str]],
) -> None:
    created = await create_client("jose-as")
    token = await signed_by_keysvc(created)
    jwks = await (await http.get("/clients/jose-as/jwks.json")).json()

    answers = await run_node(
        "verify",
        {
            "jwks": jwks,
            "items": [
                {"token": token, "audience": TOKEN_ENDPOINT, "issuer": "jose-as"},
                {
                    "token": token,
                    "audience": "https://other.example",
                    "issuer": "jose-as",
                },
            ],
        },
    )

    assert [a["ok"] for a in answers] == [True, False]
    assert answers[1]["error"] == "ERR_JWT_CLAIM_VALIDATION_FAILED"


async def test_keysvc_jwks_of_every_algorithm_loads_in_jose_local_jwks(
    http: aiohttp.ClientSession, create_client: CreateClient, run_node: RunNode
) -> None:
    for alg in ALL_ALGS:
        created = await create_client(f"set-{alg.lower()}", alg=alg)
        jwks = await (await http.get(f"/clients/set-{alg.lower()}/jwks.json")).json()

        found = await run_node("load", {"jwks": jwks})
        assert sorted(found) == sorted(
            (created["active"]["kid"], created["next"]["kid"])
        ), alg


@pytest.mark.parametrize(
    ("lib", "alg"),
    [
        ("jsonwebtoken", "RS256"),
        ("jsonwebtoken", "PS256"),
        ("jsonwebtoken", "ES256"),
        ("jose", "EdDSA"),
        ("jose", "Ed25519"),
    ],
)
async def test_keysvc_verifies_node_assertions_made_with_an_imported_key(
    import_own_key: Callable[[str, str], Awaitable[tuple[str, str]]],
    verify_at_keysvc: Callable[[str], Awaitable[dict[str, Any]]],
    claims_of: Callable[[str], dict[str, Any]],
    run_node: RunNode,
    lib: str,
    alg: str,
) -> None:
    kid, pem = await import_own_key("node-client", alg)

    [token] = await run_node(
        "sign",
        {
            "items": [
                {
                    "lib": lib,
                    "alg": alg,
                    "pem": pem,
                    "kid": kid,
                    "claims": claims_of("node-client"),
                }
            ]
        },
    )
    verdict = await verify_at_keysvc(token)

    assert verdict["valid"] is True, verdict
    assert (verdict["kid"], verdict["alg"]) == (kid, alg)


async def test_keysvc_verifies_jsonwebtoken_hs256_assertions_made_with_the_secret(
    create_client: CreateClient,
    verify_at_keysvc: Callable[[str], Awaitable[dict[str, Any]]],
    claims_of: Callable[[str], dict[str, Any]],
    run_node: RunNode,
) -> None:
    created = await create_client("node-hmac", auth_method="client_secret_jwt")

    [token] = await run_node(
        "sign",
        {
            "items": [
                {
                    "lib": "jsonwebtoken",
                    "alg": "HS256",
                    "secret": created["client_secret"],
                    "claims": claims_of("node-hmac"),
                }
            ]
        },
    )
    verdict = await verify_at_keysvc(token)

    assert verdict["valid"] is True, verdict
    assert verdict["alg"] == "HS256"
