"""Client assertions through the HTTP API: signing, secrets, verifiers, /verify.

Every refusal the design lists is sent to a live server with a real client,
and must come back as ``200 {"valid": false}`` with its reason, never a 5xx.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp.test_utils import TestServer
from jsonschema import Draft202012Validator
from jwcrypto.jwa import JWA
from jwcrypto.jwe import JWE
from jwcrypto.jwk import JWK
from jwcrypto.jws import JWS

from keysvc.http.app import create_app
from keysvc.keygen import KeyGenerator
from keysvc.settings import Settings

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TOKEN_ENDPOINT = "https://as.example/oauth2/token"
ISSUER = "https://as.example"
CreateClient = Callable[..., Awaitable[dict[str, Any]]]
# The session's leak watch (tests/conftest.py): secrets added must reach no log.
LeakWatch = Any


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64json(value: object) -> str:
    return b64(json.dumps(value).encode())


def forge(header: dict[str, Any], claims: dict[str, Any], key: JWK) -> str:
    """A compact JWS over any header and claims, signed by jwcrypto directly."""
    signing_input = f"{b64json(header)}.{b64json(claims)}"
    signature = JWA.signing_alg(header["alg"]).sign(key, signing_input.encode())

    return f"{signing_input}.{b64(signature)}"


def claims_for(client_id: str, **changes: Any) -> dict[str, Any]:
    """Valid claims for now, with some changed, or dropped where None."""
    now = int(time.time())
    values = {
        "iss": client_id,
        "sub": client_id,
        "aud": TOKEN_ENDPOINT,
        "iat": now,
        "exp": now + 120,
        "jti": secrets.token_urlsafe(16),
    }
    values.update(changes)

    return {k: v for k, v in values.items() if v is not None}


def decode_segment(token: str, index: int) -> dict[str, Any]:
    segment = token.split(".")[index]
    value: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    )
    return value


class Verify:
    """POST /verify as one verifier, on one server."""

    def __init__(self, http: aiohttp.ClientSession, token: str) -> None:
        self.http = http
        self.token = token

    async def __call__(self, assertion: object, **fields: Any) -> dict[str, Any]:
        response = await self.http.post(
            "/verify",
            json={
                "client_assertion": assertion,
                "client_assertion_type": ASSERTION_TYPE,
                **fields,
            },
            headers=bearer(self.token),
        )
        body: dict[str, Any] = await response.json()
        assert response.status == 200, body
        assert response.headers["Cache-Control"] == "no-store"
        return body

    async def reason(self, assertion: object, **fields: Any) -> str:
        body = await self(assertion, **fields)
        assert body["valid"] is False, body
        assert body["error"] == "invalid_client"
        return str(body["reason"])


async def make_verifier(
    http: aiohttp.ClientSession,
    admin: dict[str, str],
    leak_watch: LeakWatch,
    **fields: Any,
) -> dict[str, Any]:
    response = await http.post(
        "/verifiers",
        json={"name": "as.example", "audiences": [ISSUER, TOKEN_ENDPOINT], **fields},
        headers=admin,
    )
    body: dict[str, Any] = await response.json()
    assert response.status == 201, body
    leak_watch.add(body["verifier_token"])
    return body


@pytest.fixture
async def verify(
    http: aiohttp.ClientSession, admin: dict[str, str], leak_watch: LeakWatch
) -> Verify:
    created = await make_verifier(http, admin, leak_watch)
    return Verify(http, created["verifier_token"])


async def sign_with_keysvc(
    http: aiohttp.ClientSession, client: dict[str, Any], **fields: Any
) -> dict[str, Any]:
    client_id = client["client"]["client_id"]
    response = await http.post(
        f"/clients/{client_id}/assertions",
        json={"audience": TOKEN_ENDPOINT, **fields},
        headers=bearer(client["client_token"]),
    )
    body: dict[str, Any] = await response.json()
    assert response.status == 200, body
    return body


async def import_key(
    http: aiohttp.ClientSession, client: dict[str, Any], key: JWK
) -> dict[str, Any]:
    client_id = client["client"]["client_id"]
    response = await http.post(
        f"/clients/{client_id}/keys",
        json={"jwk": key.export_public(as_dict=True)},
        headers=bearer(client["client_token"]),
    )
    body: dict[str, Any] = await response.json()
    assert response.status == 201, body
    return dict(body["key"])


@pytest.fixture
async def imported(
    http: aiohttp.ClientSession, create_client: CreateClient
) -> tuple[str, JWK, str]:
    """An imported-keys RS256 client: (client_id, its private key, its kid)."""
    created = await create_client("holder", key_source="imported", alg="RS256")
    key = JWK.generate(kty="RSA", size=2048)
    record = await import_key(http, created, key)
    return "holder", key, record["kid"]


# -- signing -------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["ES256", "RS256", "PS256", "EdDSA"])
async def test_keysvc_signs_with_the_active_key_and_its_assertion_verifies(
    http: aiohttp.ClientSession, create_client: CreateClient, verify: Verify, alg: str
) -> None:
    client = await create_client("signer", alg=alg)
    signed = await sign_with_keysvc(http, client, lifetime=90)

    token = signed["client_assertion"]
    header, claims = decode_segment(token, 0), decode_segment(token, 1)
    assert signed["client_assertion_type"] == ASSERTION_TYPE
    assert header == {"alg": alg, "kid": client["active"]["kid"]}
    assert claims["iss"] == claims["sub"] == "signer"
    assert claims["aud"] == TOKEN_ENDPOINT
    assert claims["exp"] - claims["iat"] == 90
    assert len(claims["jti"]) >= 43
    assert signed["expires_at"].endswith("Z")

    verdict = await verify(token)
    assert verdict == {
        "valid": True,
        "client_id": "signer",
        "kid": client["active"]["kid"],
        "alg": alg,
        "expires_at": signed["expires_at"],
    }


async def test_default_lifetime_is_five_minutes_and_the_bound_is_enforced(
    http: aiohttp.ClientSession, create_client: CreateClient, settings: Settings
) -> None:
    client = await create_client("bounded")
    token = (await sign_with_keysvc(http, client))["client_assertion"]
    claims = decode_segment(token, 1)
    assert claims["exp"] - claims["iat"] == 300

    too_long = settings.max_assertion_lifetime_seconds + 1
    for lifetime in (too_long, 0, "1d"):
        response = await http.post(
            "/clients/bounded/assertions",
            json={"audience": TOKEN_ENDPOINT, "lifetime": lifetime},
            headers=bearer(client["client_token"]),
        )
        assert response.status == 400, lifetime
        assert response.content_type == "application/problem+json"


async def test_a_lifetime_past_every_period_is_a_400_and_a_whole_float_signs(
    http: aiohttp.ClientSession, create_client: CreateClient
) -> None:
    """Found by schemathesis: both answered 500 (parse_period's ValueError)."""
    client = await create_client("whole")

    beyond = await http.post(
        "/clients/whole/assertions",
        json={"audience": TOKEN_ENDPOINT, "lifetime": "9999999999w"},
        headers=bearer(client["client_token"]),
    )
    whole = await sign_with_keysvc(http, client, lifetime=90.0)

    assert beyond.status == 400
    assert beyond.content_type == "application/problem+json"
    claims = decode_segment(whole["client_assertion"], 1)
    assert claims["exp"] - claims["iat"] == 90


async def test_audience_may_be_a_list_and_explicit_typ_is_emitted_on_request(
    http: aiohttp.ClientSession, create_client: CreateClient
) -> None:
    client = await create_client("typed")
    signed = await sign_with_keysvc(
        http, client, audience=[ISSUER, TOKEN_ENDPOINT], explicit_typ=True
    )

    token = signed["client_assertion"]
    assert decode_segment(token, 0)["typ"] == "client-authentication+jwt"
    assert decode_segment(token, 1)["aud"] == [ISSUER, TOKEN_ENDPOINT]


async def test_signing_is_refused_for_others_and_for_clients_without_a_held_key(
    http: aiohttp.ClientSession,
    create_client: CreateClient,
    admin: dict[str, str],
    imported: tuple[str, JWK, str],
) -> None:
    mine = await create_client("mine")
    await create_client("theirs")
    body = {"audience": TOKEN_ENDPOINT}

    other = await http.post(
        "/clients/theirs/assertions", json=body, headers=bearer(mine["client_token"])
    )
    unknown = await http.post("/clients/nobody/assertions", json=body, headers=admin)
    holder = await http.post("/clients/holder/assertions", json=body, headers=admin)
    anonymous = await http.post("/clients/mine/assertions", json=body)
    by_admin = await http.post("/clients/mine/assertions", json=body, headers=admin)

    assert [r.status for r in (other, unknown, holder, anonymous, by_admin)] == [
        403,
        404,
        409,
        401,
        200,
    ]


async def test_after_rotation_keysvc_signs_with_the_new_key_and_old_assertions_verify(
    http: aiohttp.ClientSession, create_client: CreateClient, verify: Verify
) -> None:
    client = await create_client("rotating")
    before = (await sign_with_keysvc(http, client))["client_assertion"]

    response = await http.post(
        "/clients/rotating/keys/rotate",
        json={"force": True},
        headers=bearer(client["client_token"]),
    )
    assert response.status == 201
    after = (await sign_with_keysvc(http, client))["client_assertion"]

    assert decode_segment(after, 0)["kid"] == client["next"]["kid"]
    assert (await verify(before))["kid"] == client["active"]["kid"]
    assert (await verify(after))["kid"] == client["next"]["kid"]


# -- client_secret_jwt ---------------------------------------------------------


async def test_secret_client_gets_its_secret_once_and_publishes_no_keys(
    http: aiohttp.ClientSession, create_client: CreateClient, admin: dict[str, str]
) -> None:
    created = await create_client("hmac", auth_method="client_secret_jwt")

    secret = created["client_secret"]
    assert len(secret.encode()) >= 32 and created["active"] is None
    assert created["client"]["alg"] == "HS256"
    jwks = await (await http.get("/clients/hmac/jwks.json")).json()
    shown = await (await http.get("/clients/hmac", headers=admin)).text()
    keys = await (
        await http.get("/clients/hmac/keys", headers=bearer(created["client_token"]))
    ).json()
    assert jwks == {"keys": []}
    assert keys == {"keys": []}
    assert secret not in shown


async def test_secret_client_assertions_verify_from_keysvc_and_from_pyjwt(
    http: aiohttp.ClientSession, create_client: CreateClient, verify: Verify
) -> None:
    created = await create_client("hmac", auth_method="client_secret_jwt")
    by_keysvc = (await sign_with_keysvc(http, created))["client_assertion"]
    by_pyjwt = jwt.encode(
        claims_for("hmac"), created["client_secret"], algorithm="HS256"
    )

    assert decode_segment(by_keysvc, 0)["alg"] == "HS256"
    first, second = await verify(by_keysvc), await verify(by_pyjwt)
    assert first["valid"] and second["valid"]
    assert first["kid"] == second["kid"] == decode_segment(by_keysvc, 0)["kid"]


async def test_secret_rotation_keeps_the_old_secret_through_the_grace_period(
    http: aiohttp.ClientSession, create_client: CreateClient, verify: Verify
) -> None:
    created = await create_client(
        "hmac", auth_method="client_secret_jwt", grace_period="1h"
    )
    old = created["client_secret"]
    headers = bearer(created["client_token"])

    response = await http.post("/clients/hmac/secret/rotate", headers=headers)
    rotated = await response.json()
    assert response.status == 201
    assert rotated["client_secret"] not in (old, None)
    assert rotated["previous_valid_until"].endswith("Z")

    for secret in (old, rotated["client_secret"]):
        token = jwt.encode(claims_for("hmac"), secret, algorithm="HS256")
        assert (await verify(token))["valid"], secret[:8]

    # A second rotation ends the first secret's grace: two are accepted at most.
    response = await http.post("/clients/hmac/secret/rotate", headers=headers)
    assert response.status == 201
    stale = jwt.encode(claims_for("hmac"), old, algorithm="HS256")
    assert await verify.reason(stale) == "bad_signature"


async def test_secret_with_no_grace_period_stops_at_once(
    http: aiohttp.ClientSession, create_client: CreateClient, verify: Verify
) -> None:
    created = await create_client(
        "hmac", auth_method="client_secret_jwt", grace_period=0
    )
    old = created["client_secret"]
    response = await http.post(
        "/clients/hmac/secret/rotate", headers=bearer(created["client_token"])
    )
    assert response.status == 201

    token = jwt.encode(claims_for("hmac"), old, algorithm="HS256")
    assert await verify.reason(token) == "bad_signature"


async def test_secret_rotation_and_secret_policies_are_refused_where_they_do_not_fit(
    http: aiohttp.ClientSession, create_client: CreateClient, admin: dict[str, str]
) -> None:
    keyed = await create_client("keyed")
    secret = await create_client("hmac", auth_method="client_secret_jwt")

    not_secret = await http.post(
        "/clients/keyed/secret/rotate", headers=bearer(keyed["client_token"])
    )
    with_alg = await http.post(
        "/clients",
        json={"client_id": "x", "auth_method": "client_secret_jwt", "alg": "ES256"},
        headers=admin,
    )
    imported = await http.post(
        "/clients",
        json={
            "client_id": "y",
            "auth_method": "client_secret_jwt",
            "key_source": "imported",
        },
        headers=admin,
    )
    key_rotation = await http.post(
        "/clients/hmac/keys/rotate", headers=bearer(secret["client_token"])
    )
    alg_change = await http.patch("/clients/hmac", json={"alg": "ES384"}, headers=admin)

    assert not_secret.status == 409
    assert (with_alg.status, imported.status) == (400, 400)
    assert (key_rotation.status, alg_change.status) == (409, 400)


# -- verifiers -----------------------------------------------------------------


async def test_verifier_token_is_shown_once_listed_without_it_and_dies_with_it(
    http: aiohttp.ClientSession,
    admin: dict[str, str],
    leak_watch: LeakWatch,
    create_client: CreateClient,
) -> None:
    created = await make_verifier(http, admin, leak_watch, require_typ=True)
    verifier = created["verifier"]
    assert verifier["audiences"] == [ISSUER, TOKEN_ENDPOINT]
    assert verifier["require_typ"] is True

    listed = await (await http.get("/verifiers", headers=admin)).text()
    assert verifier["verifier_id"] in listed
    assert created["verifier_token"] not in listed

    client = await create_client("c1")
    token = (await sign_with_keysvc(http, client, explicit_typ=True))[
        "client_assertion"
    ]
    verify = Verify(http, created["verifier_token"])
    assert (await verify(token))["valid"] is True

    gone = await http.delete(f"/verifiers/{verifier['verifier_id']}", headers=admin)
    again = await http.delete(f"/verifiers/{verifier['verifier_id']}", headers=admin)
    refused = await http.post(
        "/verify",
        json={"client_assertion": token, "client_assertion_type": ASSERTION_TYPE},
        headers=bearer(created["verifier_token"]),
    )
    assert (gone.status, again.status, refused.status) == (204, 404, 401)


async def test_verifier_requiring_typ_refuses_an_untyped_assertion(
    http: aiohttp.ClientSession,
    admin: dict[str, str],
    leak_watch: LeakWatch,
    create_client: CreateClient,
) -> None:
    created = await make_verifier(http, admin, leak_watch, require_typ=True)
    client = await create_client("c1")
    token = (await sign_with_keysvc(http, client))["client_assertion"]

    assert await Verify(http, created["verifier_token"]).reason(token) == "typ"


async def test_verify_takes_only_a_verifier_token(
    http: aiohttp.ClientSession, admin: dict[str, str], create_client: CreateClient
) -> None:
    client = await create_client("c1")
    body = {"client_assertion": "x", "client_assertion_type": ASSERTION_TYPE}

    statuses = [
        (await http.post("/verify", json=body, headers=headers)).status
        for headers in (
            {},
            admin,
            bearer(client["client_token"]),
            bearer("ksvf_" + "x" * 43),
        )
    ]
    by_client = await http.post(
        "/verifiers",
        json={"name": "n", "audiences": ["a"]},
        headers=bearer(client["client_token"]),
    )

    assert statuses == [401, 403, 403, 401]
    assert by_client.status == 403


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"client_assertion": "x"},
        {"client_assertion": "x", "client_assertion_type": "urn:other"},
        {"client_assertion": 17, "client_assertion_type": ASSERTION_TYPE},
        {"client_assertion": "x", "client_assertion_type": ASSERTION_TYPE, "x": 1},
        {
            "client_assertion": "x",
            "client_assertion_type": ASSERTION_TYPE,
            "audience": "",
        },
        ["client_assertion"],
    ],
)
async def test_a_malformed_verify_request_is_a_400_problem(
    http: aiohttp.ClientSession, verify: Verify, body: object
) -> None:
    response = await http.post("/verify", json=body, headers=bearer(verify.token))

    assert response.status == 400
    assert response.content_type == "application/problem+json"


