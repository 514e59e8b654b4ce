"""Client-hosted JWKS: the address guard, the document checks, freshness, and
the fetcher against real upstream servers on loopback.

No test sends a packet beyond loopback: names resolve through a fake resolver,
and a refused address (10.0.0.1, ...) is refused before any connection.
"""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from jwcrypto import jwk
from remote_upstream import FakeResolver, Upstream, public, signing_key

from keysvc.errors import InvalidJwksUri, UpstreamFailed
from keysvc.remote_fetch import Fetcher
from keysvc.remote_guard import AddressGuard, refusal
from keysvc.remote_keys import DEFAULT_TTL_SECONDS, freshness_seconds, parse_key_set

LOOPBACK_ALLOWED = ("127.0.0.0/8", "::1/128")


# -- the address guard ---------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "non-public"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "private"),
        ("fc00::1", "private"),
        ("192.0.2.10", "private"),
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:127.0.0.1", "loopback"),
        ("2002:a00:1::", "6to4-wrapped private"),
        ("64:ff9b::a00:1", "reserved"),
    ],
)
def test_guard_refuses_addresses_that_are_not_public_unicast(
    address: str, reason: str
) -> None:
    assert refusal(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize(
    "address", ["93.184.216.34", "8.8.8.8", "2001:4860:4860::8888", "::ffff:8.8.8.8"]
)
def test_guard_lets_public_unicast_addresses_through(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is None
    AddressGuard((), allow_http=False).check_address("jwks.example", address)


def test_allow_list_names_networks_and_hosts_that_pass_the_guard() -> None:
    guard = AddressGuard(("10.1.0.0/16", "jwks.internal."), allow_http=False)

    guard.check_address("anything.example", "10.1.2.3")
    guard.check_address("anything.example", "::ffff:10.1.2.3")
    guard.check_address("JWKS.internal", "192.168.0.1")
    with pytest.raises(InvalidJwksUri, match="private address"):
        guard.check_address("anything.example", "10.2.0.1")


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("http://jwks.example/keys", "must use https"),
        ("ftp://jwks.example/keys", "https URL"),
        ("https://user:pw@jwks.example/keys", "credentials"),
        ("https:///keys", "with a host"),
        ("https://jwks.example/keys#frag", "fragment"),
        ("https://10.0.0.1/keys", "private address"),
        ("https://[::ffff:127.0.0.1]/keys", "loopback address"),
        ("https://[fe80::1%25eth0]/keys", "link-local address"),
        ("https://2130706433/keys", "canonical IP"),
        ("https://127.1/keys", "canonical IP"),
        ("https://0x7f.0.0.1/keys", "canonical IP"),
        ("https://jwks.example:99999/keys", "not a valid URL"),
        ("https://jwks.example/" + "a" * 2100, "must not exceed"),
    ],
)
def test_guard_refuses_uris_by_form_scheme_and_literal_address(
    uri: str, message: str
) -> None:
    with pytest.raises(InvalidJwksUri, match=message):
        AddressGuard((), allow_http=False).target(uri)


def test_plain_http_passes_only_when_allowed() -> None:
    target = AddressGuard((), allow_http=True).target("http://jwks.example/keys")

    assert (target.scheme, target.host, target.port) == ("http", "jwks.example", 80)
    assert target.where == "http://jwks.example:80"


# -- which keys of a document are served ---------------------------------------


def _doc(*keys: dict[str, Any]) -> bytes:
    return json.dumps({"keys": list(keys)}).encode()


def test_key_set_keeps_signing_keys_of_the_clients_alg_with_upstream_kids() -> None:
    first, second = public(signing_key(kid="a-1")), public(signing_key(kid="b.2"))
    second.pop("alg")
    second["x5c"] = ["ignored"]

    key_set = parse_key_set(_doc(first, second), alg="ES256")

    assert [k["kid"] for k in key_set.keys] == ["a-1", "b.2"]
    assert all(k["use"] == "sig" and k["alg"] == "ES256" for k in key_set.keys)
    assert set(key_set.keys[1]) == {"kty", "kid", "use", "alg", "crv", "x", "y"}
    assert key_set.skipped == {}


def test_key_without_kid_gets_its_thumbprint_and_key_without_use_is_kept() -> None:
    key = public(signing_key())
    key.pop("kid")
    thumbprint = jwk.JWK(**key).thumbprint()

    key_set = parse_key_set(_doc(key), alg="ES256")

    assert [k["kid"] for k in key_set.keys] == [thumbprint]


