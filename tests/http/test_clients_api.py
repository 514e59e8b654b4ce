"""The admin client routes and the audit trail."""

from __future__ import annotations


async def test_create_returns_client_keys_and_a_token_once(http, admin, create_client):
    created = await create_client("shown-once")

    again = await (await http.get("/clients/shown-once", headers=admin)).json()

    assert created["client_token"].startswith("kscl_")
    assert len(created["client_token"]) >= 48
    assert created["client"]["jwks_url"] == "/clients/shown-once/jwks.json"
    assert "client_token" not in again and "token_hash" not in again["client"]


async def test_creating_an_existing_client_is_a_409(http, admin, create_client):
    await create_client("twice")

    response = await http.post("/clients", json={"client_id": "twice"}, headers=admin)

    assert response.status == 409
    assert response.content_type == "application/problem+json"


async def test_list_paginates_with_a_cursor(http, admin, create_client):
    for n in range(5):
        await create_client(f"page-{n}", key_source="imported")

    seen, cursor = [], None
    while True:
        query = {"limit": "2"} | ({"cursor": cursor} if cursor else {})
        page = await (await http.get("/clients", params=query, headers=admin)).json()
        seen.extend(c["client_id"] for c in page["clients"])
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert seen == [f"page-{n}" for n in range(5)]


async def test_list_refuses_bad_limits_and_cursors(http, admin):
    for query in ({"limit": "0"}, {"limit": "501"}, {"limit": "x"}, {"cursor": "%%%"}):
        response = await http.get("/clients", params=query, headers=admin)
        assert response.status == 400, query
        assert response.content_type == "application/problem+json"


async def test_patch_changes_policy_and_validates_periods(http, admin, create_client):
    await create_client("patchy")

    ok = await http.patch(
        "/clients/patchy", json={"rotation_period": "10d", "grace_period": 3600},
        headers=admin,
    )  # fmt: skip
    bad = await http.patch(
        "/clients/patchy", json={"prepublish_period": "20d"}, headers=admin
    )
    body = await ok.json()

    assert ok.status == 200
    assert body["client"]["rotation_period_seconds"] == 864000
    assert body["client"]["grace_period_seconds"] == 3600
    assert bad.status == 400
    assert "prepublish_period" in (await bad.json())["detail"]


async def test_delete_removes_client_and_keeps_its_trail(http, admin, create_client):
    await create_client("doomed")

    deleted = await http.delete("/clients/doomed", headers=admin)
    jwks = await http.get("/clients/doomed/jwks.json")
    events = await (await http.get("/clients/doomed/events", headers=admin)).json()
    again = await http.delete("/clients/doomed", headers=admin)

    assert deleted.status == 204
    assert jwks.status == 404
    assert [e["kind"] for e in events["events"]][-1] == "client.deleted"
    assert again.status == 404


async def test_audit_trail_records_every_event_with_its_actor(
    http, admin, create_client
):
    created = await create_client("audited", prepublish_period=0)
    headers = {"Authorization": f"Bearer {created['client_token']}"}
    first_next = created["next"]["kid"]

    await http.post("/clients/audited/keys/rotate", headers=headers)
    await http.post(f"/clients/audited/keys/{first_next}/revoke", headers=admin)
    await http.patch("/clients/audited", json={"grace_period": 60}, headers=admin)
    trail = (await (await http.get("/clients/audited/events", headers=admin)).json())[
        "events"
    ]

    assert [(e["kind"], e["actor"]) for e in trail] == [
        ("client.created", "admin"),
        ("key.generated", "admin"),
        ("key.generated", "admin"),
        ("key.retired", "client:audited"),
        ("key.activated", "client:audited"),
        ("key.generated", "client:audited"),
        ("key.revoked", "admin"),
        ("key.activated", "admin"),
        ("key.generated", "admin"),
        ("client.updated", "admin"),
    ]
    assert trail[6]["kid"] == first_next


async def test_unknown_client_routes_are_404(http, admin):
    for method, path in (
        ("GET", "/clients/ghost"),
        ("PATCH", "/clients/ghost"),
        ("DELETE", "/clients/ghost"),
        ("GET", "/clients/ghost/events"),
        ("GET", "/clients/ghost/keys"),
        ("POST", "/clients/ghost/keys/rotate"),
    ):
        body = {"grace_period": 1} if method == "PATCH" else None
        response = await http.request(method, path, json=body, headers=admin)
        assert response.status == 404, (method, path)
        assert response.content_type == "application/problem+json"
