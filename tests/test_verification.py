"""The service side of assertions, against a real PostgreSQL: the jti insert,
the key caches of the verifier and the signer, secrets, and the constraints.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from jwcrypto.jwk import JWK

from keysvc import client_secrets
from keysvc.assertions import VerifyPolicy, sign_assertion
from keysvc.db import create_pool
from keysvc.errors import AssertionRejected, Unavailable, UnsealError
from keysvc.keygen import KeyGenerator
from keysvc.lifecycle import ClientRequest, Defaults, Lifecycle
from keysvc.metrics import Metrics
from keysvc.models import AuthMethod, KeySource, KeyState, Policy
from keysvc.sealing import Kek, SealedBlob, Sealer
from keysvc.secret import Secret
from keysvc.signing import AssertionSigner
from keysvc.store import SigningMaterial, Store, VerificationMaterial
from keysvc.verification import AssertionVerifier, DbClock

AUDIENCE = "https://as.example/token"
POLICY = VerifyPolicy(audiences=frozenset({AUDIENCE}))


class CountingStore(Store):
    """The real store, counting key loads; a test may hold a load at a gate."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(pool)
        self.loads = 0
        self.gate: asyncio.Event | None = None
        self.loading = asyncio.Event()

    async def verification_material(
        self, client_id: str
    ) -> VerificationMaterial | None:
        self.loads += 1
        self.loading.set()
        material = await super().verification_material(client_id)
        if self.gate is not None:
            await asyncio.wait_for(self.gate.wait(), 10)

        return material


class CountingSigner(AssertionSigner):
    loads = 0

    def _load(self, client_id: str, material: SigningMaterial) -> JWK:
        self.loads += 1
        return super()._load(client_id, material)


class StaticRemote:
    """A stand-in for keysvc.remote: a fixed JWK list per client."""

    def __init__(self, keys: list[dict[str, Any]]) -> None:
        self.keys = keys
        self.asked: list[str | None] = []

    async def lookup(self, client_id: str, kid: str | None) -> list[dict[str, Any]]:
        self.asked.append(kid)
        return [k for k in self.keys if kid is None or k.get("kid") == kid]


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[CountingStore]:
    pool = await create_pool(
        Secret(database_url), min_size=1, max_size=8, timeout_seconds=10
    )
    yield CountingStore(pool)
    await asyncio.wait_for(pool.close(), 10)


@pytest.fixture
def lifecycle(store: Store, kek: Kek, generator: KeyGenerator) -> Lifecycle:
    return Lifecycle(
        store,
        Sealer((kek,)),
        generator,
        Defaults("ES256", 2048, 30 * 86400, 0, 3600),
        Metrics(),
    )


@pytest.fixture
def verifier(store: Store, lifecycle: Lifecycle) -> AssertionVerifier:
    return AssertionVerifier(
        store, lifecycle.sealer, DbClock(), Metrics(), max_lifetime_seconds=600
    )


@pytest.fixture
def signer(store: Store, lifecycle: Lifecycle) -> CountingSigner:
    signer = CountingSigner(
        store, lifecycle.sealer, DbClock(), Metrics(), max_lifetime_seconds=600
    )
    lifecycle.on_change.append(signer.invalidate)
    return signer


async def generated(lifecycle: Lifecycle, client_id: str) -> str:
    """A generated ES256 client; returns its active kid."""
    created = await lifecycle.create_client(ClientRequest(client_id), actor="test")
    return next(k.kid for k in created.keys if k.state.value == "active")


def header(token: str) -> dict[str, Any]:
    segment = token.split(".")[0]
    value: dict[str, Any] = json.loads(base64.urlsafe_b64decode(segment + "=="))
    return value


async def reason(verifier: AssertionVerifier, token: str) -> str:
    with pytest.raises(AssertionRejected) as caught:
        await verifier.verify(token, POLICY)
    return caught.value.reason


# -- the jti insert --------------------------------------------------------------


async def test_of_many_concurrent_inserts_of_one_jti_exactly_one_is_fresh(
    store: Store, lifecycle: Lifecycle
) -> None:
    kid = await generated(lifecycle, "c1")
    expires = time.time() + 60

    outcomes = await asyncio.wait_for(
        asyncio.gather(
            *(
                store.record_jti(
                    "c1", "j", expires_at=expires, source="key", key_id=kid
                )
                for _ in range(16)
            )
        ),
        30,
    )

    assert sum(o.fresh for o in outcomes) == 1
    assert all(o.live for o in outcomes)