def test_keys_for_other_uses_algs_and_types_are_left_out_and_counted() -> None:
    keep = public(signing_key(kid="keep"))
    encryption = dict(public(signing_key(kid="enc")), use="enc")
    wrapping = dict(public(signing_key(kid="ops")), key_ops=["encrypt"])
    rsa_key = public(signing_key("RS256", kid="rsa"))
    other_curve = public(signing_key("ES384", kid="p384"))
    other_curve.pop("alg")
    unknown_type = {"kty": "AKP", "kid": "pq", "alg": "ML-DSA-44", "pub": "AAAA"}
    weak = public(signing_key("RS256", kid="weak"))
    weak["n"] = weak["n"][:171]

    key_set = parse_key_set(
        _doc(keep, encryption, wrapping, rsa_key, other_curve, unknown_type),
        alg="ES256",
    )
    rsa_set = parse_key_set(_doc(weak, public(signing_key("RS256"))), alg="RS256")

    assert [k["kid"] for k in key_set.keys] == ["keep"]
    assert key_set.skipped == {"alg": 2, "kty": 1, "use": 2}
    assert len(rsa_set.keys) == 1 and rsa_set.skipped == {"weak": 1}


def test_eddsa_and_ed25519_are_one_family() -> None:
    key = public(signing_key("EdDSA", kid="ed"))
    key["alg"] = "Ed25519"

    key_set = parse_key_set(_doc(key), alg="EdDSA")

    assert [(k["kid"], k["alg"]) for k in key_set.keys] == [("ed", "Ed25519")]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "no 'keys' array"),
        (b'{"keys": {"kty": "EC"}}', "no 'keys' array"),
        (b'{"issuer": "https://client.example"}', "no 'keys' array"),
        (b'{"keys": ["a string"]}', "not a JSON object"),
        (b'{"keys": [{"kty": "EC", "kid": 7}]}', "not a short string"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
        (_doc(*[{"kty": "EC"}] * 101), "more than 100 keys"),
    ],
)
def test_documents_that_are_not_jwk_sets_are_refused(body: bytes, message: str) -> None:
    with pytest.raises(UpstreamFailed, match=message) as caught:
        parse_key_set(body, alg="ES256")

    assert caught.value.outcome == "invalid"


def test_one_private_member_refuses_the_whole_document_naming_the_kid() -> None:
    leaked = signing_key(kid="leaky")
    symmetric = {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}

    with pytest.raises(UpstreamFailed) as caught:
        parse_key_set(_doc(public(signing_key()), leaked), alg="ES256")
    with pytest.raises(UpstreamFailed, match="'hmac' carries private members"):
        parse_key_set(_doc(symmetric), alg="ES256")

    assert "'leaky' carries private members (d)" in caught.value.detail
    assert leaked["d"] not in caught.value.detail


def test_duplicate_kids_refuse_the_document() -> None:
    one, two = public(signing_key(kid="same")), public(signing_key(kid="same"))

    with pytest.raises(UpstreamFailed, match="'same' appears twice"):
        parse_key_set(_doc(one, two), alg="ES256")


def test_a_key_of_the_clients_type_that_does_not_parse_refuses_the_document() -> None:
    broken = public(signing_key(kid="off-curve"))
    broken["x"] = broken["y"]

    with pytest.raises(UpstreamFailed, match="'off-curve' is not a usable key"):
        parse_key_set(_doc(public(signing_key()), broken), alg="ES256")


# -- freshness -----------------------------------------------------------------


def _fresh(**headers: str | None) -> int:
    fields = {"cache_control": None, "expires": None, "date": None, "age": None}
    return freshness_seconds(**{**fields, **headers}, min_seconds=60, max_seconds=3600)  # type: ignore[arg-type]


def test_freshness_follows_the_upstream_within_bounds() -> None:
    assert _fresh(cache_control="public, max-age=600") == 600
    assert _fresh(cache_control="max-age=600, s-maxage=900") == 900
    assert _fresh(cache_control="max-age=600", age="100") == 500
    assert _fresh(cache_control="max-age=5") == 60
    assert _fresh(cache_control="max-age=999999") == 3600
    assert _fresh(cache_control="no-cache, max-age=600") == 60
    assert _fresh(cache_control="no-store") == 60
    assert _fresh() == DEFAULT_TTL_SECONDS


