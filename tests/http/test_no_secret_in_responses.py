"""No response of any route carries a secret it is not meant to show.

One session drives every route of a live keysvc once, through a real HTTP
client: generated (EC, RSA, Ed25519), imported, remote and client_secret_jwt
clients; rotation, import, revocation, signing, secret rotation, verifiers,
/verify, the audit trail, listings, the JWKS routes, the system routes, and
the error paths. Every response is kept whole: status, headers and body.

The secrets are then read from where they really live, not from what the
API chose to show: every sealed blob in the database is unsealed with the
test KEK into its private members (collected after each step, since a
revoked key's private part is destroyed), beside the admin token, the KEK,
the password of the DSN the service was given, and each token, secret and
assertion that was shown once. A value may appear only in the one response
meant to show it; a private member, a sealed blob, the admin token, the KEK
and the DSN password may appear in none.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from jwcrypto import jwk
from remote_upstream import Upstream, public, signing_key

from keysvc import client_secrets
from keysvc.http.appkeys import STATUS, STORE
from keysvc.keys import load_private_key
from keysvc.ratelimit import parse_rate
from keysvc.sealing import Kek, SealedBlob, Sealer, format_kek
from keysvc.secret import Secret
from keysvc.settings import Settings

ADMIN_TOKEN = "ksad_" + "t" * 43
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
AUDIENCE = "https://as.example/oauth2/token"
DSN_PASSWORD = "dsn-pw-" + secrets.token_urlsafe(18)
PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "k")
PUBLIC_MEMBERS = {"kty", "kid", "use", "alg", "crv", "x", "y", "n", "e"}
KEY_FIELDS = {
    "kid", "alg", "state", "origin", "public_jwk", "created_at", "published_at",
    "activated_at", "retired_at", "ended_at",
}  # fmt: skip


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def with_password(dsn: str, password: str) -> str:
    """The DSN with a password for its user (the test server trusts local users)."""
    scheme, rest = dsn.split("://", 1)
    user, at, where = rest.partition("@")

    return f"{scheme}://{user.split(':', 1)[0]}:{password}{at}{where}"


def encodings(blob: bytes) -> list[str]:
    """The forms a byte string could take in a JSON body or a header."""
    return [
        blob.hex(),
        "\\x" + blob.hex(),
        base64.b64encode(blob).decode(),
        base64.urlsafe_b64encode(blob).decode(),
        base64.urlsafe_b64encode(blob).rstrip(b"=").decode(),
    ]


@pytest.fixture
def settings(settings: Settings, database_url: str) -> Settings:
    """A DSN with a password; loopback upstreams over plain HTTP; no rate limits."""
    return replace(
        settings,
        database_url=Secret(with_password(database_url, DSN_PASSWORD)),
        remote_allow_http=True,
        remote_allow=("127.0.0.0/8",),
        remote_refetch_interval_seconds=0.1,
        remote_min_ttl_seconds=1,
        remote_timeout_seconds=2.0,
        rotation_rate=parse_rate("0"),
        assertion_rate=parse_rate("0"),
    )


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    server = await Upstream().start()
    yield server
    await server.close()


@dataclass
class Exchange:
    """One request and its whole response, with the secrets it may show."""

    label: str
    status: int
    headers: dict[str, str]
    body: str
    shows: frozenset[str] = frozenset()

    @property
    def text(self) -> str:
        """Headers and body, as a caller (or a proxy's log) would see them."""
        lines = [f"{name}: {value}" for name, value in self.headers.items()]

        return "\n".join([*lines, self.body])

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Secrets:
    """What must not leak, and which single response may show each one-time value."""

    never: set[str] = field(default_factory=set)
    shown_once: dict[str, str] = field(default_factory=dict)

    def forbid(self, *values: str) -> None:
        self.never.update(v for v in values if len(v) >= 16)

    def once(self, value: str, label: str) -> None:
        self.shown_once[value] = label


class Session:
    """Drives the live server and keeps every exchange."""

    def __init__(
        self, http: aiohttp.ClientSession, app: web.Application, kek: Kek
    ) -> None:
        self.http = http
        self.app = app
        self.sealer = Sealer((kek,))
        self.exchanges: list[Exchange] = []
        self.secrets = Secrets()

    async def call(
        self,
        label: str,
        method: str,
        path: str,
        *,
        token: str | None = None,
        expect: int,
        shows: tuple[str, ...] = (),
        **kwargs: Any,
    ) -> Exchange:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers.update(bearer(token))
        response = await asyncio.wait_for(
            self.http.request(method, path, headers=headers, **kwargs), 30
        )
        body = await asyncio.wait_for(response.text(), 30)
        exchange = Exchange(
            label,
            response.status,
            {name.lower(): value for name, value in response.headers.items()},
            body,
            frozenset(shows),
        )
        self.exchanges.append(exchange)
        assert response.status == expect, (label, response.status, body[:300])

        return exchange

    async def harvest(self) -> None:
        """Read every sealed part now in the database and forbid what it holds."""
        store = self.app[STORE]
        for record in await store.sealed_keys(after=None, limit=1000):
            assert record.sealed is not None and record.kek_id is not None
            self.secrets.forbid(*encodings(record.sealed))
            opened = self.sealer.unseal(
                SealedBlob(record.kek_id, record.sealed),
                client_id=record.client_id,
                kid=record.kid,
            )
            private = json.loads(load_private_key(opened).export_private())
            members = [private[m] for m in PRIVATE_MEMBERS if m in private]
            assert members, f"key {record.kid} has no private member"
            self.secrets.forbid(*members)
        for client_id, secret in await store.sealed_secrets(after=None, limit=1000):
            self.secrets.forbid(*encodings(secret.sealed))
            opened = client_secrets.unseal(
                self.sealer,
                client_id,
                secret.secret_id,
                SealedBlob(secret.kek_id, secret.sealed),
            )
            # The secret text itself is shown once; its HMAC key form never.
            self.secrets.forbid(client_secrets.hmac_key(opened)["k"])
            assert opened.decode() in self.secrets.shown_once


@pytest.fixture
async def session(
    http: aiohttp.ClientSession, app: web.Application, kek: Kek, leak_watch: Any
) -> AsyncIterator[Session]:
    driver = Session(http, app, kek)
    driver.secrets.forbid(
        ADMIN_TOKEN, DSN_PASSWORD, *encodings(kek.key), format_kek(kek)
    )
    yield driver
    # The same values must not reach the log either (checked at session end).
    leak_watch.add(*driver.secrets.never, *driver.secrets.shown_once)


async def _create(s: Session, client_id: str, **fields: Any) -> dict[str, Any]:
    label = f"create {client_id}"
    exchange = await s.call(
        label,
        "POST",
        "/clients",
        token=ADMIN_TOKEN,
        json={"client_id": client_id, **fields},
        expect=201,
    )
    body: dict[str, Any] = exchange.json()
    shown = [body["client_token"], body.get("client_secret")]
    for value in filter(None, shown):
        s.secrets.once(value, label)
    exchange.shows = frozenset(filter(None, shown))
    await s.harvest()

    return body


def _assertion(s: Session, exchange: Exchange) -> str:
    token: str = exchange.json()["client_assertion"]
    s.secrets.once(token, exchange.label)
    exchange.shows = frozenset({token})

    return token


async def _drive_clients(s: Session, upstream: Upstream) -> dict[str, Any]:
    """Create one client of each kind, then use each through its own routes."""
    remote_key = signing_key("ES256")
    upstream.document = {"keys": [public(remote_key)]}
    made = {
        "ec": await _create(s, "leak-ec"),
        "rsa": await _create(s, "leak-rsa", alg="RS256", key_size=2048),
        "ed": await _create(s, "leak-ed", alg="EdDSA"),
        "imp": await _create(s, "leak-imp", key_source="imported", alg="ES256"),
        "sec": await _create(s, "leak-sec", auth_method="client_secret_jwt"),
        "remote": await _create(
            s, "leak-remote", key_source="remote", jwks_uri=upstream.url()
        ),
    }
    made["remote_key"] = remote_key
    ec_token = made["ec"]["client_token"]

    await s.call("list", "GET", "/clients", token=ADMIN_TOKEN, expect=200)
    page = await s.call(
        "page", "GET", "/clients?limit=2", token=ADMIN_TOKEN, expect=200
    )
    await s.call(
        "next page",
        "GET",
        f"/clients?limit=2&cursor={page.json()['next_cursor']}",
        token=ADMIN_TOKEN,
        expect=200,
    )
    await s.call(
        "patch",
        "PATCH",
        "/clients/leak-ec",
        token=ADMIN_TOKEN,
        json={"grace_period": "2d"},
        expect=200,
    )
    for name in ("ec", "rsa", "ed", "imp", "sec", "remote"):
        client_id = made[name]["client"]["client_id"]
        await s.call(
            f"get {name}", "GET", f"/clients/{client_id}", token=ADMIN_TOKEN, expect=200
        )
        await s.call(
            f"keys {name}",
            "GET",
            f"/clients/{client_id}/keys",
            token=made[name]["client_token"],
            expect=200,
        )

    # Keys: a rotation, an import, a revocation, each followed by a harvest.
    await s.call(
        "rotate ec",
        "POST",
        "/clients/leak-ec/keys/rotate",
        token=ec_token,
        json={"force": True},
        expect=201,
    )
    await s.call(
        "rotate rsa",
        "POST",
        "/clients/leak-rsa/keys/rotate",
        token=ADMIN_TOKEN,
        json={"force": True},
        expect=201,
    )
    await s.harvest()
    imported = jwk.JWK.generate(kty="EC", crv="P-256")
    made["imported_key"] = imported
    s.secrets.forbid(json.loads(imported.export_private())["d"])
    await s.call(
        "import",
        "POST",
        "/clients/leak-imp/keys",
        token=made["imp"]["client_token"],
        json={"jwk": json.loads(imported.export_public()), "activate": True},
        expect=201,
    )
    keys = (
        await s.call(
            "keys ec after", "GET", "/clients/leak-ec/keys", token=ec_token, expect=200
        )
    ).json()["keys"]
    retired = next(k["kid"] for k in keys if k["state"] == "retired")
    await s.harvest()
    await s.call(
        "revoke retired",
        "POST",
        f"/clients/leak-ec/keys/{retired}/revoke",
        token=ec_token,
        expect=200,
    )

    # Credentials shown once: assertions and a rotated secret.
    for name in ("ec", "rsa", "ed", "sec"):
        client_id = made[name]["client"]["client_id"]
        exchange = await s.call(
            f"sign {name}",
            "POST",
            f"/clients/{client_id}/assertions",
            token=made[name]["client_token"],
            json={"audience": AUDIENCE, "lifetime": 120},
            expect=200,
        )
        made[f"assertion_{name}"] = _assertion(s, exchange)
    rotated = await s.call(
        "rotate secret",
        "POST",
        "/clients/leak-sec/secret/rotate",
        token=made["sec"]["client_token"],
        expect=201,
    )
    new_secret = rotated.json()["client_secret"]
    s.secrets.once(new_secret, "rotate secret")
    rotated.shows = frozenset({new_secret})
    await s.harvest()
    exchange = await s.call(
        "sign sec again",
        "POST",
        "/clients/leak-sec/assertions",
        token=made["sec"]["client_token"],
        json={"audience": AUDIENCE},
        expect=200,
    )
    made["assertion_sec_new"] = _assertion(s, exchange)

    return made


async def _drive_verifiers(s: Session, made: dict[str, Any]) -> None:
    """Verifiers, /verify with good and bad assertions, and the audit trail."""
    tokens = []
    for name in ("as-main", "as-spare"):
        label = f"verifier {name}"
        exchange = await s.call(
            label,
            "POST",
            "/verifiers",
            token=ADMIN_TOKEN,
            json={"name": name, "audiences": [AUDIENCE]},
            expect=201,
        )
        token = exchange.json()["verifier_token"]
        s.secrets.once(token, label)
        exchange.shows = frozenset({token})
        tokens.append((token, exchange.json()["verifier"]["verifier_id"]))
    listed = await s.call(
        "verifiers", "GET", "/verifiers", token=ADMIN_TOKEN, expect=200
    )
    assert len(listed.json()["verifiers"]) == 2
    await s.call(
        "delete verifier",
        "DELETE",
        f"/verifiers/{tokens[1][1]}",
        token=ADMIN_TOKEN,
        expect=204,
    )

    verifier = tokens[0][0]
    now = int(time.time())
    remote_key = made["remote_key"]
    remote_assertion = jwt.encode(
        {
            "iss": "leak-remote",
            "sub": "leak-remote",
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + 120,
            "jti": secrets.token_urlsafe(16),
        },
        jwt.PyJWK(remote_key).key,
        algorithm="ES256",
        headers={"kid": remote_key["kid"]},
    )
    s.secrets.forbid(remote_key["d"])
    candidates = {
        name: made[f"assertion_{name}"] for name in ("ec", "rsa", "ed", "sec_new")
    }
    candidates["remote"] = remote_assertion
    for name, assertion in candidates.items():
        verdict = await s.call(
            f"verify {name}",
            "POST",
            "/verify",
            token=verifier,
            json={
                "client_assertion": assertion,
                "client_assertion_type": ASSERTION_TYPE,
            },
            expect=200,
        )
        assert verdict.json()["valid"] is True, (name, verdict.body)
    replayed = await s.call(
        "verify replay",
        "POST",
        "/verify",
        token=verifier,
        json={
            "client_assertion": made["assertion_ec"],
            "client_assertion_type": ASSERTION_TYPE,
        },
        expect=200,
    )
    assert replayed.json()["valid"] is False
    await s.call(
        "verify with the deleted verifier",
        "POST",
        "/verify",
        token=tokens[1][0],
        json={"client_assertion": "a.b.c", "client_assertion_type": ASSERTION_TYPE},
        expect=401,
    )

    for name in ("ec", "sec", "imp", "remote"):
        client_id = made[name]["client"]["client_id"]
        await s.call(
            f"events {name}",
            "GET",
            f"/clients/{client_id}/events",
            token=ADMIN_TOKEN,
            expect=200,
        )


async def _drive_public(s: Session, made: dict[str, Any], upstream: Upstream) -> None:
    """The JWKS routes of every client, conditional requests, the system routes."""
    for name in ("ec", "rsa", "ed", "imp", "sec", "remote"):
        client_id = made[name]["client"]["client_id"]
        document = await s.call(
            f"jwks {name}", "GET", f"/clients/{client_id}/jwks.json", expect=200
        )
        etag = document.headers["etag"]
        await s.call(
            f"jwks {name} again",
            "GET",
            f"/clients/{client_id}/jwks.json",
            headers={"If-None-Match": etag, "Accept": "application/jwk-set+json"},
            expect=304,
        )
        for key in document.json()["keys"]:
            await s.call(
                f"jwk {name}",
                "GET",
                f"/clients/{client_id}/jwks/{key['kid']}",
                expect=200,
            )
    await s.call("preflight", "OPTIONS", "/clients/leak-ec/jwks.json", expect=204)

    # The upstream turns hostile and serves its private key: never passed on.
    hostile = signing_key("ES256")
    s.secrets.forbid(hostile["d"])
    upstream.document = {"keys": [hostile]}
    await asyncio.sleep(0.2)
    await s.call(
        "jwk of a hostile upstream",
        "GET",
        f"/clients/leak-remote/jwks/{hostile['kid']}",
        expect=404,
    )
    await s.call(
        "jwks of a hostile upstream",
        "GET",
        "/clients/leak-remote/jwks.json",
        expect=200,
    )

    for path in ("/openapi.json", "/metrics", "/healthz", "/readyz"):
        await s.call(path, "GET", path, expect=200)


async def _drive_errors(s: Session, made: dict[str, Any]) -> None:
    """Refusals: tokens of the wrong kind, bad bodies, missing things, conflicts."""
    ec_token, imp_token = made["ec"]["client_token"], made["imp"]["client_token"]
    private = json.loads(made["imported_key"].export_private())
    calls: list[tuple[str, str, str, str | None, int, dict[str, Any]]] = [
        ("no token", "GET", "/clients", None, 401, {}),
        ("wrong token", "GET", "/clients/leak-ec/keys", "ksad_" + "w" * 43, 401, {}),
        ("admin token mangled", "GET", "/clients", ADMIN_TOKEN + "x", 401, {}),
        ("other client's token", "GET", "/clients/leak-ec/keys", imp_token, 403, {}),
        ("client token on admin route", "GET", "/clients", ec_token, 403, {}),
        ("admin token on /verify", "POST", "/verify", ADMIN_TOKEN, 403, {"json": {}}),
        ("bad json", "POST", "/clients", ADMIN_TOKEN, 400, {
            "data": b"{nope", "headers": {"Content-Type": "application/json"}}),
        ("unknown field", "POST", "/clients", ADMIN_TOKEN, 400, {
            "json": {"client_id": "x", "secret": ADMIN_TOKEN}}),
        ("not json", "POST", "/clients", ADMIN_TOKEN, 415, {
            "data": b"client_id=x", "headers": {"Content-Type": "text/plain"}}),
        ("too large", "POST", "/clients", ADMIN_TOKEN, 413, {
            "data": b'{"client_id": "' + b"x" * 100_000 + b'"}',
            "headers": {"Content-Type": "application/json"}}),
        ("duplicate client", "POST", "/clients", ADMIN_TOKEN, 409, {
            "json": {"client_id": "leak-ec"}}),
        ("private jwk import", "POST", "/clients/leak-imp/keys", imp_token, 422, {
            "json": {"jwk": private}}),
        ("import into generated", "POST", "/clients/leak-ec/keys", ec_token, 409, {
            "json": {"jwk": json.loads(made["imported_key"].export_public())}}),
        ("rotation too soon", "POST", "/clients/leak-rsa/keys/rotate", ADMIN_TOKEN,
            409, {"json": {}}),
        ("revoke unknown kid", "POST", "/clients/leak-ec/keys/nokid/revoke",
            ec_token, 404, {}),
        ("secret rotate of a key client", "POST", "/clients/leak-ec/secret/rotate",
            ec_token, 409, {}),
        ("sign for remote", "POST", "/clients/leak-remote/assertions",
            made["remote"]["client_token"], 409, {"json": {"audience": AUDIENCE}}),
        ("unknown client", "GET", "/clients/nobody/jwks.json", None, 404, {}),
        ("unknown route", "GET", "/nothing", None, 404, {}),
        ("wrong method", "PUT", "/clients", ADMIN_TOKEN, 405, {}),
        ("not acceptable", "GET", "/clients/leak-ec/jwks.json", None, 406, {
            "headers": {"Accept": "text/html"}}),
        ("verify bad type", "POST", "/verify", None, 401, {"json": {}}),
        ("delete client", "DELETE", "/clients/leak-ed", ADMIN_TOKEN, 204, {}),
        ("deleted client", "GET", "/clients/leak-ed", ADMIN_TOKEN, 404, {}),
    ]  # fmt: skip
    for label, method, path, token, status, kwargs in calls:
        await s.call(label, method, path, token=token, expect=status, **kwargs)


async def test_no_response_shows_a_secret_it_is_not_meant_to(
    session: Session, upstream: Upstream, app: web.Application
) -> None:
    assert app[STATUS].listening
    made = await _drive_clients(session, upstream)
    await _drive_verifiers(session, made)
    await _drive_public(session, made, upstream)
    await _drive_errors(session, made)

    secrets_ = session.secrets
    assert len(secrets_.never) > 40 and len(secrets_.shown_once) >= 14
    leaks = []
    for exchange in session.exchanges:
        text = exchange.text
        leaks += [
            (exchange.label, value[:8] + "…")
            for value in secrets_.never
            if value in text
        ]
        leaks += [
            (exchange.label, value[:8] + "…", f"shown by {label!r}")
            for value, label in secrets_.shown_once.items()
            if value in text and value not in exchange.shows
        ]

    assert not leaks, leaks
    shown = {value for e in session.exchanges for value in e.shows}
    assert shown == set(secrets_.shown_once), "each one-time value was seen once"


def _keys_in(value: Any) -> list[dict[str, Any]]:
    """Every key record or JWK anywhere in a JSON document."""
    found = []
    if isinstance(value, dict):
        if "kty" in value or "public_jwk" in value:
            found.append(value)
        for child in value.values():
            found += _keys_in(child)
    elif isinstance(value, list):
        for child in value:
            found += _keys_in(child)

    return found


async def test_every_key_listing_has_public_members_only(
    session: Session, upstream: Upstream
) -> None:
    made = await _drive_clients(session, upstream)
    await _drive_public(session, made, upstream)

    seen = 0
    for exchange in session.exchanges:
        if exchange.status != 200 and exchange.status != 201:
            continue
        if not exchange.body.startswith("{") or exchange.label == "/openapi.json":
            continue
        for key in _keys_in(exchange.json()):
            seen += 1
            if "public_jwk" in key:
                assert set(key) <= KEY_FIELDS, (exchange.label, sorted(key))
                key = key["public_jwk"]
            assert set(key) <= PUBLIC_MEMBERS, (exchange.label, sorted(key))
            assert key["use"] == "sig" and "alg" in key

    assert seen > 40
