"""Verifying client assertions for authorization servers (``POST /verify``).

The checks run cheapest first, so an assertion that fails a cheap one costs
no expensive work: the token's structure and header, then its claims against
the verifier's policy, then the client's keys (parsed once and kept in
memory), the signature, and last the one database statement that records
the ``jti`` and confirms, on the database's word, that the key is still
published: a key revoked on another replica is refused at once, even before
its notification arrives here.

Only the client's own published keys (``next``, ``active``, ``retired``), or
its accepted secrets, ever verify; a key named in the token's header never
does. Times are read from the database's clock, estimated here so that the
claim checks need no query.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from keysvc import client_secrets
from keysvc.assertions import (
    ParsedAssertion,
    VerificationKey,
    VerifyPolicy,
    check_claims,
    check_signature,
    parse_assertion,
)
from keysvc.errors import AssertionRejected, KeysvcError, Unavailable, UnsealError
from keysvc.flights import LoadingMap
from keysvc.keys import SIGNING_ALGS, load_public_key
from keysvc.metrics import Metrics, child
from keysvc.models import AuthMethod, KeySource
from keysvc.sealing import SealedBlob, Sealer
from keysvc.store import Store, VerificationMaterial, VerifierRecord

logger = logging.getLogger(__name__)

# An unknown kid reloads a local client's keys, at most this often: a key
# imported on another replica verifies before its notification arrives.
RELOAD_AFTER_SECONDS = 1.0
DEFAULT_LEEWAY_SECONDS = 30
_REMOTE_PARSED_MAX = 4096


class RemoteKeys(Protocol):
    """The keys of ``jwks_uri`` clients, fetched and cached elsewhere.

    ``lookup`` returns the client's public JWKs (only the one with ``kid``
    where it is given, refetching once, rate-limited, on an unknown kid).
    """

    async def lookup(self, client_id: str, kid: str | None) -> list[dict[str, Any]]: ...


class Limiter(Protocol):
    """Rate limits on ``/verify``: ``check`` raises RateLimited when over."""

    def check(self, verifier_id: str) -> None: ...


class DbClock:
    """The database's clock, estimated locally so that reading it costs no query.

    Every replica checks times against the same clock; the estimate is
    refreshed by each ``jti`` insert, which reads the database clock anyway.
    """

    def __init__(self) -> None:
        self.offset_seconds = 0.0

    def now(self) -> float:
        return time.time() + self.offset_seconds

    def observe(self, db_now: float, sent: float, received: float) -> None:
        # The database read its clock somewhere between the two local readings.
        self.offset_seconds = db_now - (sent + received) / 2

    async def sync(self, store: Store) -> None:
        sent = time.time()
        db_now = await store.db_now()
        self.observe(db_now, sent, time.time())


@dataclass(frozen=True, slots=True)
class Verified:
    """An assertion that passed every check."""

    client_id: str
    kid: str | None
    alg: str
    expires_at: int


@dataclass(frozen=True, slots=True)
class ClientKeys:
    """What one client's assertions may be verified with, parsed once."""

    client_id: str
    known: bool
    # Where the jti insert confirms the key: "key", "secret" or "remote".
    source: str = "key"
    policy_alg: str = ""
    keys: dict[str, VerificationKey] = field(default_factory=dict, repr=False)
    # Unix time past which a previous secret no longer verifies.
    valid_until: dict[str, float] = field(default_factory=dict)
    loaded_at: float = field(default_factory=time.monotonic)

    def usable(self, kid: str | None, now: float) -> list[VerificationKey]:
        """The keys a token with this header ``kid`` may have been signed by."""
        if kid is not None:
            found = self.keys.get(kid)
            picked = [] if found is None else [found]
        else:
            picked = list(self.keys.values())

        return [k for k in picked if self.valid_until.get(k.kid, math.inf) > now]