@pytest.mark.parametrize(
    "body",
    [
        {"name": "n", "audiences": []},
        {"name": "n", "audiences": [""]},
        {"name": "", "audiences": ["a"]},
        {"name": "n\u0000", "audiences": ["a"]},
        {"name": "n", "audiences": ["a\ud800"]},
        {"audiences": ["a"]},
    ],
)
async def test_a_bad_verifier_is_refused_with_400(
    http: aiohttp.ClientSession, admin: dict[str, str], body: object
) -> None:
    response = await http.post(
        "/verifiers",
        data=json.dumps(body),
        headers={**admin, "Content-Type": "application/json"},
    )

    assert response.status == 400


# -- every refusal, with its reason ----------------------------------------------


async def test_assertions_made_by_pyjwt_with_an_imported_key_verify_once(
    verify: Verify, imported: tuple[str, JWK, str]
) -> None:
    client_id, key, kid = imported
    token = jwt.encode(
        claims_for(client_id),
        key.export_to_pem(private_key=True, password=None),
        algorithm="RS256",
        headers={"kid": kid},
    )

    assert (await verify(token))["kid"] == kid
    assert await verify.reason(token) == "replayed"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"aud": "https://other.example/token"}, "audience"),
        ({"aud": None}, "audience"),
        ({"exp": int(time.time()) - 120, "iat": int(time.time()) - 180}, "expired"),
        ({"exp": None}, "missing_exp"),
        ({"nbf": int(time.time()) + 600}, "not_yet_valid"),
        (
            {"iat": int(time.time()) + 600, "exp": int(time.time()) + 700},
            "iat_in_future",
        ),
        ({"exp": int(time.time()) + 3600}, "lifetime_too_long"),
        ({"jti": None}, "missing_jti"),
        ({"sub": "someone-else"}, "iss_sub_mismatch"),
        ({"iss": "nobody", "sub": "nobody"}, "unknown_client"),
    ],
)
async def test_claims_that_fail_a_check_are_refused_with_its_reason(
    verify: Verify,
    imported: tuple[str, JWK, str],
    changes: dict[str, Any],
    reason: str,
) -> None:
    client_id, key, kid = imported
    token = forge({"alg": "RS256", "kid": kid}, claims_for(client_id, **changes), key)

    assert await verify.reason(token) == reason