async def test_a_jti_is_kept_until_the_expiry_given_and_per_client(
    store: Store, lifecycle: Lifecycle
) -> None:
    first, second = await generated(lifecycle, "c1"), await generated(lifecycle, "c2")
    expires = int(time.time()) + 90

    one = await store.record_jti(
        "c1", "j", expires_at=expires, source="key", key_id=first
    )
    two = await store.record_jti(
        "c2", "j", expires_at=expires, source="key", key_id=second
    )
    stored = await store.pool.fetchval(
        "SELECT extract(epoch FROM expires_at)::bigint FROM used_jtis"
        " WHERE client_id = 'c1' AND jti = 'j'"
    )

    assert one.fresh and two.fresh
    assert stored == expires


async def test_a_revoked_key_records_no_jti_and_is_not_live(
    store: Store, lifecycle: Lifecycle
) -> None:
    kid = await generated(lifecycle, "c1")
    await lifecycle.revoke("c1", kid, actor="test")

    outcome = await store.record_jti(
        "c1", "j", expires_at=time.time() + 60, source="key", key_id=kid
    )
    rows = await store.pool.fetchval("SELECT count(*) FROM used_jtis")

    assert (outcome.live, outcome.fresh, rows) == (False, False, 0)


async def test_the_clock_follows_the_database_clock(store: Store) -> None:
    clock = DbClock()
    clock.offset_seconds = 3600.0
    await clock.sync(store)

    assert abs(clock.now() - await store.db_now()) < 1.0


# -- the verifier's key cache ----------------------------------------------------


async def test_a_clients_keys_are_loaded_once_for_concurrent_verifications(
    store: CountingStore, lifecycle: Lifecycle, verifier: AssertionVerifier
) -> None:
    await generated(lifecycle, "c1")

    entries = await asyncio.wait_for(
        asyncio.gather(*(verifier.keys_of("c1") for _ in range(10))), 10
    )
    await verifier.keys_of("c1")

    assert store.loads == 1
    assert all(e is entries[0] for e in entries)
    assert len(entries[0].keys) == 2


async def test_invalidation_drops_a_client_and_a_load_begun_before_it(
    store: CountingStore, lifecycle: Lifecycle, verifier: AssertionVerifier
) -> None:
    await generated(lifecycle, "c1")
    store.gate = asyncio.Event()
    loading = asyncio.create_task(verifier.keys_of("c1"))
    await asyncio.wait_for(store.loading.wait(), 10)

    verifier.invalidate("c1")
    store.gate.set()
    await asyncio.wait_for(loading, 10)
    await verifier.keys_of("c1")

    assert store.loads == 2


async def test_an_unknown_client_is_remembered_until_a_change_names_it(
    store: CountingStore, lifecycle: Lifecycle, verifier: AssertionVerifier
) -> None:
    assert not (await verifier.keys_of("late")).known
    assert not (await verifier.keys_of("late")).known
    assert store.loads == 1

    await generated(lifecycle, "late")
    verifier.invalidate("late")

    assert (await verifier.keys_of("late")).known


async def test_an_unknown_kid_reloads_a_stale_entry_once(
    store: CountingStore, lifecycle: Lifecycle, verifier: AssertionVerifier
) -> None:
    await lifecycle.create_client(
        ClientRequest("byo", key_source=KeySource.IMPORTED), actor="test"
    )
    await verifier.keys_of("byo")
    key = JWK.generate(kty="EC", crv="P-256")
    imported = await lifecycle.import_key(
        "byo", key.export_public(as_dict=True), activate=True, actor="test"
    )
    token = sign_assertion(
        key, alg="ES256", kid=imported.kid, client_id="byo", audience=AUDIENCE,
        lifetime_seconds=60, now=time.time(),
    ).token  # fmt: skip

    # Loaded just now: an unknown kid does not reload yet.
    assert await reason(verifier, token) == "unknown_key"
    entry = await verifier.keys_of("byo")
    object.__setattr__(entry, "loaded_at", time.monotonic() - 5)

    assert (await verifier.verify(token, POLICY)).kid == imported.kid
    assert store.loads == 2


