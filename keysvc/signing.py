"""Signing client assertions for clients whose key (or secret) keysvc holds.

Unsealing and parsing a private key is the expensive part (an RSA key takes
tens of milliseconds to load and check), so parsed keys stay in a bounded
in-process cache keyed by ``(client_id, kid)``, and which key signs for a
client is remembered beside them. Both are dropped on every change to the
client's keys: at once on this replica, through ``NOTIFY`` on the others,
and all of them when the listener reconnects, so a rotation moves signing
to the new key and a revoked private part does not linger in memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence

from jwcrypto.jwk import JWK

from keysvc import client_secrets
from keysvc.assertions import SignedAssertion, sign_assertion
from keysvc.errors import Conflict, InvalidRequest, KeysvcError, NotFound, Unavailable
from keysvc.keys import load_private_key
from keysvc.metrics import Metrics, child
from keysvc.models import AuthMethod
from keysvc.sealing import SealedBlob, Sealer
from keysvc.store import SigningMaterial, Store
from keysvc.verification import DbClock

logger = logging.getLogger(__name__)

# Five minutes: what common client libraries make, and what verifiers expect.
DEFAULT_LIFETIME_SECONDS = 300
MAX_CACHED_KEYS = 4096

_CacheKey = tuple[str, str]


class AssertionSigner:
    """Signs assertions with each client's active key or current secret."""

    def __init__(
        self,
        store: Store,
        sealer: Sealer,
        clock: DbClock,
        metrics: Metrics,
        *,
        max_lifetime_seconds: int,
        max_entries: int = MAX_CACHED_KEYS,
        ttl_seconds: float = 300.0,
    ) -> None:
        self.store = store
        self.sealer = sealer
        self.clock = clock
        self.metrics = metrics
        self.max_lifetime_seconds = max_lifetime_seconds
        self.max_entries = max_entries
        self.ttl_seconds = ttl_seconds
        self._keys: OrderedDict[_CacheKey, JWK] = OrderedDict()
        self._materials: dict[str, tuple[SigningMaterial, float]] = {}
        self._loads: dict[_CacheKey, asyncio.Future[JWK]] = {}
        # Bumped by each invalidation (the epoch by each clear): a load that
        # began before it is not kept.
        self._generation: dict[str, int] = {}
        self._epoch = 0

    def __len__(self) -> int:
        return len(self._keys)

    def lifetime(self, requested: int | None) -> int:
        """The lifetime to sign for: the default, or a requested one in bounds."""
        bound = self.max_lifetime_seconds
        if requested is None:
            return min(DEFAULT_LIFETIME_SECONDS, bound)
        if not 0 < requested <= bound:
            raise InvalidRequest(
                f"lifetime must be from 1 to {bound} seconds, the bound this "
                "service is configured with"
            )

        return requested

    async def sign(
        self,
        client_id: str,
        *,
        audience: str | Sequence[str],
        lifetime_seconds: int,
        explicit_typ: bool = False,
    ) -> SignedAssertion:
        """Sign an assertion for ``client_id``; 404 unknown, 409 nothing to sign."""
        material = await self._material(client_id)
        if material.kid is None or material.alg is None:
            raise Conflict(
                f"keysvc holds no signing key for client {client_id}: a client "
                "with imported or remote keys signs its own assertions"
            )

        key = await self._key(client_id, material)
        signed = sign_assertion(
            key,
            alg=material.alg,
            kid=material.kid,
            client_id=client_id,
            audience=audience if isinstance(audience, str) else list(audience),
            lifetime_seconds=lifetime_seconds,
            now=self.clock.now(),
            explicit_typ=explicit_typ,
        )
        child(self.metrics.assertions_signed, material.alg).inc()

        return signed

    def invalidate(self, client_id: str) -> None:
        self._generation[client_id] = self._generation.get(client_id, 0) + 1
        self._materials.pop(client_id, None)
        for cached in [k for k in self._keys if k[0] == client_id]:
            del self._keys[cached]

    def clear(self) -> None:
        # Every generation moves on, so no load in flight is kept.
        for client_id in list(self._generation):
            self._generation[client_id] += 1
        self._epoch += 1
        self._materials.clear()
        self._keys.clear()

    async def _material(self, client_id: str) -> SigningMaterial:
        """Which key signs for a client, from memory or the database."""
        cached = self._materials.get(client_id)
        if cached is not None and time.monotonic() - cached[1] < self.ttl_seconds:
            return cached[0]

        before = self._version(client_id)
        material = await self.store.signing_material(client_id)
        if material is None:
            raise NotFound(f"no client {client_id}")
        if self._version(client_id) == before:
            if len(self._materials) >= self.max_entries:
                self._materials.pop(next(iter(self._materials)))
            self._materials[client_id] = (material, time.monotonic())

        return material

    def _version(self, client_id: str) -> tuple[int, int]:
        return self._epoch, self._generation.get(client_id, 0)

    async def _key(self, client_id: str, material: SigningMaterial) -> JWK:
        cache_key = (client_id, material.kid or "")
        key = self._keys.get(cache_key)
        if key is not None:
            self._keys.move_to_end(cache_key)
            return key

        pending = self._loads.get(cache_key)
        if pending is not None:
            return await asyncio.shield(pending)

        pending = asyncio.get_running_loop().create_future()
        self._loads[cache_key] = pending
        before = self._version(client_id)
        try:
            # Off the event loop: an RSA private key takes tens of ms to check.
            key = await asyncio.to_thread(self._load, client_id, material)
        except BaseException as exc:
            pending.set_exception(exc)
            pending.exception()
            raise
        finally:
            self._loads.pop(cache_key, None)

        if self._version(client_id) == before:
            self._remember(cache_key, key)
        pending.set_result(key)

        return key

    def _load(self, client_id: str, material: SigningMaterial) -> JWK:
        kid = material.kid or ""
        blob = SealedBlob(material.kek_id or "", material.sealed or b"")
        try:
            if material.auth_method is AuthMethod.CLIENT_SECRET_JWT:
                secret = client_secrets.unseal(self.sealer, client_id, kid, blob)
                return client_secrets.hmac_key(secret)
            key = load_private_key(
                self.sealer.unseal(blob, client_id=client_id, kid=kid)
            )
            key.get_op_key("sign")
        except KeysvcError as exc:
            logger.error(
                "signing key %s of client %s is unusable: %s",
                kid,
                client_id,
                exc.detail,
                extra={"client_id": client_id, "kid": kid},
            )
            raise Unavailable(
                f"the signing key {kid} cannot be opened; the operator must "
                "check the configured KEKs"
            ) from exc

        return key

    def _remember(self, cache_key: _CacheKey, key: JWK) -> None:
        if len(self._keys) >= self.max_entries:
            self._keys.popitem(last=False)
        self._keys[cache_key] = key