@pytest.mark.parametrize("member", ["jwk", "jku", "x5u", "x5c"])
async def test_a_key_named_by_the_token_itself_is_never_trusted(
    verify: Verify, imported: tuple[str, JWK, str], member: str
) -> None:
    client_id, _key, kid = imported
    attacker = JWK.generate(kty="RSA", size=2048)
    value: object = {
        "jwk": attacker.export_public(as_dict=True),
        "jku": "https://attacker.example/jwks.json",
        "x5u": "https://attacker.example/cert.pem",
        "x5c": ["MIIB"],
    }[member]
    token = forge(
        {"alg": "RS256", "kid": kid, member: value}, claims_for(client_id), attacker
    )

    assert await verify.reason(token) == "untrusted_header"


async def test_alg_none_and_alg_confusions_are_refused(
    verify: Verify, imported: tuple[str, JWK, str]
) -> None:
    client_id, key, kid = imported
    claims = claims_for(client_id)
    unsigned = f"{b64json({'alg': 'none', 'kid': kid})}.{b64json(claims)}."

    # The classic confusion: the RSA key's public PEM used as an HMAC secret.
    pem = key.export_to_pem()
    head = f"{b64json({'alg': 'HS256', 'kid': kid})}.{b64json(claims_for(client_id))}"
    hs256 = f"{head}.{b64(hmac.new(pem, head.encode(), hashlib.sha256).digest())}"
    ps256 = forge({"alg": "PS256", "kid": kid}, claims_for(client_id), key)
    bare = f"{b64json({'alg': 'HS256'})}.{b64json(claims_for(client_id))}"
    kidless_hs256 = (
        f"{bare}.{b64(hmac.new(pem, bare.encode(), hashlib.sha256).digest())}"
    )

    assert await verify.reason(unsigned) == "alg_not_allowed"
    assert await verify.reason(hs256) == "alg_mismatch"
    assert await verify.reason(ps256) == "alg_mismatch"
    assert await verify.reason(kidless_hs256) == "alg_mismatch"


