"""The public JWKS routes, through a live server and a real HTTP client."""

from __future__ import annotations

import base64
import hashlib
import json
import re

import jwt
import pytest

PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}
ALGS = [
    ("RS256", 2048), ("RS384", 2048), ("RS512", 2048),
    ("PS256", 2048), ("PS384", 2048), ("PS512", 3072),
    ("ES256", None), ("ES384", None), ("ES512", None),
    ("EdDSA", None), ("Ed25519", None),
]  # fmt: skip
REQUIRED = {
    "RSA": ("e", "kty", "n"),
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
}


def rfc7638(jwk: dict) -> str:
    """The thumbprint, computed here from RFC 7638 §3 without any JOSE library."""
    members = {name: jwk[name] for name in REQUIRED[jwk["kty"]]}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(canonical.encode()).digest()

    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@pytest.mark.parametrize(("alg", "size"), ALGS)
async def test_jwks_of_every_algorithm_is_public_with_thumbprint_kids(
    http, create_client, alg, size
):
    fields = {"alg": alg} | ({"key_size": size} if size else {})
    created = await create_client(f"c-{alg.lower()}", **fields)

    response = await http.get(f"/clients/c-{alg.lower()}/jwks.json")
    document = await response.json()

    assert response.status == 200
    keys = document["keys"]
    assert [k["kid"] for k in keys] == [
        created["active"]["kid"],
        created["next"]["kid"],
    ]
    for key in keys:
        assert not PRIVATE_MEMBERS & set(key)
        assert key["kid"] == rfc7638(key)
        assert key["use"] == "sig"
        assert key["alg"] == alg


async def test_pyjwt_loads_a_jwks_of_every_algorithm_it_knows(http, create_client):
    kids = []
    for alg, size in ALGS:
        if alg == "Ed25519":
            continue  # PyJWT 2.x knows the key only under "EdDSA"
        fields = {"alg": alg} | ({"key_size": size} if size else {})
        created = await create_client(f"py-{alg.lower()}", **fields)
        response = await http.get(f"/clients/py-{alg.lower()}/jwks.json")
        key_set = jwt.PyJWKSet.from_dict(await response.json())
        assert {k.key_id for k in key_set.keys} == {
            created["active"]["kid"],
            created["next"]["kid"],
        }
        kids.extend(k.key_id for k in key_set.keys)

    assert len(kids) == 2 * (len(ALGS) - 1)


async def test_unknown_client_is_a_404_problem(http):
    response = await http.get("/clients/nobody/jwks.json")

    assert response.status == 404
    assert response.content_type == "application/problem+json"
    problem = await response.json()
    assert problem["status"] == 404
    assert problem["type"].endswith("not_found")


async def test_if_none_match_with_the_current_etag_gives_304(http, create_client):
    await create_client("etag")
    first = await http.get("/clients/etag/jwks.json")
    etag = first.headers["ETag"]

    again = await http.get("/clients/etag/jwks.json", headers={"If-None-Match": etag})
    other = await http.get(
        "/clients/etag/jwks.json", headers={"If-None-Match": '"something-else"'}
    )

    assert re.fullmatch(r'"[A-Za-z0-9_-]+"', etag)
    assert again.status == 304
    assert again.headers["ETag"] == etag
    assert await again.read() == b""
    assert other.status == 200


async def test_rotation_changes_etag_and_body(http, create_client):
    created = await create_client("rot-etag")
    token = created["client_token"]
    before = await http.get("/clients/rot-etag/jwks.json")
    body_before = await before.json()

    rotated = await http.post(
        "/clients/rot-etag/keys/rotate",
        json={"force": True},
        headers={"Authorization": f"Bearer {token}"},
    )
    after = await http.get(
        "/clients/rot-etag/jwks.json", headers={"If-None-Match": before.headers["ETag"]}
    )

    assert rotated.status == 201
    assert after.status == 200
    assert after.headers["ETag"] != before.headers["ETag"]
    assert (await after.json()) != body_before


async def test_revoked_key_is_absent_from_the_next_response(http, create_client):
    created = await create_client("rev-jwks")
    token = created["client_token"]
    next_kid = created["next"]["kid"]
    await http.get("/clients/rev-jwks/jwks.json")  # warm the cache

    revoked = await http.post(
        f"/clients/rev-jwks/keys/{next_kid}/revoke",
        headers={"Authorization": f"Bearer {token}"},
    )
    document = await (await http.get("/clients/rev-jwks/jwks.json")).json()
    single = await http.get(f"/clients/rev-jwks/jwks/{next_kid}")

    assert revoked.status == 200
    assert next_kid not in {k["kid"] for k in document["keys"]}
    assert single.status == 404


async def test_cache_control_is_public_and_bounded_by_prepublish(http, create_client):
    await create_client(
        "cc", rotation_period="1h", prepublish_period="90s", grace_period="2h"
    )
    response = await http.get("/clients/cc/jwks.json")
    directives = dict(
        part.strip().partition("=")[::2]
        for part in response.headers["Cache-Control"].split(",")
    )

    assert "public" in directives
    max_age = int(directives["max-age"])
    swr = int(directives["stale-while-revalidate"])
    assert 0 < max_age <= 90
    assert max_age + swr <= 90
    assert int(directives["stale-if-error"]) > 0


async def test_cache_control_max_age_is_jittered(http, create_client):
    await create_client("jitter", prepublish_period="1d")
    seen = set()
    for _ in range(60):
        response = await http.get("/clients/jitter/jwks.json")
        seen.add(response.headers["Cache-Control"])

    assert len(seen) > 1


async def test_content_negotiation_names_jwk_set_when_asked(http, create_client):
    await create_client("neg")

    plain = await http.get("/clients/neg/jwks.json")
    jwk_set = await http.get(
        "/clients/neg/jwks.json", headers={"Accept": "application/jwk-set+json"}
    )
    refused = await http.get("/clients/neg/jwks.json", headers={"Accept": "text/html"})

    assert plain.content_type == "application/json"
    assert jwk_set.content_type == "application/jwk-set+json"
    assert refused.status == 406
    assert refused.content_type == "application/problem+json"
    assert "Accept" in plain.headers["Vary"]


async def test_jwks_allows_any_origin_and_answers_preflight(http, create_client):
    await create_client("cors")

    response = await http.get(
        "/clients/cors/jwks.json", headers={"Origin": "https://x"}
    )
    preflight = await http.options(
        "/clients/cors/jwks.json",
        headers={
            "Origin": "https://x",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "if-none-match",
        },
    )

    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert preflight.status == 204
    assert "If-None-Match" in preflight.headers["Access-Control-Allow-Headers"]


async def test_single_key_route_serves_one_public_jwk(http, create_client):
    created = await create_client("one-key", alg="RS256")
    kid = created["active"]["kid"]

    response = await http.get(f"/clients/one-key/jwks/{kid}")
    key = await response.json()
    cached = await http.get(
        f"/clients/one-key/jwks/{kid}",
        headers={"If-None-Match": response.headers["ETag"]},
    )
    missing = await http.get("/clients/one-key/jwks/not-a-kid")

    assert response.status == 200
    assert key["kid"] == kid and not PRIVATE_MEMBERS & set(key)
    assert cached.status == 304
    assert missing.status == 404


async def test_bad_client_ids_in_the_path_are_404_problems(http):
    for path in ("/clients/%2e%2e/jwks.json", "/clients/" + "a" * 200 + "/jwks.json",
                 "/clients/-x/jwks.json", "/clients/a%00b/jwks.json"):  # fmt: skip
        response = await http.get(path)
        assert response.status == 404, path
        assert response.content_type == "application/problem+json"