# -- remote clients through the pluggable source ---------------------------------


async def remote_client(store: Store, client_id: str) -> None:
    async with store.transaction("test") as tx:
        await tx.insert_client(
            client_id=client_id,
            auth_method="private_key_jwt",
            key_source="remote",
            policy=Policy("ES256", None, 86400, 0, 0),
            jwks_uri="https://client.example/jwks.json",
            token_hash=client_id.encode(),
        )


async def test_a_remote_clients_keys_come_from_the_pluggable_source(
    store: Store, verifier: AssertionVerifier
) -> None:
    await remote_client(store, "far")
    key = JWK.generate(kty="EC", crv="P-256", kid="k1")
    published = {**key.export_public(as_dict=True), "use": "sig"}
    shared = {"kty": "oct", "k": "c2VjcmV0", "kid": "k2", "alg": "HS256"}

    def token(kid: str) -> str:
        return sign_assertion(
            key, alg="ES256", kid=kid, client_id="far", audience=AUDIENCE,
            lifetime_seconds=60, now=time.time(),
        ).token  # fmt: skip

    assert await reason(verifier, token("k1")) == "unknown_key"

    verifier.remote = StaticRemote([published, shared])
    verified = await verifier.verify(token("k1"), POLICY)
    assert (verified.kid, verified.alg) == ("k1", "ES256")
    assert await reason(verifier, token("k2")) == "unknown_key"
    assert verifier.remote.asked == ["k1", "k2"]


async def test_a_remote_source_that_cannot_answer_leaves_the_verification_undecided(
    store: Store, verifier: AssertionVerifier
) -> None:
    await remote_client(store, "far")

    class Down:
        async def lookup(self, client_id: str, kid: str | None) -> list[dict[str, Any]]:
            raise Unavailable("upstream down", retry_after=5)

    key = JWK.generate(kty="EC", crv="P-256", kid="k1")
    verifier.remote = Down()
    token = sign_assertion(
        key, alg="ES256", kid="k1", client_id="far", audience=AUDIENCE,
        lifetime_seconds=60, now=time.time(),
    ).token  # fmt: skip

    with pytest.raises(Unavailable):
        await verifier.verify(token, POLICY)


# -- the signer's key cache ------------------------------------------------------


async def test_the_signer_parses_each_key_once_and_follows_rotation(
    lifecycle: Lifecycle, signer: CountingSigner
) -> None:
    first = await generated(lifecycle, "c1")

    one = await signer.sign("c1", audience=AUDIENCE, lifetime_seconds=60)
    two = await signer.sign("c1", audience=AUDIENCE, lifetime_seconds=60)
    assert signer.loads == 1 and one.jti != two.jti

    after = await lifecycle.rotate("c1", force=True, actor="test")
    three = await signer.sign("c1", audience=AUDIENCE, lifetime_seconds=60)
    assert signer.loads == 2
    assert header(three.token)["kid"] == after[KeyState.ACTIVE].kid != first

    signer.invalidate("c1")
    assert len(signer) == 0


async def test_the_signer_cache_is_bounded(store: Store, lifecycle: Lifecycle) -> None:
    small = CountingSigner(
        store, lifecycle.sealer, DbClock(), Metrics(),
        max_lifetime_seconds=600, max_entries=2,
    )  # fmt: skip
    for client_id in ("c1", "c2", "c3"):
        await generated(lifecycle, client_id)
        await small.sign(client_id, audience=AUDIENCE, lifetime_seconds=60)

    assert len(small) == 2
    await small.sign("c1", audience=AUDIENCE, lifetime_seconds=60)
    assert small.loads == 4


async def test_a_key_that_does_not_unseal_is_a_503_not_a_crash(
    store: Store, lifecycle: Lifecycle
) -> None:
    await generated(lifecycle, "c1")
    other = Sealer((Kek("other", b"\x01" * 32),))
    signer = AssertionSigner(
        store, other, DbClock(), Metrics(), max_lifetime_seconds=600
    )

    with pytest.raises(Unavailable):
        await signer.sign("c1", audience=AUDIENCE, lifetime_seconds=60)


# -- secrets ---------------------------------------------------------------------