async def test_another_clients_kid_and_a_revoked_key_are_unknown_keys(
    http: aiohttp.ClientSession,
    admin: dict[str, str],
    create_client: CreateClient,
    verify: Verify,
    imported: tuple[str, JWK, str],
) -> None:
    client_id, key, kid = imported
    other = await create_client("other", key_source="imported", alg="RS256")
    other_key = JWK.generate(kty="RSA", size=2048)
    other_kid = (await import_key(http, other, other_key))["kid"]

    borrowed = forge(
        {"alg": "RS256", "kid": other_kid}, claims_for(client_id), other_key
    )
    assert await verify.reason(borrowed) == "unknown_key"

    fine = forge({"alg": "RS256", "kid": kid}, claims_for(client_id), key)
    assert (await verify(fine))["valid"]
    response = await http.post(f"/clients/{client_id}/keys/{kid}/revoke", headers=admin)
    assert response.status == 200
    after = forge({"alg": "RS256", "kid": kid}, claims_for(client_id), key)
    assert await verify.reason(after) == "unknown_key"


async def test_a_tampered_assertion_is_a_bad_signature(
    verify: Verify, imported: tuple[str, JWK, str]
) -> None:
    client_id, key, kid = imported
    header, _, signature = forge(
        {"alg": "RS256", "kid": kid}, claims_for(client_id), key
    ).split(".")
    tampered = f"{header}.{b64json(claims_for(client_id))}.{signature}"

    assert await verify.reason(tampered) == "bad_signature"