def test_expires_is_read_against_the_upstreams_own_date() -> None:
    date = "Wed, 01 Jan 2020 00:00:00 GMT"

    assert _fresh(expires="Wed, 01 Jan 2020 00:20:00 GMT", date=date) == 1200
    assert _fresh(expires="0", date=date) == 60
    assert _fresh(cache_control="max-age=120", expires="garbage") == 120


# -- the fetcher, against real servers on loopback -----------------------------


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    server = await Upstream().start()
    server.document = {"keys": [public(signing_key(kid="k1"))]}
    yield server
    await server.close()


FetcherFactory = Callable[..., Awaitable[Fetcher]]


@pytest.fixture
async def fetcher_for() -> AsyncIterator[FetcherFactory]:
    opened: list[Fetcher] = []

    async def make(
        *,
        allow: tuple[str, ...] = LOOPBACK_ALLOWED,
        names: dict[str, list[str]] | None = None,
        limit: float = 1.0,
        max_bytes: int = 64 * 1024,
    ) -> Fetcher:
        fetcher = Fetcher(
            AddressGuard(allow, allow_http=True),
            timeout_seconds=limit,
            connect_timeout_seconds=limit,
            max_bytes=max_bytes,
            resolver=FakeResolver(names or {}),
        )
        await fetcher.open()
        opened.append(fetcher)
        return fetcher

    yield make
    for fetcher in opened:
        await fetcher.close()


async def _fetch(fetcher: Fetcher, uri: str, etag: str | None = None) -> Any:
    return await asyncio.wait_for(
        fetcher.fetch(fetcher.guard.target(uri), etag=etag), 10
    )


async def _failure(fetcher: Fetcher, uri: str) -> UpstreamFailed:
    with pytest.raises(UpstreamFailed) as caught:
        await _fetch(fetcher, uri)
    return caught.value


async def test_fetch_returns_body_and_caching_headers(
    upstream: Upstream, fetcher_for: FetcherFactory
) -> None:
    upstream.etag = '"v1"'
    fetcher = await fetcher_for()

    answer = await _fetch(fetcher, upstream.url())
    again = await _fetch(fetcher, upstream.url(), etag='"v1"')

    assert answer.status == 200 and json.loads(answer.body) == upstream.document
    assert (answer.etag, answer.cache_control) == ('"v1"', "max-age=300")
    assert again.status == 304 and again.body == b""
    assert upstream.if_none_match == [None, '"v1"']


async def test_a_name_resolving_to_a_private_address_is_refused_before_connecting(
    fetcher_for: FetcherFactory,
) -> None:
    fetcher = await fetcher_for(
        names={"jwks.test": ["10.0.0.1"], "mixed.test": ["127.0.0.1", "10.0.0.1"]}
    )

    started = time.perf_counter()
    failure = await _failure(fetcher, "http://jwks.test/jwks.json")
    mixed = await _failure(fetcher, "http://mixed.test/jwks.json")

    assert failure.outcome == mixed.outcome == "refused"
    assert "jwks.test has a private address (10.0.0.1)" in failure.detail
    assert time.perf_counter() - started < 0.5


async def test_a_loopback_listener_is_refused_unless_the_allow_list_names_it(
    fetcher_for: FetcherFactory,
) -> None:
    server = await Upstream(host="127.0.0.2").start()
    try:
        server.document = {"keys": []}
        names = {"jwks.test": ["127.0.0.2"]}
        narrow = await fetcher_for(allow=("127.0.0.2/32",), names=names)
        by_name = await fetcher_for(allow=("jwks.test",), names=names)
        closed = await fetcher_for(allow=(), names=names)

        allowed = await _fetch(narrow, server.url(host="jwks.test"))
        named = await _fetch(by_name, server.url(host="jwks.test"))
        refused = await _failure(closed, server.url(host="jwks.test"))
        with pytest.raises(InvalidJwksUri, match="loopback"):
            narrow.guard.target(server.url(host="127.0.0.1"))
    finally:
        await server.close()

    assert allowed.status == named.status == 200
    assert refused.outcome == "refused" and "loopback" in refused.detail
    assert server.hits == 2


async def test_ipv6_loopback_listener_is_guarded_like_ipv4(
    fetcher_for: FetcherFactory,
) -> None:
    try:
        server = await Upstream(host="::1").start()
    except OSError:
        pytest.skip("this machine has no IPv6 loopback")
    try:
        server.document = {"keys": []}
        allowed = await fetcher_for(allow=("::1/128",))
        v4_only = await fetcher_for(allow=("127.0.0.0/8",))

        answer = await _fetch(allowed, server.url())
        with pytest.raises(InvalidJwksUri, match="loopback"):
            v4_only.guard.target(server.url())
    finally:
        await server.close()

    assert answer.status == 200


