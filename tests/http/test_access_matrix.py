"""Every route with every kind of token, against the matrix in the README.

Kinds: none, a wrong token, another client's token, a verifier token, the
admin token, and the path's own client token. A cell is the status the route
must answer; `ok` is the route's own success status.
"""

from __future__ import annotations

from typing import Any

import pytest
from jwcrypto import jwk

from keysvc.assertions import ASSERTION_TYPE

KINDS = ("none", "wrong", "other", "verifier", "admin", "own")
OK = "ok"

# route → (method, path, body, {kind: status}); the README's access matrix.
PUBLIC = dict.fromkeys(KINDS, OK)
ADMIN_ONLY = {"none": 401, "wrong": 401, "other": 403, "verifier": 403, "admin": OK,
              "own": 403}  # fmt: skip
CLIENT = {
    "none": 401,
    "wrong": 401,
    "other": 403,
    "verifier": 403,
    "admin": OK,
    "own": OK,
}
VERIFIER_ONLY = {"none": 401, "wrong": 401, "other": 403, "verifier": OK, "admin": 403,
                 "own": 403}  # fmt: skip

MATRIX: list[tuple[str, str, Any, dict[str, Any], int]] = [
    ("GET", "/clients/{c}/jwks.json", None, PUBLIC, 200),
    ("GET", "/clients/{c}/jwks/{kid}", None, PUBLIC, 200),
    ("GET", "/healthz", None, PUBLIC, 200),
    ("GET", "/readyz", None, PUBLIC, 200),
    ("GET", "/openapi.json", None, PUBLIC, 200),
    ("GET", "/metrics", None, PUBLIC, 200),
    ("POST", "/clients", {"client_id": "made-{n}"}, ADMIN_ONLY, 201),
    ("GET", "/clients", None, ADMIN_ONLY, 200),
    ("GET", "/clients/{c}", None, ADMIN_ONLY, 200),
    ("PATCH", "/clients/{c}", {"grace_period": "8d"}, ADMIN_ONLY, 200),
    ("GET", "/clients/{c}/events", None, ADMIN_ONLY, 200),
    (
        "POST",
        "/verifiers",
        {"name": "as-{n}", "audiences": ["https://as"]},
        ADMIN_ONLY,
        201,
    ),
    ("GET", "/verifiers", None, ADMIN_ONLY, 200),
    ("GET", "/clients/{c}/keys", None, CLIENT, 200),
    ("POST", "/clients/{c}/keys/rotate", {"force": True}, CLIENT, 201),
    ("POST", "/clients/{c}/assertions", {"audience": "https://as"}, CLIENT, 200),
    ("POST", "/verify", "assertion", VERIFIER_ONLY, 200),
    ("POST", "/clients/{c}/keys/{kid}/revoke", None, CLIENT, 200),
    ("POST", "/clients/{s}/secret/rotate", None, CLIENT, 201),
    ("POST", "/clients/{i}/keys", "jwk", CLIENT, 201),
    ("DELETE", "/verifiers/{v}", None, ADMIN_ONLY, 204),
    ("DELETE", "/clients/{c}", None, ADMIN_ONLY, 204),
]


@pytest.fixture
async def world(http, admin, create_client, leak_watch):
    """Fresh actors: each cell gets its own, since some cells change them."""
    counter = iter(range(10_000))

    async def make(template: str, kind: str) -> dict[str, Any]:
        # Only what this cell needs: a whole set per cell would take minutes.
        n = next(counter)
        actors: dict[str, Any] = {"n": n}
        actors["main"] = await create_client(f"main-{n}", prepublish_period=0)
        if kind == "other":
            actors["other"] = await create_client(f"other-{n}")
        if "{s}" in template:
            actors["secret"] = await create_client(
                f"sec-{n}", auth_method="client_secret_jwt"
            )
        if "{i}" in template:
            actors["imported"] = await create_client(
                f"imp-{n}", key_source="imported", alg="ES256"
            )
            actors["jwk"] = jwk.JWK.generate(kty="EC", crv="P-256").export_public(
                as_dict=True
            )
        if kind == "verifier" or "verif" in template:
            response = await http.post(
                "/verifiers",
                json={"name": f"v-{n}", "audiences": ["https://as"]},
                headers=admin,
            )
            actors["verifier"] = await response.json()
            leak_watch.add(actors["verifier"]["verifier_token"])
        if template == "/verify":
            signed = await http.post(
                f"/clients/main-{n}/assertions",
                json={"audience": "https://as"},
                headers={"Authorization": f"Bearer {actors['main']['client_token']}"},
            )
            actors["assertion"] = (await signed.json())["client_assertion"]
            leak_watch.add(actors["assertion"])

        return actors

    return make


def _headers(
    kind: str, actors: dict[str, Any], admin: dict[str, str], path: str
) -> dict:
    own = actors["main"]["client_token"]
    if "/clients/sec-" in path:
        own = actors["secret"]["client_token"]
    if "/clients/imp-" in path:
        own = actors["imported"]["client_token"]
    tokens = {
        "none": lambda: None,
        "wrong": lambda: "kscl_" + "x" * 43,
        "other": lambda: actors["other"]["client_token"],
        "verifier": lambda: actors["verifier"]["verifier_token"],
        "admin": lambda: admin["Authorization"].split(" ", 1)[1],
        "own": lambda: own,
    }
    token = tokens[kind]()

    return {} if token is None else {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("method", "template", "body", "expected", "ok"),
    MATRIX,
    ids=[f"{m} {t}" for m, t, *_ in MATRIX],
)
async def test_route_answers_each_token_kind_as_the_matrix_says(
    http, admin, world, kind, method, template, body, expected, ok
):
    actors = await world(template, kind)
    n = actors["n"]
    path = template.format(
        c=f"main-{n}",
        s=f"sec-{n}",
        i=f"imp-{n}",
        kid=actors["main"]["next"]["kid"],
        v=actors.get("verifier", {}).get("verifier", {}).get("verifier_id"),
    )
    if body == "assertion":
        body = {
            "client_assertion": actors["assertion"],
            "client_assertion_type": ASSERTION_TYPE,
        }
    elif body == "jwk":
        body = {"jwk": actors["jwk"]}
    elif isinstance(body, dict):
        body = {k: v.format(n=n) if isinstance(v, str) else v for k, v in body.items()}

    response = await http.request(
        method, path, json=body, headers=_headers(kind, actors, admin, path)
    )

    want = ok if expected[kind] == OK else expected[kind]
    assert response.status == want, (kind, method, path, await response.text())
    if want >= 400:
        assert response.content_type == "application/problem+json"