async def test_jwe_json_serialization_garbage_and_oversize_are_refused(
    verify: Verify, imported: tuple[str, JWK, str]
) -> None:
    client_id, key, kid = imported
    good = forge({"alg": "RS256", "kid": kid}, claims_for(client_id), key)

    jwe = JWE(
        json.dumps(claims_for(client_id)).encode(),
        protected={"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": kid},
    )
    jwe.add_recipient(JWK(**key.export_public(as_dict=True)))
    jws = JWS(json.dumps(claims_for(client_id)).encode())
    jws.add_signature(key, None, {"alg": "RS256", "kid": kid})
    padded = good[: good.rindex(".")] + "." + "A" * 9000

    assert (
        await verify.reason(jwe.serialize(compact=True)) == "unsupported_serialization"
    )
    assert await verify.reason(jws.serialize()) == "unsupported_serialization"
    assert await verify.reason("not a token at all") == "malformed"
    assert await verify.reason("a.b.c") == "malformed"
    assert await verify.reason(padded) == "too_large"


async def test_the_request_only_narrows_what_is_accepted(
    verify: Verify, imported: tuple[str, JWK, str]
) -> None:
    client_id, key, kid = imported

    def token(**changes: Any) -> str:
        return forge(
            {"alg": "RS256", "kid": kid}, claims_for(client_id, **changes), key
        )

    assert await verify.reason(token(), audience=ISSUER) == "audience"
    assert await verify.reason(token(), audience="https://other.example") == "audience"
    assert await verify.reason(token(), client_id="other") == "client_id"
    assert (await verify(token(aud=ISSUER), audience=ISSUER))["valid"]
    assert (await verify(token(), client_id=client_id, audience=TOKEN_ENDPOINT))[
        "valid"
    ]


