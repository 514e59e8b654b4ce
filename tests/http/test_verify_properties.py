"""Property-based tests of POST /verify, over HTTP against a live keysvc.

For any assertion at all, /verify answers 200 with a verdict of the
documented shape (or a 4xx problem for a malformed request), never a 5xx;
and it says ``valid: true`` only for a token that is genuinely valid: one
that keysvc's own /clients/{id}/assertions route signed, unchanged and used
once, or one that PyJWT signed with an imported key over claims that pass
every check of RFC 7523 §3.

How hypothesis meets the async fixtures: the live server and the aiohttp
client run on the session's event loop. Each test hands a synchronous
``@given`` function to a worker thread (``asyncio.to_thread``), so that the
loop stays free to serve while hypothesis runs; every example submits its
HTTP exchange to that loop as a coroutine with
``asyncio.run_coroutine_threadsafe`` and waits for the answer with a timeout.
Hypothesis keeps its whole engine this way, shrinking included: a failure is
reported with the smallest example it found.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from jwcrypto import jwk

from keysvc.http.schemas import PROBLEM, VERIFICATION
from keysvc.ratelimit import parse_rate
from keysvc.settings import Settings

ADMIN = {"Authorization": "Bearer ksad_" + "t" * 43}
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
AUDIENCE = "https://as.example/oauth2/token"
ISSUER = "https://as.example"
REQUEST_TIMEOUT = 30.0
# A test runs its examples in a thread; past this the test fails, not hangs.
RUN_TIMEOUT = 90.0
BASE64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
REGISTERED_CLAIMS = {"iss", "sub", "aud", "exp", "nbf", "iat", "jti"}
RESERVED_HEADERS = {"alg", "kid", "typ", "crit", "b64", "jwk", "jku", "x5u", "x5c"}

_verdict = Draft202012Validator(VERIFICATION)
_problem = Draft202012Validator(PROBLEM)


def examples(count: int) -> hsettings:
    """Settings for an HTTP-bound property: no deadline, no example database."""
    return hsettings(
        max_examples=count,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64json(value: Any) -> str:
    return b64(json.dumps(value).encode())


# -- talking to the live server from the hypothesis thread ---------------------


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    cache_control: str | None
    body: Any


class Live:
    """The live server, as seen from the worker thread that runs hypothesis."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        http: aiohttp.ClientSession,
        verifier_token: str,
    ) -> None:
        self.loop = loop
        self.http = http
        self.verifier = {"Authorization": f"Bearer {verifier_token}"}

    def run(self, make: Callable[[], Coroutine[Any, Any, Answer]]) -> Answer:
        future = asyncio.run_coroutine_threadsafe(make(), self.loop)
        return future.result(timeout=REQUEST_TIMEOUT)

    async def _send(self, method: str, path: str, **kwargs: Any) -> Answer:
        async with self.http.request(method, path, **kwargs) as response:
            raw = await response.read()
            body = json.loads(raw) if raw else None
            return Answer(
                response.status,
                response.content_type,
                response.headers.get("Cache-Control"),
                body,
            )

    def verify(self, assertion: Any, **fields: Any) -> Answer:
        body = {
            "client_assertion": assertion,
            "client_assertion_type": ASSERTION_TYPE,
            **fields,
        }
        return self.run(
            lambda: self._send("POST", "/verify", json=body, headers=self.verifier)
        )

    def verify_raw(self, raw: bytes, content_type: str) -> Answer:
        headers = {**self.verifier, "Content-Type": content_type}
        return self.run(
            lambda: self._send("POST", "/verify", data=raw, headers=headers)
        )

    def sign(self, client: Client, audience: Any = AUDIENCE) -> str:
        headers = {"Authorization": f"Bearer {client.token}"}
        answer = self.run(
            lambda: self._send(
                "POST",
                f"/clients/{client.client_id}/assertions",
                json={"audience": audience},
                headers=headers,
            )
        )
        assert answer.status == 200, answer
        token: str = answer.body["client_assertion"]
        return token