async def test_redirects_are_followed_only_within_the_same_origin(
    upstream: Upstream, fetcher_for: FetcherFactory
) -> None:
    fetcher = await fetcher_for(names={"other.test": ["127.0.0.1"]})
    upstream.behaviour = "redirect"

    upstream.redirect_to = upstream.url(host="other.test")
    elsewhere = await _failure(fetcher, upstream.url())
    upstream.redirect_to = "http://10.0.0.1/jwks.json"
    private = await _failure(fetcher, upstream.url())
    upstream.redirect_to = "/again"
    looping = await _failure(fetcher, upstream.url())

    assert elsewhere.outcome == private.outcome == looping.outcome == "redirect"
    assert "another host" in elsewhere.detail
    assert "more than 2 redirects" in looping.detail


async def test_a_same_origin_redirect_is_followed(
    upstream: Upstream, fetcher_for: FetcherFactory
) -> None:
    fetcher = await fetcher_for()
    upstream.behaviour = "redirect_once"
    upstream.redirect_to = "/moved"

    answer = await _fetch(fetcher, upstream.url())

    assert answer.status == 200 and upstream.hits == 2


@pytest.mark.parametrize("declared", [True, False])
async def test_a_body_over_the_cap_is_refused_as_it_arrives(
    upstream: Upstream, fetcher_for: FetcherFactory, declared: bool
) -> None:
    fetcher = await fetcher_for(max_bytes=256 * 1024)
    upstream.behaviour = "raw" if declared else "stream"
    upstream.raw = b'{"keys": [' + b" " * (5 * 1024 * 1024) + b"]}"

    failure = await _failure(fetcher, upstream.url())

    assert failure.outcome == "too_large"
    assert "exceeds 262144 bytes" in failure.detail


async def test_a_compressed_body_is_capped_after_decompression(
    upstream: Upstream, fetcher_for: FetcherFactory
) -> None:
    fetcher = await fetcher_for(max_bytes=256 * 1024)
    upstream.behaviour = "raw"
    upstream.raw = gzip.compress(b" " * (5 * 1024 * 1024))
    upstream.raw_headers = {"Content-Encoding": "gzip"}
    small = gzip.compress(json.dumps(upstream.document).encode())

    bomb = await _failure(fetcher, upstream.url())
    upstream.raw = small
    answer = await _fetch(fetcher, upstream.url())

    assert len(upstream.raw) < 10 * 1024 and bomb.outcome == "too_large"
    assert json.loads(answer.body) == upstream.document


async def test_an_upstream_error_status_fails_the_fetch(
    upstream: Upstream, fetcher_for: FetcherFactory
) -> None:
    fetcher = await fetcher_for()
    upstream.behaviour = "status"
    upstream.status = 503

    failure = await _failure(fetcher, upstream.url())

    assert (failure.outcome, failure.detail) == ("http_error", "answered HTTP 503")


@pytest.mark.parametrize("behaviour", ["hang", "trickle"])
async def test_slow_upstreams_are_cut_off_at_the_total_timeout(
    upstream: Upstream, fetcher_for: FetcherFactory, behaviour: str
) -> None:
    fetcher = await fetcher_for(limit=0.5)
    upstream.behaviour = behaviour

    started = time.perf_counter()
    failure = await _failure(fetcher, upstream.url())
    elapsed = time.perf_counter() - started

    assert failure.outcome == "timeout"
    assert 0.45 < elapsed < 1.5


async def test_a_reset_connection_fails_fast(
    upstream: Upstream, fetcher_for: FetcherFactory
) -> None:
    fetcher = await fetcher_for(limit=2.0)
    upstream.behaviour = "reset"

    started = time.perf_counter()
    failure = await _failure(fetcher, upstream.url())

    assert failure.outcome == "network"
    assert time.perf_counter() - started < 1.0


async def test_a_closed_port_fails_as_a_network_error(
    fetcher_for: FetcherFactory,
) -> None:
    server = await Upstream().start()
    url = server.url()
    await server.close()
    fetcher = await fetcher_for()

    failure = await _failure(fetcher, url)

    assert failure.outcome == "network"