async def test_verifications_and_signatures_are_counted_by_outcome_and_alg(
    http: aiohttp.ClientSession, create_client: CreateClient, verify: Verify
) -> None:
    client = await create_client("counted")
    token = (await sign_with_keysvc(http, client))["client_assertion"]
    await verify(token)
    await verify(token)

    metrics = await (await http.get("/metrics")).text()
    assert 'keysvc_assertions_signed_total{alg="ES256"} 1.0' in metrics
    assert 'keysvc_verifications_total{outcome="valid"} 1.0' in metrics
    assert 'keysvc_verifications_total{outcome="replayed"} 1.0' in metrics
    assert "counted" not in metrics


# -- two replicas on one database ------------------------------------------------


@pytest.fixture
async def second_http(
    settings: Settings, generator: KeyGenerator
) -> AsyncIterator[aiohttp.ClientSession]:
    """A second keysvc on its own socket, on the same database as ``server``."""
    second = TestServer(create_app(settings, generator=generator), host="127.0.0.1")
    await asyncio.wait_for(second.start_server(), 30)
    async with aiohttp.ClientSession(
        base_url=str(second.make_url("/")), timeout=aiohttp.ClientTimeout(total=30)
    ) as session:
        yield session
    await asyncio.wait_for(second.close(), 30)