def verdict(answer: Answer) -> bool:
    """Check a 200 answer has the documented shape; return its ``valid``."""
    assert answer.status == 200, answer
    assert answer.content_type == "application/json"
    assert answer.cache_control == "no-store"
    errors = [e.message for e in _verdict.iter_errors(answer.body)]
    assert not errors, (answer.body, errors)
    if answer.body["valid"] is False:
        assert answer.body["reason"], answer.body

    valid: bool = answer.body["valid"]
    return valid


def refused(answer: Answer) -> None:
    """A verdict of ``valid: false``, or a 4xx problem: anything but a 5xx."""
    assert answer.status < 500, answer
    if answer.status == 200:
        assert verdict(answer) is False, answer
        return
    assert 400 <= answer.status < 500, answer
    assert answer.content_type == "application/problem+json", answer
    assert not list(_problem.iter_errors(answer.body)), answer.body
    assert answer.body["status"] == answer.status


async def in_thread(test: Callable[[], None]) -> None:
    """Run a hypothesis test in a worker thread while the loop keeps serving."""
    await asyncio.wait_for(asyncio.to_thread(test), RUN_TIMEOUT)


# -- the world: clients of each kind and a verifier ----------------------------


@dataclass(frozen=True)
class Client:
    client_id: str
    token: str = field(repr=False)
    alg: str = "ES256"
    # The private key PyJWT signs with, for an imported client.
    private: Any = field(default=None, repr=False)
    kid: str | None = None


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """No per-client signing limit: examples ask for assertions back to back."""
    return replace(settings, assertion_rate=parse_rate("0"))


@dataclass(frozen=True)
class World:
    live: Live
    generated: Client
    secret: Client
    imported_ec: Client
    imported_rsa: Client
    stranger_ec: Any = field(repr=False)


async def _imported(
    http: aiohttp.ClientSession, create_client: Any, client_id: str, alg: str, key: Any
) -> Client:
    created = await create_client(client_id, key_source="imported", alg=alg)
    public = json.loads(jwk.JWK.from_pyca(key.public_key()).export_public())
    response = await http.post(
        f"/clients/{client_id}/keys",
        json={"jwk": public, "activate": True},
        headers={"Authorization": f"Bearer {created['client_token']}"},
    )
    body = await response.json()
    assert response.status == 201, body

    return Client(client_id, created["client_token"], alg, key, body["key"]["kid"])


@pytest.fixture
async def world(
    http: aiohttp.ClientSession, create_client: Any, leak_watch: Any
) -> World:
    generated = await create_client("pv-gen", alg="ES256")
    secret = await create_client("pv-sec", auth_method="client_secret_jwt")
    imported_ec = await _imported(
        http,
        create_client,
        "pv-imp-ec",
        "ES256",
        ec.generate_private_key(ec.SECP256R1()),
    )
    imported_rsa = await _imported(
        http,
        create_client,
        "pv-imp-rsa",
        "RS256",
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
    )
    response = await http.post(
        "/verifiers",
        json={"name": "pv-as", "audiences": [AUDIENCE, ISSUER]},
        headers=ADMIN,
    )
    body = await response.json()
    assert response.status == 201, body
    leak_watch.add(body["verifier_token"])

    return World(
        live=Live(asyncio.get_running_loop(), http, body["verifier_token"]),
        generated=Client("pv-gen", generated["client_token"], "ES256"),
        secret=Client("pv-sec", secret["client_token"], "HS256"),
        imported_ec=imported_ec,
        imported_rsa=imported_rsa,
        stranger_ec=ec.generate_private_key(ec.SECP256R1()),
    )


# -- arbitrary input -----------------------------------------------------------

compact_shapes = st.lists(
    st.text(alphabet=BASE64URL + "=+/. ", max_size=40), min_size=1, max_size=6
).map(".".join)
arbitrary_assertions = st.one_of(
    st.text(max_size=300),
    st.binary(max_size=300).map(lambda raw: raw.decode("latin-1")),
    compact_shapes,
)


