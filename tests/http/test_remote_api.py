"""Clients that host their own JWKS, through live keysvc servers and real
upstream servers on loopback.

Every test starts its keysvc replicas with :func:`replica`, each a real app
on a real socket over the test's database, with settings for loopback
upstreams (plain HTTP allowed, 127.0.0.0/8 and ::1 allowed) and a fake
resolver for test host names: no packet leaves the machine.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import asyncpg
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from remote_upstream import FakeResolver, Upstream, public, signing_key

from keysvc.http.app import create_app
from keysvc.http.appkeys import (
    METRICS,
    REMOTE_JWKS,
    REMOTE_RESOLVER,
    SCHEDULER,
    STATUS,
)
from keysvc.keygen import KeyGenerator
from keysvc.remote import RemoteJwks
from keysvc.settings import Settings

ADMIN = {"Authorization": "Bearer ksad_" + "t" * 43}
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
LOOPBACK = {
    "remote_allow_http": True,
    "remote_allow": ("127.0.0.0/8", "::1/128"),
    "remote_refetch_interval_seconds": 0.3,
    "remote_min_ttl_seconds": 1,
    "remote_timeout_seconds": 0.5,
    "remote_connect_timeout_seconds": 0.5,
}
NAMES = {
    "jwks.test": ["127.0.0.1"],
    "other.test": ["127.0.0.1"],
    "private.test": ["10.0.0.1"],
}


@dataclass
class Replica:
    app: web.Application
    http: aiohttp.ClientSession
    resolver: FakeResolver

    @property
    def remote(self) -> RemoteJwks:
        return self.app[REMOTE_JWKS]

    def metric(self, name: str, **labels: str) -> float:
        value = self.app[METRICS].registry.get_sample_value(name, labels)
        return value or 0.0


StartReplica = Callable[..., Awaitable[Replica]]


@pytest.fixture
async def replica(
    settings: Settings, generator: KeyGenerator
) -> AsyncIterator[StartReplica]:
    running: list[tuple[TestServer, aiohttp.ClientSession]] = []

    async def start(**overrides: Any) -> Replica:
        app = create_app(
            replace(settings, **{**LOOPBACK, **overrides}), generator=generator
        )
        resolver = FakeResolver(NAMES)
        app[REMOTE_RESOLVER] = resolver
        server = TestServer(app, host="127.0.0.1")
        await asyncio.wait_for(server.start_server(), 30)
        session = aiohttp.ClientSession(
            base_url=str(server.make_url("/")),
            timeout=aiohttp.ClientTimeout(total=30),
        )
        running.append((server, session))
        await _until(lambda: app[STATUS].listening)
        return Replica(app, session, resolver)

    yield start
    for server, session in reversed(running):
        await session.close()
        await asyncio.wait_for(server.close(), 30)


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    server = await Upstream().start()
    server.document = {"keys": [public(signing_key(kid="k1"))]}
    yield server
    await server.close()


async def _until(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.02)


async def register(
    rep: Replica, client_id: str, jwks_uri: str, leak_watch: Any, **fields: Any
) -> aiohttp.ClientResponse:
    body = {"client_id": client_id, "key_source": "remote", "jwks_uri": jwks_uri}
    response = await rep.http.post("/clients", json=body | fields, headers=ADMIN)
    answer = await response.json()
    if response.status == 201:
        leak_watch.add(answer["client_token"])
    return response


async def registered(
    rep: Replica, client_id: str, jwks_uri: str, leak_watch: Any, **fields: Any
) -> None:
    response = await register(rep, client_id, jwks_uri, leak_watch, **fields)
    assert response.status == 201, await response.text()


async def get_jwks(rep: Replica, client_id: str) -> tuple[int, Any, Any]:
    response = await rep.http.get(f"/clients/{client_id}/jwks.json")
    return response.status, await response.json(content_type=None), response.headers


async def remote_row(database_url: str, client_id: str) -> asyncpg.Record:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchrow(
            "SELECT keys, failures, last_error, skipped, upstream_etag"
            " FROM remote_jwks WHERE client_id = $1",
            client_id,
        )
    finally:
        await conn.close()


# -- registration --------------------------------------------------------------


async def test_registration_fetches_once_and_the_first_request_needs_no_refetch(
    replica: StartReplica, upstream: Upstream, leak_watch: Any
) -> None:
    rep = await replica()
    await registered(rep, "self-hosted", upstream.url(), leak_watch)

    status, document, headers = await get_jwks(rep, "self-hosted")
    one = await rep.http.get("/clients/self-hosted/jwks/k1")

    assert status == 200 and upstream.hits == 1
    assert document == {"keys": [dict(upstream.document["keys"][0], use="sig")]}
    assert (await one.json())["kid"] == "k1"
    # Upstream max-age 300: ours is two thirds of it, jittered down.
    max_age = int(headers["Cache-Control"].split("max-age=")[1].split(",")[0])
    assert 170 <= max_age <= 200
    assert headers["ETag"].startswith('"')


@pytest.mark.parametrize(
    ("jwks_uri", "message"),
    [
        ("http://10.0.0.1/jwks.json", "private address (10.0.0.1)"),
        ("http://[::ffff:10.0.0.1]/jwks.json", "private address"),
        ("http://169.254.169.254/latest", "link-local address"),
        ("http://private.test/jwks.json", "private.test has a private address"),
        ("http://user:secret@jwks.test/jwks.json", "must not carry credentials"),
        ("file:///etc/passwd", "must be an https URL"),
    ],
)
async def test_registration_refuses_addresses_the_guard_does_not_allow(
    replica: StartReplica, leak_watch: Any, jwks_uri: str, message: str
) -> None:
    rep = await replica()

    response = await register(rep, "guarded", jwks_uri, leak_watch)
    problem = await response.json()
    lookup = await rep.http.get("/clients/guarded", headers=ADMIN)

    assert response.status == 422
    assert response.content_type == "application/problem+json"
    assert problem["type"] == "urn:keysvc:problem:invalid_jwks_uri"
    assert message in problem["detail"]
    assert lookup.status == 404


async def test_loopback_and_plain_http_need_the_allow_list_and_the_flag(
    replica: StartReplica, upstream: Upstream, leak_watch: Any
) -> None:
    closed = await replica(remote_allow=())
    https_only = await replica(remote_allow_http=False)
    by_name = await replica(remote_allow=("jwks.test",))

    loopback = await register(closed, "lo", upstream.url(), leak_watch)
    named = await register(
        closed, "lo-name", upstream.url(host="jwks.test"), leak_watch
    )
    plain = await register(https_only, "plain", upstream.url(), leak_watch)
    allowed = await register(
        by_name, "named", upstream.url(host="jwks.test"), leak_watch
    )

    assert "loopback address" in (await loopback.json())["detail"]
    assert "loopback address" in (await named.json())["detail"]
    assert "must use https" in (await plain.json())["detail"]
    assert (loopback.status, named.status, plain.status) == (422, 422, 422)
    assert allowed.status == 201 and upstream.hits == 1


BAD_ANSWERS = {
    "private member": ("serve", {"keys": [signing_key(kid="leaky")]}, "private"),
    "malformed JSON": ("raw", b'{"keys": [', "not valid JSON"),
    "not a JWK Set": ("raw", b'{"issuer": "x"}', "not a JWK Set"),
    "5 MB body": ("raw", b" " * (5 * 1024 * 1024), "exceeds"),
    "redirect elsewhere": ("redirect", None, "another host"),
    "server error": ("status", None, "HTTP 500"),
}


def _answer_badly(upstream: Upstream, case: str, leak_watch: Any) -> str:
    behaviour, payload, message = BAD_ANSWERS[case]
    upstream.behaviour = behaviour
    if behaviour == "serve":
        upstream.document = payload
        leak_watch.add(payload["keys"][0]["d"])
    elif behaviour == "raw":
        upstream.raw = payload
    elif behaviour == "redirect":
        upstream.redirect_to = upstream.url(host="other.test")
    else:
        upstream.status = 500

    return message


@pytest.mark.parametrize("case", list(BAD_ANSWERS))
async def test_registration_refuses_a_jwks_uri_whose_answer_is_bad(
    replica: StartReplica, upstream: Upstream, leak_watch: Any, case: str
) -> None:
    rep = await replica()
    message = _answer_badly(upstream, case, leak_watch)

    response = await register(rep, "bad-doc", upstream.url(), leak_watch)
    problem = await response.json()

    assert response.status == 422, problem
    assert problem["type"] == "urn:keysvc:problem:invalid_jwks_uri"
    assert message in problem["detail"]


# -- the cache -----------------------------------------------------------------


async def test_200_concurrent_cold_requests_make_one_upstream_fetch(
    replica: StartReplica, upstream: Upstream, leak_watch: Any
) -> None:
    first = await replica()
    await registered(first, "cold", upstream.url(), leak_watch)
    cold = await replica()
    upstream.delay = 0.2

    answers = await asyncio.gather(*(get_jwks(cold, "cold") for _ in range(200)))

    assert {status for status, _, _ in answers} == {200}
    assert len({json.dumps(document) for _, document, _ in answers}) == 1
    assert upstream.hits == 2  # the registration's, and this replica's one


async def test_a_new_replica_serves_the_last_good_set_without_asking_upstream(
    replica: StartReplica, upstream: Upstream, leak_watch: Any
) -> None:
    first = await replica()
    await registered(first, "kept", upstream.url(), leak_watch)
    _, served, headers = await get_jwks(first, "kept")
    upstream.behaviour = "status"
    upstream.status = 503

    added = await replica()
    status, document, added_headers = await get_jwks(added, "kept")

    assert status == 200 and document == served
    assert added_headers["ETag"] == headers["ETag"]
    assert upstream.hits == 1


async def test_unknown_kids_refetch_at_most_once_per_interval(
    replica: StartReplica, upstream: Upstream, leak_watch: Any
) -> None:
    rep = await replica(remote_refetch_interval_seconds=1.0)
    await registered(rep, "rotating", upstream.url(), leak_watch)
    await get_jwks(rep, "rotating")
    await asyncio.sleep(1.05)

    misses = await asyncio.gather(
        *(rep.http.get("/clients/rotating/jwks/unknown") for _ in range(100))
    )
    after_burst = upstream.hits
    upstream.document["keys"].append(public(signing_key(kid="added")))
    too_soon = await rep.http.get("/clients/rotating/jwks/added")
    await asyncio.sleep(1.05)
    found = await rep.http.get("/clients/rotating/jwks/added")

    assert {m.status for m in misses} == {404}
    assert after_burst == 2
    assert too_soon.status == 404
    assert found.status == 200 and (await found.json())["kid"] == "added"
    assert upstream.hits == 3


async def test_upstream_max_age_is_honoured_within_the_bounds(
    replica: StartReplica, leak_watch: Any
) -> None:
    rep = await replica(remote_min_ttl_seconds=1, remote_max_ttl_seconds=2)
    hosts = {}
    for name, max_age in (("short", "1"), ("zero", "0"), ("long", "86400")):
        hosts[name] = await Upstream().start()
        hosts[name].headers = {"Cache-Control": f"max-age={max_age}"}
    try:
        for name, host in hosts.items():
            await registered(rep, name, host.url(), leak_watch)
        for name in hosts:
            await get_jwks(rep, name)
        early = {name: host.hits for name, host in hosts.items()}

        await asyncio.sleep(1.15)
        for name in hosts:
            await get_jwks(rep, name)
        await _until(lambda: hosts["short"].hits == hosts["zero"].hits == 2)
        middle = hosts["long"].hits
        await asyncio.sleep(1.0)
        await get_jwks(rep, "long")
        await _until(lambda: hosts["long"].hits == 2)
    finally:
        for host in hosts.values():
            await host.close()

    assert early == {"short": 1, "zero": 1, "long": 1}
    assert middle == 1


async def test_an_upstream_304_keeps_the_set(
    replica: StartReplica, upstream: Upstream, leak_watch: Any, database_url: str
) -> None:
    rep = await replica()
    upstream.etag = '"v1"'
    await registered(rep, "etagged", upstream.url(), leak_watch)
    _, before, headers = await get_jwks(rep, "etagged")
    await asyncio.sleep(0.35)

    miss = await rep.http.get("/clients/etagged/jwks/unknown")
    _, after, after_headers = await get_jwks(rep, "etagged")
    row = await remote_row(database_url, "etagged")

    assert miss.status == 404 and upstream.hits == 2
    assert upstream.if_none_match == [None, '"v1"']
    assert after == before and after_headers["ETag"] == headers["ETag"]
    assert rep.metric("keysvc_remote_fetches_total", outcome="not_modified") == 1
    assert row["upstream_etag"] == '"v1"' and row["failures"] == 0


@pytest.mark.parametrize("case", list(BAD_ANSWERS))
async def test_a_bad_answer_never_replaces_a_good_set(
    replica: StartReplica,
    upstream: Upstream,
    leak_watch: Any,
    database_url: str,
    case: str,
) -> None:
    rep = await replica()
    await registered(rep, "steady", upstream.url(), leak_watch)
    _, good, headers = await get_jwks(rep, "steady")
    message = _answer_badly(upstream, case, leak_watch)
    await asyncio.sleep(0.35)

    miss = await rep.http.get("/clients/steady/jwks/unknown")
    status, served, served_headers = await get_jwks(rep, "steady")
    row = await remote_row(database_url, "steady")

    assert miss.status == 404 and upstream.hits >= 2
    assert status == 200 and served == good
    assert served_headers["ETag"] == headers["ETag"]
    assert row["failures"] == 1 and message in row["last_error"]
    assert json.loads(row["keys"]) == good["keys"]


@pytest.mark.slow
@pytest.mark.parametrize("behaviour", ["hang", "status"])
async def test_a_failing_upstream_serves_the_last_good_set_then_503(
    replica: StartReplica, upstream: Upstream, leak_watch: Any, behaviour: str
) -> None:
    rep = await replica(remote_min_ttl_seconds=1, remote_max_stale_seconds=2)
    upstream.headers = {"Cache-Control": "max-age=1"}
    upstream.status = 502
    await registered(rep, "flaky", upstream.url(), leak_watch)
    _, good, _ = await get_jwks(rep, "flaky")
    fetched = time.monotonic()
    upstream.behaviour = behaviour
    await asyncio.sleep(1.1)

    served, slowest = [], 0.0
    while time.monotonic() - fetched < 6:
        started = time.monotonic()
        status, document, headers = await get_jwks(rep, "flaky")
        slowest = max(slowest, time.monotonic() - started)
        if status != 200:
            break
        served.append(document)
        await asyncio.sleep(0.1)
    ended = time.monotonic() - fetched

    assert served and all(document == good for document in served)
    assert status == 503 and 2.9 < ended < 4.5
    assert headers["Content-Type"] == "application/problem+json"
    assert document["type"] == "urn:keysvc:problem:upstream_failed"
    assert int(headers["Retry-After"]) >= 1
    outcome = "timeout" if behaviour == "hang" else "http_error"
    assert rep.metric("keysvc_remote_fetches_total", outcome=outcome) >= 1
    assert rep.metric("keysvc_remote_stale_served_total") >= len(served) - 1
    # Serving stale never waits for the upstream; only the last, cold, try does.
    assert slowest < 0.5 + 0.4


async def test_a_slow_upstream_does_not_slow_other_clients(
    replica: StartReplica, upstream: Upstream, leak_watch: Any
) -> None:
    first = await replica()
    await registered(first, "slow", upstream.url(), leak_watch)
    managed = await first.http.post(
        "/clients", json={"client_id": "managed"}, headers=ADMIN
    )
    leak_watch.add((await managed.json())["client_token"])
    cold = await replica()
    await get_jwks(cold, "managed")
    upstream.behaviour = "hang"

    async def timed(client_id: str) -> tuple[int, float]:
        started = time.monotonic()
        status, _, _ = await get_jwks(cold, client_id)
        return status, time.monotonic() - started

    slow, *others = await asyncio.gather(
        timed("slow"), *(timed("managed") for _ in range(20))
    )

    assert slow[0] == 503 and 0.45 < slow[1] < 1.5
    assert {status for status, _ in others} == {200}
    assert max(elapsed for _, elapsed in others) < 0.3


async def test_a_fetch_on_one_replica_refreshes_the_others(
    replica: StartReplica, upstream: Upstream, leak_watch: Any
) -> None:
    one, two = await replica(), await replica()
    await registered(one, "shared", upstream.url(), leak_watch)
    await get_jwks(one, "shared")
    await get_jwks(two, "shared")
    upstream.document["keys"].append(public(signing_key(kid="rotated")))
    await asyncio.sleep(0.35)

    on_one = await one.http.get("/clients/shared/jwks/rotated")

    async def two_sees_it() -> bool:
        _, document, _ = await get_jwks(two, "shared")
        return "rotated" in [key["kid"] for key in document["keys"]]

    deadline = time.monotonic() + 5
    while not await two_sees_it():
        assert time.monotonic() < deadline, "the other replica kept the old set"
        await asyncio.sleep(0.05)

    assert on_one.status == 200
    assert upstream.hits == 2


async def test_refresh_due_refetches_sets_near_expiry_once_across_replicas(
    replica: StartReplica, upstream: Upstream, leak_watch: Any
) -> None:
    one, two = await replica(), await replica()
    upstream.headers = {"Cache-Control": "max-age=1"}
    await registered(one, "expiring", upstream.url(), leak_watch)
    await get_jwks(one, "expiring")
    await asyncio.sleep(0.85)

    await asyncio.wait_for(
        asyncio.gather(one.remote.refresh_due(), two.remote.refresh_due()), 10
    )
    refreshed = upstream.hits
    upstream.behaviour = "status"
    upstream.status = 500
    await asyncio.sleep(1.1)
    await asyncio.wait_for(one.remote.refresh_due(), 10)

    assert refreshed == 2
    assert upstream.hits == 3
    assert one.metric("keysvc_remote_sets_stale") == 1
    assert "remote_jwks" in one.app[SCHEDULER].job_names


async def test_patch_moves_a_client_to_another_jwks_uri_after_checking_it(
    replica: StartReplica, upstream: Upstream, leak_watch: Any
) -> None:
    rep = await replica()
    moved_to = await Upstream().start()
    moved_to.document = {"keys": [public(signing_key(kid="k2"))]}
    moved_url = moved_to.url()
    try:
        await registered(rep, "moving", upstream.url(), leak_watch)
        await get_jwks(rep, "moving")

        moved = await rep.http.patch(
            "/clients/moving", json={"jwks_uri": moved_url}, headers=ADMIN
        )
        _, document, _ = await get_jwks(rep, "moving")
        refused = await rep.http.patch(
            "/clients/moving",
            json={"jwks_uri": "http://10.0.0.1/jwks"},
            headers=ADMIN,
        )
        _, still, _ = await get_jwks(rep, "moving")
    finally:
        await moved_to.close()
    managed = await rep.http.post(
        "/clients", json={"client_id": "generated"}, headers=ADMIN
    )
    leak_watch.add((await managed.json())["client_token"])
    not_remote = await rep.http.patch(
        "/clients/generated", json={"jwks_uri": upstream.url()}, headers=ADMIN
    )

    assert moved.status == 200
    assert (await moved.json())["client"]["jwks_uri"] == moved_url
    assert [key["kid"] for key in document["keys"]] == ["k2"]
    assert refused.status == 422 and still == document
    assert not_remote.status == 400
    assert moved_to.hits == 1


async def test_keys_left_out_are_counted_with_the_kept_set(
    replica: StartReplica, upstream: Upstream, leak_watch: Any, database_url: str
) -> None:
    rep = await replica()
    upstream.document = {
        "keys": [
            public(signing_key(kid="good")),
            dict(public(signing_key(kid="enc")), use="enc"),
            public(signing_key("RS256", kid="rsa")),
        ]
    }
    await registered(rep, "mixed", upstream.url(), leak_watch, alg="ES256")

    _, document, _ = await get_jwks(rep, "mixed")
    row = await remote_row(database_url, "mixed")

    assert [key["kid"] for key in document["keys"]] == ["good"]
    assert json.loads(row["skipped"]) == {"alg": 1, "use": 1}


async def test_lookup_gives_the_verifier_keys_by_kid_and_refetches_once(
    replica: StartReplica, upstream: Upstream, leak_watch: Any
) -> None:
    rep = await replica()
    await registered(rep, "verifying", upstream.url(), leak_watch)
    managed = await rep.http.post(
        "/clients", json={"client_id": "local"}, headers=ADMIN
    )
    leak_watch.add((await managed.json())["client_token"])
    await asyncio.sleep(0.35)

    lookup = rep.remote.lookup
    by_kid = await asyncio.wait_for(lookup("verifying", "k1"), 10)
    every = await asyncio.wait_for(lookup("verifying", None), 10)
    unknown = await asyncio.wait_for(
        asyncio.gather(*(lookup("verifying", "nope") for _ in range(20))), 10
    )
    local = await asyncio.wait_for(lookup("local", None), 10)
    absent = await asyncio.wait_for(lookup("no-such-client", "k1"), 10)

    assert [key["kid"] for key in by_kid] == ["k1"] and every == by_kid
    assert unknown == [[]] * 20 and upstream.hits == 2
    assert local == [] and absent == []


async def test_remote_metrics_are_exported(
    replica: StartReplica, upstream: Upstream, leak_watch: Any
) -> None:
    rep = await replica()
    await registered(rep, "measured", upstream.url(), leak_watch)

    text = await (await rep.http.get("/metrics")).text()

    assert 'keysvc_remote_fetches_total{outcome="ok"} 1.0' in text
    assert "keysvc_remote_stale_served_total" in text
    assert "keysvc_remote_sets_stale" in text


# -- the benchmark -------------------------------------------------------------


@pytest.mark.slow
async def test_cached_remote_jwks_is_served_as_fast_as_a_managed_one(
    replica: StartReplica, upstream: Upstream, leak_watch: Any
) -> None:
    rep = await replica()
    # Two ES256 keys each, as a managed client publishes (active and next).
    upstream.document["keys"].append(public(signing_key(kid="k2")))
    await registered(rep, "bench-remote", upstream.url(), leak_watch)
    managed = await rep.http.post(
        "/clients", json={"client_id": "bench-managed"}, headers=ADMIN
    )
    leak_watch.add((await managed.json())["client_token"])
    # Short batches, alternating, so that the machine's load drifts over
    # both clients alike; the median of the per-round ratios is the figure.
    rounds, batch, concurrency = 12, 240, 16

    async def throughput(client_id: str) -> float:
        path = f"/clients/{client_id}/jwks.json"

        async def worker() -> None:
            for _ in range(batch // concurrency):
                async with rep.http.get(path) as response:
                    await response.read()
                    assert response.status == 200

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return batch / (time.perf_counter() - started)

    await throughput("bench-remote")
    await throughput("bench-managed")
    managed_rates, remote_rates, ratios = [], [], []
    for round_ in range(rounds):
        if round_ % 2:
            remote_rates.append(await throughput("bench-remote"))
            managed_rates.append(await throughput("bench-managed"))
        else:
            managed_rates.append(await throughput("bench-managed"))
            remote_rates.append(await throughput("bench-remote"))
        ratios.append(remote_rates[-1] / managed_rates[-1])

    ratio = statistics.median(ratios)
    print(
        f"\ncached JWKS over HTTP, {rounds} x {batch} requests each, "
        f"{concurrency} at once (median):"
        f"\n  managed client  {statistics.median(managed_rates):8.0f} req/s"
        f"\n  remote client   {statistics.median(remote_rates):8.0f} req/s"
        f"\n  remote/managed  {ratio:8.2f}"
    )
    assert upstream.hits == 1
    assert ratio > 0.75


async def test_verify_checks_assertions_against_the_fetched_set(
    replica: StartReplica, upstream: Upstream, leak_watch: Any
) -> None:
    rep = await replica()
    first, later = signing_key(kid="k1"), signing_key(kid="k9")
    upstream.document = {"keys": [public(first)]}
    await registered(rep, "signer", upstream.url(), leak_watch)
    created = await rep.http.post(
        "/verifiers",
        json={"name": "as", "audiences": ["https://as.example/token"]},
        headers=ADMIN,
    )
    token = (await created.json())["verifier_token"]
    leak_watch.add(token)

    async def verify(private: dict[str, Any]) -> dict[str, Any]:
        now = int(time.time())
        assertion = jwt.encode(
            {
                "iss": "signer",
                "sub": "signer",
                "aud": "https://as.example/token",
                "iat": now,
                "exp": now + 120,
                "jti": f"{private['kid']}-{now}",
            },
            jwt.PyJWK(private).key,
            algorithm="ES256",
            headers={"kid": private["kid"]},
        )
        response = await rep.http.post(
            "/verify",
            json={
                "client_assertion": assertion,
                "client_assertion_type": ASSERTION_TYPE,
            },
            headers={"Authorization": f"Bearer {token}"},
        )
        return dict(await response.json())

    known = await verify(first)
    upstream.document["keys"].append(public(later))
    await asyncio.sleep(0.35)
    rotated = await verify(later)

    assert known["valid"] is True and known["kid"] == "k1"
    assert rotated["valid"] is True and rotated["kid"] == "k9"
    assert upstream.hits == 2


async def test_cold_replicas_together_make_one_upstream_fetch(
    replica: StartReplica, upstream: Upstream, leak_watch: Any
) -> None:
    first = await replica()
    await registered(first, "fleet", upstream.url(), leak_watch)
    one, two = await replica(), await replica()
    upstream.delay = 0.3

    answers = await asyncio.gather(
        *(get_jwks(rep, "fleet") for rep in (one, two) for _ in range(50))
    )

    assert {status for status, _, _ in answers} == {200}
    assert len({json.dumps(document) for _, document, _ in answers}) == 1
    assert upstream.hits == 2  # the registration's, and one for both replicas
