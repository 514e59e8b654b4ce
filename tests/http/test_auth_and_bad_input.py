"""Every protected route refuses bad tokens; bad input is a 4xx problem."""

from __future__ import annotations

import pytest

ADMIN_ROUTES = [
    ("POST", "/clients", {"client_id": "new-one"}),
    ("GET", "/clients", None),
    ("GET", "/clients/{c}", None),
    ("PATCH", "/clients/{c}", {"grace_period": 5}),
    ("DELETE", "/clients/{c}", None),
    ("GET", "/clients/{c}/events", None),
]
CLIENT_ROUTES = [
    ("GET", "/clients/{c}/keys", None),
    ("POST", "/clients/{c}/keys/rotate", {"force": True}),
    ("POST", "/clients/{c}/keys", {"jwk": {"kty": "EC"}}),
    ("POST", "/clients/{c}/keys/{kid}/revoke", None),
]


@pytest.fixture
async def two_clients(create_client):
    one = await create_client("alice")
    two = await create_client("bob")
    return one, two


def _path(template: str, client: dict) -> str:
    return template.format(c=client["client"]["client_id"], kid=client["next"]["kid"])


@pytest.mark.parametrize(("method", "template", "body"), ADMIN_ROUTES + CLIENT_ROUTES)
async def test_missing_or_wrong_token_is_401(http, two_clients, method, template, body):
    path = _path(template, two_clients[0])
    for headers in (
        {},
        {"Authorization": "Bearer not-a-token"},
        {"Authorization": "Basic x"},
    ):
        response = await http.request(method, path, json=body, headers=headers)
        assert response.status == 401, (path, headers)
        assert response.content_type == "application/problem+json"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(("method", "template", "body"), CLIENT_ROUTES)
async def test_another_clients_token_is_403(http, two_clients, method, template, body):
    alice, bob = two_clients
    headers = {"Authorization": f"Bearer {bob['client_token']}"}

    response = await http.request(
        method, _path(template, alice), json=body, headers=headers
    )

    assert response.status == 403
    assert response.content_type == "application/problem+json"


@pytest.mark.parametrize(("method", "template", "body"), ADMIN_ROUTES)
async def test_a_client_token_on_admin_routes_is_403(
    http, two_clients, method, template, body
):
    alice = two_clients[0]
    headers = {"Authorization": f"Bearer {alice['client_token']}"}

    response = await http.request(
        method, _path(template, alice), json=body, headers=headers
    )

    assert response.status == 403


BAD_BODIES = [
    (b"{not json", "application/json", 400),
    (b'{"client_id": "x", "surprise": 1}', "application/json", 400),
    (b'{"client_id": 12}', "application/json", 400),
    (b'{"client_id": "bad id!"}', "application/json", 400),
    (b'{"client_id": "' + b"a" * 200 + b'"}', "application/json", 400),
    (b'{"client_id": "x", "alg": "none"}', "application/json", 400),
    (b'{"client_id": "x", "alg": "HS256"}', "application/json", 400),
    (b'{"client_id": "x", "alg": "ES256", "key_size": 2048}', "application/json", 400),
    (b'{"client_id": "x", "rotation_period": "forever"}', "application/json", 400),
    (b'{"client_id": "x", "rotation_period": -5}', "application/json", 400),
    (b'{"client_id": "x", "rotation_period": true}', "application/json", 400),
    (b'["client_id"]', "application/json", 400),
    (b"null", "application/json", 400),
    (b"[" * 100_000 + b"]" * 100_000, "application/json", 413),
    (b'{"client_id": "x"}', "text/plain", 415),
    (b"\xff\xfe", "application/json", 400),
    (b'{"client_id": "x", "key_source": "remote"}', "application/json", 400),
]


@pytest.mark.parametrize(("raw", "media", "status"), BAD_BODIES)
async def test_bad_bodies_are_4xx_problems(http, admin, raw, media, status):
    response = await http.post(
        "/clients", data=raw, headers={**admin, "Content-Type": media}
    )
    problem = await response.json(content_type=None)

    assert response.status == status
    assert response.content_type == "application/problem+json"
    assert set(problem) >= {"type", "title", "status", "detail"}
    assert problem["status"] == status


async def test_deep_nesting_within_the_size_limit_is_a_400(http, admin):
    raw = b'{"client_id": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"

    response = await http.post(
        "/clients", data=raw, headers={**admin, "Content-Type": "application/json"}
    )

    assert response.status == 400


async def test_oversized_body_is_413_and_nothing_is_created(http, admin):
    raw = b'{"client_id": "big", "jwks_uri": "' + b"x" * 100_000 + b'"}'

    response = await http.post(
        "/clients", data=raw, headers={**admin, "Content-Type": "application/json"}
    )
    lookup = await http.get("/clients/big", headers=admin)

    assert response.status == 413
    assert lookup.status == 404


@pytest.mark.parametrize(
    "jwk",
    [
        {"kty": "oct", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"},
        {"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"},
        {"kty": "RSA", "n": "AQAB", "e": "AQAB"},
        {"kty": "EC", "crv": "P-256"},
        {"kty": 5},
        {},
    ],
)
async def test_bad_jwks_on_import_are_422(http, create_client, jwk):
    created = await create_client("imp-bad", key_source="imported", alg="ES256")

    response = await http.post(
        "/clients/imp-bad/keys",
        json={"jwk": jwk},
        headers={"Authorization": f"Bearer {created['client_token']}"},
    )

    assert response.status in (400, 422)
    assert response.content_type == "application/problem+json"


async def test_unknown_route_and_wrong_method_are_problems(http, admin):
    missing = await http.get("/nothing-here")
    wrong = await http.put("/clients", headers=admin)

    assert missing.status == 404
    assert missing.content_type == "application/problem+json"
    assert wrong.status == 405
    assert wrong.content_type == "application/problem+json"
    assert "POST" in wrong.headers["Allow"]


async def test_every_response_carries_a_request_id(http):
    given = await http.get("/healthz", headers={"X-Request-ID": "abc-123"})
    made = await http.get("/healthz")
    hostile = await http.get("/healthz", headers={"X-Request-ID": "a\tb" * 100})

    assert given.headers["X-Request-ID"] == "abc-123"
    assert len(made.headers["X-Request-ID"]) == 16
    assert hostile.headers["X-Request-ID"] != "a\tb" * 100