async def test_one_assertion_presented_to_two_replicas_at_once_passes_once(
    server: TestServer,
    second_http: aiohttp.ClientSession,
    verify: Verify,
    imported: tuple[str, JWK, str],
) -> None:
    client_id, key, kid = imported
    other = Verify(second_http, verify.token)

    for _ in range(10):
        token = forge({"alg": "RS256", "kid": kid}, claims_for(client_id), key)
        verdicts = await asyncio.wait_for(
            asyncio.gather(verify(token), other(token), verify(token), other(token)),
            30,
        )
        assert sorted(v["valid"] for v in verdicts) == [False, False, False, True]
        assert {v.get("reason") for v in verdicts if not v["valid"]} == {"replayed"}


async def test_a_key_revoked_on_one_replica_is_refused_at_once_by_another(
    http: aiohttp.ClientSession,
    second_http: aiohttp.ClientSession,
    create_client: CreateClient,
    verify: Verify,
) -> None:
    client = await create_client("shared")
    other = Verify(second_http, verify.token)
    first = (await sign_with_keysvc(http, client))["client_assertion"]
    unused = (await sign_with_keysvc(http, client))["client_assertion"]
    assert (await other(first))["valid"]

    # The second replica holds the key in memory; the database has the word.
    response = await http.post(
        f"/clients/shared/keys/{client['active']['kid']}/revoke",
        headers=bearer(client["client_token"]),
    )
    assert response.status == 200
    assert await other.reason(unused) == "unknown_key"


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 5) -> None:
    """Wait for a notification to reach the other replica; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, "the other replica never caught up"
        await asyncio.sleep(0.05)


async def test_a_verifier_deleted_on_one_replica_stops_working_on_another(
    http: aiohttp.ClientSession,
    second_http: aiohttp.ClientSession,
    admin: dict[str, str],
    leak_watch: LeakWatch,
) -> None:
    created = await make_verifier(http, admin, leak_watch)
    body = {"client_assertion": "x.y.z", "client_assertion_type": ASSERTION_TYPE}
    headers = bearer(created["verifier_token"])

    async def status() -> int:
        return (await second_http.post("/verify", json=body, headers=headers)).status

    assert await status() == 200
    response = await http.delete(
        f"/verifiers/{created['verifier']['verifier_id']}", headers=admin
    )
    assert response.status == 204

    async def refused() -> bool:
        return await status() == 401

    await eventually(refused)


async def test_after_a_rotation_on_one_replica_another_signs_with_the_new_key(
    http: aiohttp.ClientSession,
    second_http: aiohttp.ClientSession,
    create_client: CreateClient,
) -> None:
    client = await create_client("moving")
    before = (await sign_with_keysvc(second_http, client))["client_assertion"]
    assert decode_segment(before, 0)["kid"] == client["active"]["kid"]

    response = await http.post(
        "/clients/moving/keys/rotate",
        json={"force": True},
        headers=bearer(client["client_token"]),
    )
    assert response.status == 201

    async def moved() -> bool:
        token = (await sign_with_keysvc(second_http, client))["client_assertion"]
        return bool(decode_segment(token, 0)["kid"] == client["next"]["kid"])

    await eventually(moved)


async def test_responses_match_the_schemas_the_openapi_document_publishes(
    http: aiohttp.ClientSession,
    admin: dict[str, str],
    leak_watch: LeakWatch,
    create_client: CreateClient,
) -> None:
    document = await (await http.get("/openapi.json")).json()
    paths = document["paths"]

    def check(path: str, method: str, status: str, body: Any) -> None:
        content = paths[path][method]["responses"][status]["content"]
        Draft202012Validator(content["application/json"]["schema"]).validate(body)

    created = await make_verifier(http, admin, leak_watch)
    check("/verifiers", "post", "201", created)
    listed = await (await http.get("/verifiers", headers=admin)).json()
    check("/verifiers", "get", "200", listed)

    secret = await create_client("hmac", auth_method="client_secret_jwt")
    check("/clients", "post", "201", secret)
    rotated = await http.post(
        "/clients/hmac/secret/rotate", headers=bearer(secret["client_token"])
    )
    check("/clients/{client_id}/secret/rotate", "post", "201", await rotated.json())

    signed = await sign_with_keysvc(http, secret)
    check("/clients/{client_id}/assertions", "post", "200", signed)
    verify = Verify(http, created["verifier_token"])
    check("/verify", "post", "200", await verify(signed["client_assertion"]))
    check("/verify", "post", "200", await verify(signed["client_assertion"]))