async def test_a_secret_is_sealed_at_rest_and_at_most_two_are_accepted(
    store: Store, lifecycle: Lifecycle
) -> None:
    created = await lifecycle.create_client(
        ClientRequest("hmac", auth_method=AuthMethod.CLIENT_SECRET_JWT), actor="t"
    )
    assert created.client_secret is not None
    await lifecycle.rotate_secret("hmac", actor="t")
    await lifecycle.rotate_secret("hmac", actor="t")

    rows = await store.pool.fetch(
        "SELECT state, sealed FROM client_secrets ORDER BY created_at"
    )
    blobs = b"".join(bytes(r["sealed"]) for r in rows if r["sealed"] is not None)
    assert [r["state"] for r in rows] == ["destroyed", "previous", "current"]
    assert rows[0]["sealed"] is None
    assert created.client_secret.encode() not in blobs


async def test_expired_previous_secrets_are_destroyed_on_request(
    store: Store, lifecycle: Lifecycle
) -> None:
    await lifecycle.create_client(
        ClientRequest(
            "hmac", auth_method=AuthMethod.CLIENT_SECRET_JWT, grace_period_seconds=0
        ),
        actor="t",
    )
    await lifecycle.rotate_secret("hmac", actor="t")

    async with store.transaction("purge") as tx:
        destroyed = await tx.destroy_expired_secrets()
    states = await store.pool.fetch("SELECT state, sealed FROM client_secrets")

    assert destroyed == ["hmac"]
    assert sorted(r["state"] for r in states) == ["current", "destroyed"]


async def test_the_database_refuses_what_breaks_the_invariants(
    store: Store, lifecycle: Lifecycle
) -> None:
    await lifecycle.create_client(
        ClientRequest("hmac", auth_method=AuthMethod.CLIENT_SECRET_JWT), actor="t"
    )
    db = store.pool

    with pytest.raises(asyncpg.UniqueViolationError):
        await db.execute(
            "INSERT INTO client_secrets (client_id, secret_id, state, kek_id, sealed)"
            " VALUES ('hmac', 'second', 'current', 'k', '\\x00')"
        )
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute(
            "INSERT INTO client_secrets (client_id, secret_id, state, kek_id, sealed,"
            " ended_at) VALUES ('hmac', 'gone', 'destroyed', 'k', '\\x00', now())"
        )
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute(
            "INSERT INTO verifiers (verifier_id, name, audiences, token_hash)"
            " VALUES ('v', 'n', '{}', '\\x01')"
        )


async def test_a_sealed_secret_does_not_open_as_a_key_of_the_same_name(
    lifecycle: Lifecycle, store: Store
) -> None:
    await lifecycle.create_client(
        ClientRequest("hmac", auth_method=AuthMethod.CLIENT_SECRET_JWT), actor="t"
    )
    row = await store.pool.fetchrow(
        "SELECT secret_id, kek_id, sealed FROM client_secrets"
    )
    blob = SealedBlob(row["kek_id"], bytes(row["sealed"]))
    opened = client_secrets.unseal(lifecycle.sealer, "hmac", row["secret_id"], blob)
    assert opened.startswith(client_secrets.SECRET_PREFIX.encode())
    with pytest.raises(UnsealError):
        lifecycle.sealer.unseal(blob, client_id="hmac", kid=row["secret_id"])


async def test_rewrap_moves_sealed_secrets_to_the_first_kek(
    store: Store, lifecycle: Lifecycle, kek: Kek, generator: KeyGenerator
) -> None:
    await lifecycle.create_client(
        ClientRequest("hmac", auth_method=AuthMethod.CLIENT_SECRET_JWT), actor="t"
    )
    newer = Kek("newer", b"\x02" * 32)
    moving = Lifecycle(
        store, Sealer((newer, kek)), generator, lifecycle.defaults, Metrics()
    )

    moved, failed = await moving.rewrap_all(actor="t")
    row = await store.pool.fetchrow(
        "SELECT secret_id, kek_id, sealed FROM client_secrets"
    )
    blob = SealedBlob(row["kek_id"], bytes(row["sealed"]))

    assert (moved, failed, row["kek_id"]) == (1, [], "newer")
    assert client_secrets.unseal(Sealer((newer,)), "hmac", row["secret_id"], blob)
