"""A client's key routes: list, rotate, import, revoke."""

from __future__ import annotations

import asyncio

import asyncpg
from jwcrypto import jwk


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_new_generated_client_publishes_an_active_and_a_next_key(
    http, create_client
):
    created = await create_client("fresh")
    token = created["client_token"]

    listed = await (await http.get("/clients/fresh/keys", headers=auth(token))).json()

    states = {k["kid"]: k["state"] for k in listed["keys"]}
    assert states == {
        created["active"]["kid"]: "active",
        created["next"]["kid"]: "next",
    }
    for key in listed["keys"]:
        assert "d" not in key["public_jwk"]


async def test_rotation_promotes_the_published_next_key(http, create_client):
    created = await create_client(
        "promote", rotation_period="1h", prepublish_period="1s", grace_period="1h"
    )
    token = created["client_token"]
    old_active, old_next = created["active"]["kid"], created["next"]["kid"]
    await asyncio.sleep(1.1)

    response = await http.post("/clients/promote/keys/rotate", headers=auth(token))
    after = await response.json()
    jwks = await (await http.get("/clients/promote/jwks.json")).json()

    assert response.status == 201
    assert after["active"]["kid"] == old_next
    assert after["retired"]["kid"] == old_active
    assert after["next"]["kid"] not in (old_active, old_next)
    assert [k["kid"] for k in jwks["keys"]] == [
        old_next,
        after["next"]["kid"],
        old_active,
    ]


async def test_rotation_while_next_is_too_young_is_409_with_retry_after(
    http, create_client
):
    created = await create_client("young", prepublish_period="1h", rotation_period="2h")
    token = created["client_token"]

    refused = await http.post("/clients/young/keys/rotate", headers=auth(token))
    problem = await refused.json()
    forced = await http.post(
        "/clients/young/keys/rotate", json={"force": True}, headers=auth(token)
    )

    assert refused.status == 409
    assert refused.content_type == "application/problem+json"
    assert 3500 <= int(refused.headers["Retry-After"]) <= 3600
    assert problem["retry_after"] == int(refused.headers["Retry-After"])
    assert forced.status == 201
    assert (await forced.json())["active"]["kid"] == created["next"]["kid"]


async def test_concurrent_rotations_never_leave_two_active_keys(
    http, create_client, database_url
):
    created = await create_client("race", prepublish_period=0)
    token = created["client_token"]

    responses = await asyncio.gather(
        *(
            http.post(
                "/clients/race/keys/rotate", json={"force": True}, headers=auth(token)
            )
            for _ in range(8)
        )
    )

    assert all(r.status in (201, 409) for r in responses)
    assert any(r.status == 201 for r in responses)
    conn = await asyncpg.connect(database_url)
    try:
        counts = dict(
            await conn.fetch(
                "SELECT state, count(*) FROM keys WHERE client_id = 'race' GROUP BY 1"
            )
        )
    finally:
        await conn.close()
    assert counts["active"] == 1
    assert counts["next"] == 1
    assert counts["retired"] == sum(r.status == 201 for r in responses)


async def test_revoking_the_active_key_promotes_next_at_once(http, create_client):
    created = await create_client("rev-active")
    token = created["client_token"]
    active, following = created["active"]["kid"], created["next"]["kid"]

    response = await http.post(
        f"/clients/rev-active/keys/{active}/revoke", headers=auth(token)
    )
    keys = (
        await (await http.get("/clients/rev-active/keys", headers=auth(token))).json()
    )["keys"]

    assert response.status == 200
    assert (await response.json())["key"]["state"] == "revoked"
    states = {k["kid"]: k["state"] for k in keys}
    assert states[active] == "revoked"
    assert states[following] == "active"
    assert list(states.values()).count("next") == 1


async def test_revoked_key_loses_its_private_part_in_the_row(
    http, create_client, database_url
):
    created = await create_client("rev-row")
    kid = created["next"]["kid"]

    await http.post(
        f"/clients/rev-row/keys/{kid}/revoke", headers=auth(created["client_token"])
    )
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(
            "SELECT state, sealed, kek_id FROM keys"
            " WHERE client_id = 'rev-row' AND kid = $1",
            kid,
        )
    finally:
        await conn.close()

    assert row["state"] == "revoked"
    assert row["sealed"] is None and row["kek_id"] is None


async def test_revoking_twice_is_a_409(http, create_client):
    created = await create_client("rev-twice")
    kid = created["next"]["kid"]
    headers = auth(created["client_token"])

    first = await http.post(f"/clients/rev-twice/keys/{kid}/revoke", headers=headers)
    second = await http.post(f"/clients/rev-twice/keys/{kid}/revoke", headers=headers)

    assert first.status == 200
    assert second.status == 409


def _public(alg_kty: str = "EC") -> dict:
    key = jwk.JWK.generate(kty="EC", crv="P-256") if alg_kty == "EC" else None
    assert key is not None
    return key.export_public(as_dict=True)


async def test_imported_key_becomes_active_then_next(http, create_client):
    created = await create_client("byo", key_source="imported", alg="ES256")
    headers = auth(created["client_token"])
    first, second = _public(), _public()

    one = await http.post("/clients/byo/keys", json={"jwk": first}, headers=headers)
    two = await http.post("/clients/byo/keys", json={"jwk": second}, headers=headers)
    jwks = await (await http.get("/clients/byo/jwks.json")).json()

    assert created["active"] is None and created["next"] is None
    assert one.status == 201 and (await one.json())["key"]["state"] == "active"
    assert two.status == 201 and (await two.json())["key"]["state"] == "next"
    assert len(jwks["keys"]) == 2
    assert all(k["alg"] == "ES256" and k["use"] == "sig" for k in jwks["keys"])


async def test_import_with_private_members_is_refused_and_not_stored(
    http, create_client
):
    created = await create_client("byo-priv", key_source="imported", alg="ES256")
    headers = auth(created["client_token"])
    private = jwk.JWK.generate(kty="EC", crv="P-256").export_private(as_dict=True)

    response = await http.post(
        "/clients/byo-priv/keys", json={"jwk": private}, headers=headers
    )
    problem = await response.json()
    keys = await (await http.get("/clients/byo-priv/keys", headers=headers)).json()

    assert response.status == 422
    assert private["d"] not in problem["detail"]
    assert keys["keys"] == []


async def test_import_into_a_generated_client_is_refused(http, create_client):
    created = await create_client("gen-no-import")

    response = await http.post(
        "/clients/gen-no-import/keys",
        json={"jwk": _public()},
        headers=auth(created["client_token"]),
    )

    assert response.status == 409


async def test_import_of_wrong_algorithm_family_is_refused(http, create_client):
    created = await create_client("byo-rsa", key_source="imported", alg="RS256")

    response = await http.post(
        "/clients/byo-rsa/keys",
        json={"jwk": _public()},
        headers=auth(created["client_token"]),
    )

    assert response.status == 422
    assert response.content_type == "application/problem+json"


async def test_rotating_an_imported_client_promotes_its_imported_next(
    http, create_client
):
    created = await create_client(
        "byo-rot", key_source="imported", alg="ES256", prepublish_period=0
    )
    headers = auth(created["client_token"])
    for key in (_public(), _public()):
        await http.post("/clients/byo-rot/keys", json={"jwk": key}, headers=headers)

    response = await http.post("/clients/byo-rot/keys/rotate", headers=headers)
    after = await response.json()
    again = await http.post("/clients/byo-rot/keys/rotate", headers=headers)

    assert response.status == 201
    assert after["next"] is None
    assert after["retired"] is not None
    assert again.status == 409