async def test_arbitrary_text_and_bytes_are_refused_with_a_verdict(world: World):
    @examples(200)
    @given(assertion=arbitrary_assertions)
    def check(assertion: str) -> None:
        assert verdict(world.live.verify(assertion)) is False

    await in_thread(check)


requests = st.fixed_dictionaries(
    {
        "client_assertion": json_values,
        "client_assertion_type": st.just(ASSERTION_TYPE) | json_values,
    },
    optional={
        "audience": st.text(max_size=40) | json_values,
        "client_id": st.text(max_size=40) | json_values,
        "surprise": json_values,
    },
)


async def test_malformed_requests_are_4xx_problems_and_odd_fields_only_refuse(
    world: World,
):
    """Bodies that are not JSON, not objects, or hold odd values in any field:
    a 4xx problem, or a verdict of ``valid: false``; never a 5xx."""

    @examples(150)
    @given(
        body=st.one_of(
            st.binary(max_size=200).map(lambda raw: (raw, "application/json")),
            requests.map(lambda r: (json.dumps(r).encode(), "application/json")),
            json_values.map(lambda v: (json.dumps(v).encode(), "application/json")),
            st.binary(max_size=50).map(lambda raw: (raw, "text/plain")),
        )
    )
    def check(body: tuple[bytes, str]) -> None:
        raw, media = body
        refused(world.live.verify_raw(raw, media))

    await in_thread(check)


headers = st.fixed_dictionaries(
    {},
    optional={
        "alg": st.sampled_from(
            ["ES256", "RS256", "PS256", "HS256", "EdDSA", "none", "NONE", "ES512"]
        )
        | json_values,
        "kid": st.text(max_size=50) | json_values,
        "typ": st.sampled_from(["JWT", "client-authentication+jwt"]) | json_values,
        "crit": json_values,
        "jwk": json_values,
        "jku": st.just("https://attacker.example/jwks.json"),
    },
).flatmap(
    lambda fixed: st.dictionaries(
        st.text(max_size=10).filter(lambda k: k not in RESERVED_HEADERS),
        json_values,
        max_size=3,
    ).map(lambda extra: {**extra, **fixed})
)