class AssertionVerifier:
    """Runs every check of a client assertion; keeps each client's keys parsed."""

    def __init__(
        self,
        store: Store,
        sealer: Sealer,
        clock: DbClock,
        metrics: Metrics,
        *,
        max_lifetime_seconds: int,
        leeway_seconds: int = DEFAULT_LEEWAY_SECONDS,
        cache_ttl_seconds: float = 300.0,
        max_entries: int = 100_000,
    ) -> None:
        self.store = store
        self.sealer = sealer
        self.clock = clock
        self.metrics = metrics
        self.max_lifetime_seconds = max_lifetime_seconds
        self.leeway_seconds = leeway_seconds
        self.cache_ttl_seconds = cache_ttl_seconds
        self.max_entries = max_entries
        # Set once keysvc.remote is up; until then remote clients have no keys.
        self.remote: RemoteKeys | None = None
        # The seam for rate limits; none until that issue lands.
        self.limiter: Limiter | None = None
        self._keys: LoadingMap[str, ClientKeys] = LoadingMap(max_entries=max_entries)
        self._remote_parsed: dict[str, VerificationKey | None] = {}

    # -- the checks -----------------------------------------------------------

    def policy(
        self,
        verifier: VerifierRecord,
        *,
        audience: str | None = None,
        client_id: str | None = None,
    ) -> VerifyPolicy:
        """The verifier's policy, narrowed by what the request names."""
        audiences = frozenset(verifier.audiences)
        if audience is not None:
            audiences &= {audience}

        return VerifyPolicy(
            audiences=audiences,
            leeway_seconds=self.leeway_seconds,
            max_lifetime_seconds=self.max_lifetime_seconds,
            require_typ=verifier.require_typ,
            expected_client_id=client_id,
        )

    def admit(self, verifier: VerifierRecord) -> None:
        """Refuse a verifier over its rate limit, before any work is done."""
        if self.limiter is not None:
            self.limiter.check(verifier.verifier_id)

    async def verify(self, token: object, policy: VerifyPolicy) -> Verified:
        """Check an assertion, counting the outcome; raise AssertionRejected."""
        try:
            verified = await self._verify(token, policy)
        except AssertionRejected as exc:
            child(self.metrics.verifications, exc.reason).inc()
            logger.debug("assertion refused: %s", exc.reason)
            raise
        except Unavailable:
            # Undecided (the database, or a remote client's JWKS host, is
            # down): the verifier gets a 503 and may retry, not a refusal.
            child(self.metrics.verifications, "unavailable").inc()
            raise

        child(self.metrics.verifications, "valid").inc()
        return verified

    async def _verify(self, token: object, policy: VerifyPolicy) -> Verified:
        parsed = parse_assertion(token, policy)
        check_claims(parsed, policy, now=self.clock.now())

        entry = await self.keys_of(parsed.client_id)
        if not entry.known:
            raise AssertionRejected("unknown_client", "the issuer is not a client")
        key = await self._signed_by(entry, parsed)

        sent = time.time()
        outcome = await self.store.record_jti(
            entry.client_id,
            parsed.jti,
            expires_at=parsed.exp + policy.leeway_seconds,
            source=entry.source,
            key_id=key.kid,
        )
        self.clock.observe(outcome.db_now, sent, time.time())
        if not outcome.live:
            self.invalidate(entry.client_id)
            raise AssertionRejected("unknown_key", "the key is no longer published")
        if not outcome.fresh:
            raise AssertionRejected("replayed", "this assertion was already used")

        return Verified(entry.client_id, key.kid or None, parsed.alg, parsed.exp)

    async def _signed_by(
        self, entry: ClientKeys, parsed: ParsedAssertion
    ) -> VerificationKey:
        """The client's key that verifies the signature, or the refusal."""
        now = self.clock.now()
        if entry.source == "remote":
            candidates = await self._remote_keys(entry, parsed.kid)
        else:
            candidates = entry.usable(parsed.kid, now)
            stale = time.monotonic() - entry.loaded_at > RELOAD_AFTER_SECONDS
            if not candidates and parsed.kid is not None and stale:
                self.invalidate(entry.client_id)
                entry = await self.keys_of(entry.client_id)
                candidates = entry.usable(parsed.kid, now)
        if not candidates:
            raise AssertionRejected("unknown_key", "no published key of the client")

        return _first_verifying(parsed, candidates)

    async def _remote_keys(
        self, entry: ClientKeys, kid: str | None
    ) -> list[VerificationKey]:
        if self.remote is None:
            return []
        found = await self.remote.lookup(entry.client_id, kid)

        parsed = (self._parse_remote(jwk, entry.policy_alg) for jwk in found)
        return [k for k in parsed if k is not None and (kid is None or k.kid == kid)]

    def _parse_remote(
        self, jwk: dict[str, Any], policy_alg: str
    ) -> VerificationKey | None:
        """A remote JWK as a key, parsed once per distinct document member."""
        memo = json.dumps(jwk, sort_keys=True) + policy_alg
        if memo not in self._remote_parsed:
            if len(self._remote_parsed) >= _REMOTE_PARSED_MAX:
                self._remote_parsed.clear()
            self._remote_parsed[memo] = _remote_key(jwk, policy_alg)

        return self._remote_parsed[memo]

    # -- the key cache --------------------------------------------------------

    async def keys_of(self, client_id: str) -> ClientKeys:
        """A client's verification keys, from memory or loaded once for all."""
        entry = self._keys.peek(client_id)
        if entry is not None and time.monotonic() - entry.loaded_at < (
            self.cache_ttl_seconds
        ):
            return entry

        async def load() -> ClientKeys:
            material = await self.store.verification_material(client_id)
            return self._parse(client_id, material)

        loaded = await self._keys.load(client_id, load)
        if loaded is None:  # load() never answers None
            raise AssertionRejected("unknown_client", "no such client")

        return loaded

    def invalidate(self, client_id: str) -> None:
        self._keys.invalidate(client_id)

    def clear(self) -> None:
        self._keys.clear()
        self._remote_parsed.clear()

    def _parse(
        self, client_id: str, material: VerificationMaterial | None
    ) -> ClientKeys:
        if material is None:
            return ClientKeys(client_id, known=False)
        if material.auth_method is AuthMethod.CLIENT_SECRET_JWT:
            return self._secrets(material)
        if material.key_source is KeySource.REMOTE:
            return ClientKeys(
                client_id, known=True, source="remote", policy_alg=material.alg
            )

        keys = {}
        for jwk in material.public_keys:
            try:
                keys[jwk["kid"]] = VerificationKey(
                    kid=jwk["kid"], alg=jwk["alg"], key=load_public_key(jwk)
                )
            except KeysvcError as exc:
                logger.error(
                    "stored key %s of client %s does not load: %s",
                    jwk.get("kid"),
                    client_id,
                    exc.detail,
                )

        return ClientKeys(client_id, known=True, policy_alg=material.alg, keys=keys)

    def _secrets(self, material: VerificationMaterial) -> ClientKeys:
        client_id = material.client_id
        keys, valid_until = {}, {}
        for secret in material.secrets:
            blob = SealedBlob(secret.kek_id, secret.sealed)
            try:
                raw = client_secrets.unseal(
                    self.sealer, client_id, secret.secret_id, blob
                )
            except UnsealError as exc:
                logger.error("secret of client %s: %s", client_id, exc.detail)
                continue
            keys[secret.secret_id] = VerificationKey(
                kid=secret.secret_id,
                alg=client_secrets.HMAC_ALG,
                key=client_secrets.hmac_key(raw),
                symmetric=True,
            )
            if secret.valid_until is not None:
                valid_until[secret.secret_id] = secret.valid_until.timestamp()

        return ClientKeys(
            client_id,
            known=True,
            source="secret",
            policy_alg=client_secrets.HMAC_ALG,
            keys=keys,
            valid_until=valid_until,
        )


def _first_verifying(
    parsed: ParsedAssertion, candidates: Iterable[VerificationKey]
) -> VerificationKey:
    """The first candidate whose signature verifies; else the telling refusal."""
    refusal: AssertionRejected | None = None
    for key in candidates:
        try:
            check_signature(parsed, key)
        except AssertionRejected as exc:
            # A key of the token's algorithm that failed says more than one
            # of another algorithm.
            if refusal is None or exc.reason == "bad_signature":
                refusal = exc
            continue
        return key

    if refusal is None:
        raise AssertionRejected("unknown_key", "no published key of the client")
    raise refusal


def _remote_key(jwk: dict[str, Any], policy_alg: str) -> VerificationKey | None:
    """A key from a client's own JWKS: public, for signing, of a known alg."""
    alg = jwk.get("alg", policy_alg)
    kid = jwk.get("kid")
    if alg not in SIGNING_ALGS or jwk.get("use", "sig") != "sig":
        return None
    if kid is not None and not isinstance(kid, str):
        return None
    try:
        key = load_public_key(jwk)
    except KeysvcError:
        return None

    return VerificationKey(kid=kid or "", alg=alg, key=key)