def claims_strategy(client_ids: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    now = int(time.time())
    return st.fixed_dictionaries(
        {},
        optional={
            "iss": st.sampled_from(client_ids) | json_values,
            "sub": st.sampled_from(client_ids) | json_values,
            "aud": st.sampled_from([AUDIENCE, ISSUER, [AUDIENCE], "other"])
            | json_values,
            "exp": st.integers(now - 10**6, now + 10**6) | json_values,
            "iat": st.integers(now - 10**6, now + 10**6) | json_values,
            "nbf": st.integers(now - 10**6, now + 10**6) | json_values,
            "jti": st.text(min_size=1, max_size=40) | json_values,
        },
    ).flatmap(
        lambda fixed: st.dictionaries(
            st.text(max_size=10).filter(lambda k: k not in REGISTERED_CLAIMS),
            json_values,
            max_size=3,
        ).map(lambda extra: {**extra, **fixed})
    )


async def test_arbitrary_headers_and_claims_never_verify_without_a_published_key(
    world: World,
):
    """Compact JWS shapes over any header and claims, with a random signature or
    one made by a key that no client publishes: never valid, never a 5xx."""
    ids = ["pv-gen", "pv-sec", "pv-imp-ec", "pv-imp-rsa", "nobody"]
    stranger = world.stranger_ec

    @examples(150)
    @given(
        header=headers,
        claims=claims_strategy(ids),
        signature=st.one_of(
            st.binary(max_size=300).map(b64),
            st.just("stranger"),
            st.just(""),
        ),
    )
    def check(header: dict[str, Any], claims: dict[str, Any], signature: str) -> None:
        signing_input = f"{b64json(header)}.{b64json(claims)}"
        if signature == "stranger":
            es256 = jwt.get_algorithm_by_name("ES256")
            signature = b64(es256.sign(signing_input.encode(), stranger))

        assert verdict(world.live.verify(f"{signing_input}.{signature}")) is False

    await in_thread(check)


# -- genuine tokens, mutated ---------------------------------------------------


def _reencode(segment: str, how: str) -> str:
    decoded = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    if how == "spaced":
        return b64(json.dumps(decoded, indent=1).encode())
    if how == "sorted":
        return b64(json.dumps(decoded, sort_keys=True, separators=(",", ":")).encode())
    if how == "padded":
        return segment + "=" * (-len(segment) % 4)
    if how == "standard alphabet":
        return base64.b64encode(base64.urlsafe_b64decode(segment + "==")).decode()
    # "same": the canonical encoding keysvc itself writes.
    return b64(json.dumps(decoded, separators=(",", ":")).encode())


@dataclass(frozen=True)
class Mutation:
    """A change to a genuine token, shown whole when hypothesis reports it."""

    kind: str
    position: int
    char: str
    which: int
    how: str

    def apply(self, token: str, other: str) -> str:
        """Change ``token``; ``other`` is a second genuine token of the client."""
        at = self.position % len(token)
        parts = token.split(".")
        if self.kind == "truncate":
            return token[:at]
        if self.kind == "replace char":
            return token[:at] + self.char + token[at + 1 :]
        if self.kind == "insert char":
            return token[:at] + self.char + token[at:]
        if self.kind == "reencode" and self.which < 2:
            parts[self.which] = _reencode(parts[self.which], self.how)
            return ".".join(parts)
        if self.kind in ("reencode", "swap signature"):
            return ".".join([*parts[:2], other.split(".")[2]])
        if self.kind == "segments":
            shapes = [
                ".".join(parts[:2]),
                f"{token}.{parts[2]}",
                f"{token}.",
                f".{token}",
                ".".join([parts[1], parts[0], parts[2]]),
            ]
            return shapes[self.which + at % 3]
        if self.kind == "whitespace":
            return [f" {token}", f"{token}\n", token.replace(".", " .", 1)][self.which]
        if self.kind == "case":
            return token[:at] + token[at:].swapcase()

        return token


MUTATION_KINDS = [
    "none", "truncate", "replace char", "insert char", "reencode",
    "swap signature", "segments", "whitespace", "case",
]  # fmt: skip
mutations = st.builds(
    Mutation,
    kind=st.sampled_from(MUTATION_KINDS),
    position=st.integers(0, 10_000),
    char=st.sampled_from(BASE64URL + ".=+/ \x00é"),
    which=st.integers(0, 2),
    how=st.sampled_from(["spaced", "sorted", "padded", "standard alphabet", "same"]),
)


async def test_genuine_tokens_verify_once_and_never_once_changed(world: World):
    """Tokens from keysvc's signing route (ES256 and HS256), each changed by a
    drawn mutation: valid only when the result is the genuine token itself,
    and then only the first time it is presented."""
    accepted: list[str] = []

    @examples(150)
    @given(client=st.sampled_from(["generated", "secret"]), mutation=mutations)
    def check(client: str, mutation: Mutation) -> None:
        owner = getattr(world, client)
        genuine, other = world.live.sign(owner), world.live.sign(owner)
        changed = mutation.apply(genuine, other)

        first = verdict(world.live.verify(changed))
        assert first is (changed == genuine), (changed, first)
        if first:
            accepted.append(changed)
            assert verdict(world.live.verify(changed)) is False, "a replay verified"

    await in_thread(check)

    assert len(accepted) >= 5, "the unchanged token was drawn and accepted"


# -- a model of RFC 7523 §3, over tokens PyJWT signs with imported keys --------

FAR = 3600
MISSING = object()


def _variants(client: Client, now: int) -> dict[str, tuple[list[Any], list[Any]]]:
    """Each member's (passing, failing) variants, all far from any boundary:
    an hour, not a second, past the leeway, so the verdict is certain."""
    cid = client.client_id
    wrong_algs = ["ES384", "HS256", "none"] if client.alg == "ES256" else [
        "PS256", "RS512", "HS256", "none"
    ]  # fmt: skip
    return {
        "alg": ([client.alg], wrong_algs),
        "kid": ([client.kid, MISSING], ["nokid"]),
        "typ": ([MISSING, "JWT"], [5]),
        "iss": ([cid], ["pv-gen", MISSING, 7]),
        "sub": ([cid], ["pv-gen", MISSING]),
        "aud": (
            [AUDIENCE, ISSUER, [AUDIENCE, "https://x"]],
            ["https://other.example", ["https://x"], MISSING],
        ),
        "exp": ([now + 120, now + 120.5], [now - FAR, now + FAR, MISSING, "soon"]),
        "iat": ([MISSING, now], [now + FAR, now - FAR]),
        "nbf": ([MISSING, now - 10], [now + FAR]),
        "jti": ([secrets.token_urlsafe(16)], [MISSING, "", 3]),
    }


@st.composite
def modelled_tokens(draw: st.DrawFn, world: World) -> tuple[str, bool, dict]:
    """A token PyJWT signs with an imported key, the request fields to send
    with it, and whether the pair must verify.

    At most two members are drawn failing, so valid tokens are common and
    each check is met on its own.
    """
    client = draw(st.sampled_from([world.imported_ec, world.imported_rsa]))
    variants = _variants(client, int(time.time()))
    faults = draw(st.sets(st.sampled_from(sorted(variants)), max_size=2))
    picks = {
        name: draw(st.sampled_from(bad if name in faults else good))
        for name, (good, bad) in variants.items()
    }
    fields = draw(
        st.sampled_from(
            [{}, {"audience": AUDIENCE}, {"audience": ISSUER},
             {"client_id": client.client_id}, {"client_id": "pv-gen"}]
        )
    )  # fmt: skip
    extra = draw(
        st.dictionaries(
            st.text(max_size=10).filter(lambda k: k not in REGISTERED_CLAIMS),
            json_values,
            max_size=3,
        )
    )

    header = {"alg": picks["alg"]}
    header |= {n: picks[n] for n in ("kid", "typ") if picks[n] is not MISSING}
    claims = extra | {
        n: v for n, v in picks.items() if n in REGISTERED_CLAIMS and v is not MISSING
    }
    # What the request names only narrows: the token must match it too.
    aud = claims.get("aud")
    narrowed = fields.get("audience") in (None, aud) or (
        isinstance(aud, list) and fields["audience"] in aud
    )
    named = fields.get("client_id") in (None, client.client_id)
    valid = not faults and narrowed and named

    return _signed(client, header, claims), valid, fields


def _signed(client: Client, header: dict[str, Any], claims: dict[str, Any]) -> str:
    signing_input = f"{b64json(header)}.{b64json(claims)}".encode()
    alg = header["alg"]
    if alg == "none":
        signature = b""
    elif alg == "HS256":
        # Key confusion: the public key's bytes as an HMAC secret.
        public = jwk.JWK.from_pyca(client.private.public_key()).export_to_pem()
        signature = hmac.new(public, signing_input, hashlib.sha256).digest()
    else:
        signature = jwt.get_algorithm_by_name(alg).sign(signing_input, client.private)

    return f"{signing_input.decode()}.{b64(signature)}"


async def test_imported_key_tokens_verify_exactly_when_every_check_passes(
    world: World,
):
    """A model of the checks over tokens signed by PyJWT: the verdict is the
    model's, and a valid token is accepted once."""
    accepted: list[str] = []

    @examples(200)
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        token, valid, fields = data.draw(modelled_tokens(world))

        assert verdict(world.live.verify(token, **fields)) is valid, token
        if valid:
            accepted.append(token)
            assert verdict(world.live.verify(token, **fields)) is False

    await in_thread(check)

    # The property must have met both sides: valid tokens, and faulty ones.
    assert len(set(accepted)) >= 20
