"""The key lifecycle: creating clients, rotating, importing and revoking keys.

Every change happens in one transaction that first locks the client's row, so
changes to one client queue up and the database constraints (one ``active``,
one ``next``) are never put to the test by our own races. Keys are generated
before the transaction opens: no row lock or connection is held while a worker
process does arithmetic. Each change ends with a ``NOTIFY`` so that every
replica drops its cached JWKS for that client.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from keysvc import client_secrets, keys
from keysvc.client_secrets import IssuedSecret
from keysvc.errors import (
    Conflict,
    InvalidPolicy,
    NotFound,
    StatementFailed,
    TooYoung,
    UnsealError,
)
from keysvc.keygen import KeyGenerator
from keysvc.metrics import Metrics
from keysvc.models import AuthMethod, Client, KeyRecord, KeySource, KeyState, Policy
from keysvc.sealing import SealedBlob, Sealer
from keysvc.store import AuditEntry, NewKey, Store, Tx
from keysvc.tokens import CLIENT_PREFIX, new_token, token_hash

logger = logging.getLogger(__name__)

NOTIFY_CHANNEL = "keysvc_jwks"
# A client holds few published keys; more is a runaway import loop.
MAX_PUBLISHED_KEYS = 10


@dataclass(frozen=True, slots=True)
class ClientRequest:
    """A validated request to register a client; None means "the default"."""

    client_id: str
    auth_method: AuthMethod = AuthMethod.PRIVATE_KEY_JWT
    key_source: KeySource = KeySource.GENERATED
    alg: str | None = None
    key_size: int | None = None
    rotation_period_seconds: int | None = None
    prepublish_period_seconds: int | None = None
    grace_period_seconds: int | None = None
    jwks_uri: str | None = None


@dataclass(frozen=True, slots=True)
class DueRotation:
    """A client the scheduler claimed, with the fresh key made for it."""

    client_id: str
    spec: keys.KeySpec
    key: keys.GeneratedKey = field(repr=False)


@dataclass(frozen=True, slots=True)
class CreatedClient:
    client: Client
    keys: list[KeyRecord]
    client_token: str
    # client_secret_jwt clients only: their first secret, shown this once.
    client_secret: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Defaults:
    alg: str
    rsa_key_size: int
    rotation_period_seconds: int
    prepublish_period_seconds: int
    grace_period_seconds: int


class Lifecycle:
    """Domain operations on clients and their keys."""

    def __init__(
        self,
        store: Store,
        sealer: Sealer,
        generator: KeyGenerator,
        defaults: Defaults,
        metrics: Metrics,
    ) -> None:
        self.store = store
        self.sealer = sealer
        self.generator = generator
        self.defaults = defaults
        self.metrics = metrics
        # Called with a client id after each committed change, for local caches.
        self.on_change: list[Callable[[str], None]] = []
        # Set by the app: checks a remote client's jwks_uri (called with the
        # client id, the URI and the alg) before it is stored, raising
        # InvalidJwksUri. No network I/O happens inside a transaction.
        self.check_jwks_uri: Callable[[str, str, str], Awaitable[None]] | None = None

    # -- policy ---------------------------------------------------------------

    def policy_for(self, request: ClientRequest) -> Policy:
        d = self.defaults
        spec = keys.key_spec(
            request.alg or d.alg, request.key_size, default_rsa_size=d.rsa_key_size
        )
        policy = Policy(
            alg=spec.alg,
            key_size=spec.key_size,
            rotation_period_seconds=_given(
                request.rotation_period_seconds, d.rotation_period_seconds
            ),
            prepublish_period_seconds=_given(
                request.prepublish_period_seconds, d.prepublish_period_seconds
            ),
            grace_period_seconds=_given(
                request.grace_period_seconds, d.grace_period_seconds
            ),
        )
        _check_periods(policy)

        return policy

    # -- clients --------------------------------------------------------------

    async def create_client(
        self, request: ClientRequest, *, actor: str
    ) -> CreatedClient:
        secret_client = request.auth_method is AuthMethod.CLIENT_SECRET_JWT
        if secret_client and (
            request.key_source is not KeySource.GENERATED
            or request.alg is not None
            or request.key_size is not None
        ):
            raise InvalidPolicy(
                "a client_secret_jwt client signs with an HS256 secret that keysvc "
                "makes: it takes no alg, key_size or key_source"
            )
        policy = self.policy_for(request)
        if secret_client:
            policy = replace(policy, alg=client_secrets.HMAC_ALG, key_size=None)
        if (request.key_source is KeySource.REMOTE) != (request.jwks_uri is not None):
            raise InvalidPolicy("jwks_uri is given exactly when key_source is remote")
        if request.jwks_uri is not None and self.check_jwks_uri is not None:
            await self.check_jwks_uri(request.client_id, request.jwks_uri, policy.alg)

        new_keys: list[NewKey] = []
        if request.key_source is KeySource.GENERATED and not secret_client:
            spec = keys.KeySpec(policy.alg, policy.key_size)
            active, following = await self.generator.generate_many([spec, spec])
            new_keys = [
                self._sealed(request.client_id, active, KeyState.ACTIVE),
                self._sealed(request.client_id, following, KeyState.NEXT),
            ]

        token = new_token(CLIENT_PREFIX)
        async with self.store.transaction("create client") as tx:
            client = await tx.insert_client(
                client_id=request.client_id,
                auth_method=request.auth_method.value,
                key_source=request.key_source.value,
                policy=policy,
                jwks_uri=request.jwks_uri,
                token_hash=token_hash(token),
            )
            await tx.insert_keys(client.client_id, new_keys)
            issued = None
            if secret_client:
                issued = await client_secrets.issue(tx, self.sealer, client.client_id)
                await tx.record(
                    client.client_id,
                    "secret.generated",
                    actor=actor,
                    secret_id=issued.secret_id,
                )
            await tx.record(
                client.client_id,
                "client.created",
                actor=actor,
                key_source=client.key_source.value,
                alg=policy.alg,
            )
            for key in new_keys:
                await tx.record(
                    client.client_id,
                    "key.generated",
                    actor=actor,
                    kid=key.kid,
                    state=key.state.value,
                )
            await _notify(tx, client.client_id)
            records = await _live_list(tx, client.client_id)

        logger.info(
            "client %s created (%s, %s)",
            client.client_id,
            client.key_source.value,
            policy.alg,
            extra={"client_id": client.client_id},
        )
        self._changed(client.client_id)

        return CreatedClient(
            client, records, token, issued.secret if issued is not None else None
        )

    async def update_policy(
        self, client_id: str, changes: dict[str, Any], *, actor: str
    ) -> Client:
        """Change a client's policy; new values apply to keys made from now on."""
        changes = dict(changes)
        jwks_uri = changes.pop("jwks_uri", None)
        if jwks_uri is not None:
            remote = await self._client(client_id)
            if remote.key_source is not KeySource.REMOTE:
                raise InvalidPolicy("only a remote client has a jwks_uri")
            if self.check_jwks_uri is not None:
                await self.check_jwks_uri(client_id, jwks_uri, remote.policy.alg)
        async with self.store.transaction("update client") as tx:
            client = await _locked(tx, client_id)
            current = client.policy
            merged = replace(current, **changes)
            if "alg" in changes or "key_size" in changes:
                if client.key_source is KeySource.REMOTE:
                    raise InvalidPolicy("a remote client's keys come from its jwks_uri")
                if client.auth_method is AuthMethod.CLIENT_SECRET_JWT:
                    raise InvalidPolicy("a client_secret_jwt client signs with HS256")
                spec = keys.key_spec(
                    merged.alg,
                    changes.get(
                        "key_size", None if "alg" in changes else current.key_size
                    ),
                    default_rsa_size=self.defaults.rsa_key_size,
                )
                merged = replace(merged, alg=spec.alg, key_size=spec.key_size)
            _check_periods(merged)

            columns = {
                "alg": merged.alg,
                "key_size": merged.key_size,
                "rotation_period_seconds": merged.rotation_period_seconds,
                "prepublish_period_seconds": merged.prepublish_period_seconds,
                "grace_period_seconds": merged.grace_period_seconds,
            }
            if jwks_uri is not None:
                columns["jwks_uri"] = jwks_uri
                changes["jwks_uri"] = jwks_uri
            updated = await tx.update_client(client_id, columns)
            await tx.record(
                client_id, "client.updated", actor=actor, changes=sorted(changes)
            )
            await _notify(tx, client_id)

        self._changed(client_id)
        return updated

    async def delete_client(self, client_id: str, *, actor: str) -> None:
        """Delete a client and every key; its audit trail stays."""
        async with self.store.transaction("delete client") as tx:
            await _locked(tx, client_id)
            await tx.delete_client(client_id)
            await tx.record(client_id, "client.deleted", actor=actor)
            await _notify(tx, client_id)

        logger.info("client %s deleted", client_id, extra={"client_id": client_id})
        self._changed(client_id)

    # -- keys -----------------------------------------------------------------

    async def rotate(
        self, client_id: str, *, force: bool, actor: str, trigger: str = "manual"
    ) -> dict[KeyState, KeyRecord]:
        """Promote the published ``next`` key, retire the ``active`` one.

        A generated client gets a fresh ``next`` key in the same transaction.
        Refused while the ``next`` key is younger than the prepublish period,
        unless forced.
        """
        client = await self._client(client_id)
        if client.key_source is KeySource.REMOTE:
            raise Conflict("a remote client's keys rotate at its jwks_uri")
        if client.auth_method is AuthMethod.CLIENT_SECRET_JWT:
            raise Conflict(
                "a client_secret_jwt client has no keys; rotate its secret at "
                f"/clients/{client_id}/secret/rotate"
            )
        # Check early, so a refused rotation costs no key generation.
        async with self.store.transaction("check rotation") as tx:
            await self._check_next_age(tx, client, force=force)

        fresh = await self._fresh_next(client)
        label = "forced" if force else trigger
        async with self.store.transaction("rotate") as tx:
            client = await _locked(tx, client_id)
            following = await self._check_next_age(tx, client, force=force)
            live = await tx.live_keys(client_id)
            await self._promote(tx, live, following, fresh, actor=actor, trigger=label)
            after = await tx.live_keys(client_id)

        self._rotated(client_id, following.kid, label)

        return {state: records[-1] for state, records in after.items()}

    async def rotate_if_due(
        self,
        client_id: str,
        spec: keys.KeySpec,
        generated: keys.GeneratedKey,
        *,
        actor: str,
    ) -> bool:
        """The scheduled rotation, with its fresh ``next`` key generated ahead.

        Re-checks under the client's lock what the scheduler's claim saw: the
        active key has outlived the rotation period, the ``next`` key has been
        published for the prepublish period, and the policy still asks for
        ``spec``. Releases the claim either way; returns whether it rotated.
        """
        async with self.store.transaction("scheduled rotation") as tx:
            kid = await self._rotate_locked_if_due(
                tx, DueRotation(client_id, spec, generated), actor=actor
            )
        if kid is not None:
            self._rotated(client_id, kid, "scheduled")

        return kid is not None

    async def rotate_batch_if_due(
        self, batch: Sequence[DueRotation], *, actor: str
    ) -> list[bool | None]:
        """Several scheduled rotations in one transaction of set-based writes.

        The same checks and writes as :meth:`rotate_if_due`, in a handful of
        statements for the whole batch rather than a dozen a client. If one
        is refused (a client's rows break a constraint), the batch is redone
        in the same transaction a client at a time, each in a savepoint, so
        that client alone fails (None in the answer, its lease left to run
        out). True means rotated, False no longer due.
        """
        async with self.store.transaction("scheduled rotations") as tx:
            try:
                async with tx.savepoint("scheduled rotations"):
                    rotated = await self._rotate_batch_locked(tx, batch, actor=actor)
                outcomes: list[bool | None] = [
                    item.client_id in rotated for item in batch
                ]
            except StatementFailed as exc:
                logger.info(
                    "a batch of %d scheduled rotations was refused (%s); "
                    "redoing it a client at a time",
                    len(batch),
                    exc.detail,
                )
                outcomes, rotated = await self._rotate_each(tx, batch, actor=actor)

        self._rotated_batch(rotated)

        return outcomes

    async def _rotate_batch_locked(
        self, tx: Tx, batch: Sequence[DueRotation], *, actor: str
    ) -> dict[str, str]:
        """Lock, re-check and rotate a batch; the kid made active, by client."""
        ids = [item.client_id for item in batch]
        clients = await tx.lock_claimed_clients(ids)
        lives = await tx.live_keys_of(ids)
        now = await tx.now()

        retiring: list[tuple[str, str]] = []
        activating: list[tuple[str, str]] = []
        fresh: list[tuple[str, NewKey]] = []
        events: list[AuditEntry] = []
        for item in batch:
            client = clients.get(item.client_id)
            if client is None:
                continue
            live = lives.get(item.client_id, {})
            following = _due_next(client, live, now)
            current = keys.KeySpec(client.policy.alg, client.policy.key_size)
            if following is None or current != item.spec:
                continue
            new = self._sealed(item.client_id, item.key, KeyState.NEXT)
            actives = [k.kid for k in live.get(KeyState.ACTIVE, [])]
            retiring += [(item.client_id, kid) for kid in actives]
            activating.append((item.client_id, following.kid))
            fresh.append((item.client_id, new))
            events += _rotation_events(
                item.client_id,
                retired=actives,
                activated=following.kid,
                generated=new.kid,
                trigger="scheduled",
            )
        if not activating:
            return {}

        retired = await tx.retire_many(retiring)
        activated = await tx.activate_many(activating)
        if retired != len(retiring) or activated != len(activating):
            # Under the clients' locks nothing else moves their keys: a short
            # count means the rows are not what was just read.
            raise StatementFailed(
                f"scheduled rotations: {retired}/{len(retiring)} retired, "
                f"{activated}/{len(activating)} activated"
            )
        await tx.insert_next_keys(fresh)
        await tx.record_many(events, actor=actor)
        await tx.notify_many(NOTIFY_CHANNEL, [client_id for client_id, _ in activating])

        return dict(activating)

    async def _rotate_each(
        self, tx: Tx, group: Sequence[DueRotation], *, actor: str
    ) -> tuple[list[bool | None], dict[str, str]]:
        """The batch's fallback: one savepoint a client, so one failure stays
        its own."""
        outcomes: list[bool | None] = []
        rotated: dict[str, str] = {}
        for item in group:
            try:
                async with tx.savepoint("scheduled rotation"):
                    kid = await self._rotate_locked_if_due(tx, item, actor=actor)
            except StatementFailed as exc:
                logger.warning(
                    "scheduled rotation of client %s failed: %s",
                    item.client_id,
                    exc.detail,
                    extra={"client_id": item.client_id},
                )
                outcomes.append(None)
                continue
            outcomes.append(kid is not None)
            if kid is not None:
                rotated[item.client_id] = kid

        return outcomes, rotated

    async def _rotate_locked_if_due(
        self, tx: Tx, item: DueRotation, *, actor: str
    ) -> str | None:
        """Lock, re-check and rotate one client; the kid made active, or None."""
        client = await tx.lock_client(item.client_id)
        if client is None:
            return None
        await tx.release_rotation_claims([item.client_id])
        live = await tx.live_keys(item.client_id)
        following = _due_next(client, live, await tx.now())
        current = keys.KeySpec(client.policy.alg, client.policy.key_size)
        if following is None or current != item.spec:
            return None
        fresh = self._sealed(item.client_id, item.key, KeyState.NEXT)
        await self._promote(
            tx, live, following, fresh, actor=actor, trigger="scheduled"
        )

        return following.kid

    async def import_key(
        self, client_id: str, jwk: object, *, activate: bool, actor: str
    ) -> KeyRecord:
        """Publish a client's own public key as its ``next`` (or ``active``) key."""
        client = await self._client(client_id)
        if client.key_source is not KeySource.IMPORTED:
            raise Conflict(
                f"client {client_id} has {client.key_source.value} keys; "
                "only an imported-keys client takes a key"
            )
        imported = keys.import_public_jwk(jwk, policy_alg=client.policy.alg)

        async with self.store.transaction("import key") as tx:
            await _locked(tx, client_id)
            if await tx.get_key(client_id, imported.kid) is not None:
                raise Conflict(f"key {imported.kid} was already imported")
            live = await tx.live_keys(client_id)
            if sum(len(v) for v in live.values()) >= MAX_PUBLISHED_KEYS:
                raise Conflict(
                    f"client {client_id} already publishes {MAX_PUBLISHED_KEYS} "
                    "keys; revoke one first"
                )

            has_active = bool(live.get(KeyState.ACTIVE))
            state = KeyState.ACTIVE if activate or not has_active else KeyState.NEXT
            if state is KeyState.NEXT and live.get(KeyState.NEXT):
                raise Conflict(
                    f"client {client_id} already has a next key "
                    f"({live[KeyState.NEXT][0].kid}); rotate or revoke it first"
                )
            if state is KeyState.ACTIVE:
                for current in live.get(KeyState.ACTIVE, []):
                    await tx.retire(client_id, current.kid)
                    await tx.record(
                        client_id, "key.retired", actor=actor, kid=current.kid
                    )
            new = NewKey(
                imported.kid, imported.alg, state, "imported", imported.public_jwk
            )
            await tx.insert_keys(client_id, [new])
            await tx.record(
                client_id, "key.imported", actor=actor, kid=new.kid, state=state.value
            )
            await _notify(tx, client_id)
            record = await tx.get_key(client_id, new.kid)

        logger.info(
            "client %s imported key %s as %s",
            client_id,
            imported.kid,
            state.value,
            extra={"client_id": client_id, "kid": imported.kid},
        )
        self._changed(client_id)
        if record is None:
            raise NotFound(f"key {imported.kid} vanished during import")

        return record

    async def revoke(self, client_id: str, kid: str, *, actor: str) -> KeyRecord:
        """Withdraw a key at once and destroy its private part.

        Revoking the ``active`` key is a forced rotation: the ``next`` key
        takes over. A generated client gets a fresh ``next`` key.
        """
        client = await self._client(client_id)
        async with self.store.transaction("check revoke") as tx:
            before = await tx.get_key(client_id, kid)
        if before is None:
            raise NotFound(f"client {client_id} has no key {kid}")
        if before.state in (KeyState.EXPIRED, KeyState.REVOKED):
            raise Conflict(f"key {kid} is already {before.state.value}")
        needs_next = before.state in (KeyState.ACTIVE, KeyState.NEXT)
        fresh = await self._fresh_next(client) if needs_next else None

        async with self.store.transaction("revoke") as tx:
            await _locked(tx, client_id)
            key = await tx.get_key(client_id, kid)
            if key is None or key.state in (KeyState.EXPIRED, KeyState.REVOKED):
                raise Conflict(f"key {kid} was ended by a concurrent change")
            await tx.end(client_id, kid, KeyState.REVOKED)
            await tx.record(
                client_id, "key.revoked", actor=actor, kid=kid, was=key.state.value
            )

            live = await tx.live_keys(client_id)
            if key.state is KeyState.ACTIVE and live.get(KeyState.NEXT):
                promoted = live[KeyState.NEXT][0]
                await tx.activate(client_id, promoted.kid)
                await tx.record(
                    client_id,
                    "key.activated",
                    actor=actor,
                    kid=promoted.kid,
                    trigger="revocation",
                )
                live.pop(KeyState.NEXT)
            if fresh is not None and not live.get(KeyState.NEXT):
                await tx.insert_keys(client_id, [fresh])
                await tx.record(
                    client_id, "key.generated", actor=actor, kid=fresh.kid, state="next"
                )
            await _notify(tx, client_id)
            ended = await tx.get_key(client_id, kid)

        self.metrics.revocations.inc()
        if key.state is KeyState.ACTIVE:
            self.metrics.rotations.labels("forced").inc()
        logger.info(
            "client %s revoked key %s (was %s)",
            client_id,
            kid,
            key.state.value,
            extra={"client_id": client_id, "kid": kid},
        )
        self._changed(client_id)
        if ended is None:
            raise NotFound(f"key {kid} vanished during revocation")

        return ended

    async def rotate_secret(self, client_id: str, *, actor: str) -> IssuedSecret:
        """Give a ``client_secret_jwt`` client a new secret, shown this once.

        The old secret stays valid through the grace period; one still in
        grace from an earlier rotation is destroyed.
        """
        async with self.store.transaction("rotate secret") as tx:
            client = await _locked(tx, client_id)
            if client.auth_method is not AuthMethod.CLIENT_SECRET_JWT:
                raise Conflict(
                    f"client {client_id} authenticates with private_key_jwt and "
                    "has no secret; rotate its keys instead"
                )
            issued = await client_secrets.rotate(
                tx,
                self.sealer,
                client_id,
                grace_period_seconds=client.policy.grace_period_seconds,
            )
            await tx.record(
                client_id,
                "secret.rotated",
                actor=actor,
                secret_id=issued.secret_id,
                previous_valid_until=issued.previous_valid_until,
            )
            await _notify(tx, client_id)

        logger.info(
            "client %s rotated its secret: %s is current",
            client_id,
            issued.secret_id,
            extra={"client_id": client_id},
        )
        self._changed(client_id)

        return issued

    async def rewrap_all(
        self, *, actor: str, batch: int = 200
    ) -> tuple[int, list[str]]:
        """Move every sealed blob to the first KEK; return (moved, failed kids)."""
        moved, failed = 0, []
        after: tuple[str, str] | None = None
        while page := await self.store.sealed_keys(after=after, limit=batch):
            after = (page[-1].client_id, page[-1].kid)
            for key in page:
                if key.kek_id == self.sealer.current_kek_id or key.sealed is None:
                    continue
                blob = SealedBlob(key.kek_id or "", key.sealed)
                try:
                    resealed = self.sealer.rewrap(
                        blob, client_id=key.client_id, kid=key.kid
                    )
                except UnsealError as exc:
                    logger.error("cannot rewrap key %s: %s", key.kid, exc.detail)
                    failed.append(key.kid)
                    continue
                async with self.store.transaction("rewrap") as tx:
                    if await tx.reseal(
                        key.client_id, key.kid, resealed.kek_id, resealed.blob
                    ):
                        await tx.record(
                            key.client_id,
                            "key.rewrapped",
                            actor=actor,
                            kid=key.kid,
                            kek_id=resealed.kek_id,
                        )
                        moved += 1

        secrets_moved, secrets_failed = await client_secrets.rewrap_all(
            self.store, self.sealer, actor=actor, batch=batch
        )
        return moved + secrets_moved, failed + secrets_failed

    # -- internals ------------------------------------------------------------

    async def _client(self, client_id: str) -> Client:
        client = await self.store.get_client(client_id)
        if client is None:
            raise NotFound(f"no client {client_id}")

        return client

    async def _check_next_age(
        self, tx: Tx, client: Client, *, force: bool
    ) -> KeyRecord:
        live = await tx.live_keys(client.client_id)
        nexts = live.get(KeyState.NEXT)
        if not nexts:
            raise Conflict(
                f"client {client.client_id} has no next key to promote"
                + (
                    "; import one first"
                    if client.key_source is KeySource.IMPORTED
                    else ""
                )
            )
        following = nexts[0]
        if force:
            return following

        published_for = (await tx.now() - following.published_at).total_seconds()
        wait = client.policy.prepublish_period_seconds - published_for
        if wait > 0:
            needed = client.policy.prepublish_period_seconds
            raise TooYoung(
                f"the next key {following.kid} has been published for "
                f"{int(published_for)} s of the {needed} s every cache needs; "
                "retry later or force the rotation",
                retry_after=max(1, int(wait + 0.999)),
            )

        return following

    async def _promote(
        self,
        tx: Tx,
        live: dict[KeyState, list[KeyRecord]],
        following: KeyRecord,
        fresh: NewKey | None,
        *,
        actor: str,
        trigger: str,
    ) -> None:
        """One rotation's writes: retire the active key, activate ``following``."""
        client_id = following.client_id
        actives = live.get(KeyState.ACTIVE, [])
        for current in actives:
            await tx.retire(client_id, current.kid)
        await tx.activate(client_id, following.kid)
        if fresh is not None:
            await tx.insert_keys(client_id, [fresh])
        events = _rotation_events(
            client_id,
            retired=[k.kid for k in actives],
            activated=following.kid,
            generated=None if fresh is None else fresh.kid,
            trigger=trigger,
        )
        await tx.record_many(events, actor=actor)
        await _notify(tx, client_id)

    def _rotated(self, client_id: str, kid: str, trigger: str) -> None:
        self.metrics.rotations.labels(trigger).inc()
        logger.info(
            "client %s rotated (%s): %s is active",
            client_id,
            trigger,
            kid,
            extra={"client_id": client_id, "kid": kid},
        )
        self._changed(client_id)

    async def _fresh_next(self, client: Client) -> NewKey | None:
        if client.key_source is not KeySource.GENERATED:
            return None
        spec = keys.KeySpec(client.policy.alg, client.policy.key_size)
        generated = await self.generator.generate(spec)

        return self._sealed(client.client_id, generated, KeyState.NEXT)

    def _sealed(
        self, client_id: str, key: keys.GeneratedKey, state: KeyState
    ) -> NewKey:
        sealed = self.sealer.seal(key.private_jwk, client_id=client_id, kid=key.kid)

        return NewKey(
            key.kid,
            key.alg,
            state,
            "generated",
            key.public_jwk,
            sealed.kek_id,
            sealed.blob,
        )

    def _rotated_batch(self, rotated: dict[str, str]) -> None:
        """:meth:`_rotated` for a scheduled batch: one INFO line for the batch
        (the audit trail has each client), each client at DEBUG."""
        if not rotated:
            return
        self.metrics.rotations.labels("scheduled").inc(len(rotated))
        logger.info("%d clients rotated (scheduled)", len(rotated))
        for client_id, kid in rotated.items():
            logger.debug(
                "client %s rotated (scheduled): %s is active",
                client_id,
                kid,
                extra={"client_id": client_id, "kid": kid},
            )
            self._changed(client_id)

    def _changed(self, client_id: str) -> None:
        for callback in self.on_change:
            callback(client_id)


def _given(value: int | None, default: int) -> int:
    return default if value is None else value


def _due_next(
    client: Client, live: dict[KeyState, list[KeyRecord]], now: datetime
) -> KeyRecord | None:
    """The ``next`` key a scheduled rotation promotes now, or None if not due."""
    actives, nexts = live.get(KeyState.ACTIVE), live.get(KeyState.NEXT)
    if not actives or not nexts:
        return None

    active, following = actives[-1], nexts[0]
    active_since = active.activated_at or active.published_at
    active_for = (now - active_since).total_seconds()
    published_for = (now - following.published_at).total_seconds()
    policy = client.policy
    if active_for < policy.rotation_period_seconds:
        return None
    if published_for < policy.prepublish_period_seconds:
        return None

    return following


def _rotation_events(
    client_id: str,
    *,
    retired: Sequence[str],
    activated: str,
    generated: str | None,
    trigger: str,
) -> list[AuditEntry]:
    """The audit trail of one rotation, in the order its writes happen."""
    events: list[AuditEntry] = [(client_id, "key.retired", kid, {}) for kid in retired]
    events.append((client_id, "key.activated", activated, {"trigger": trigger}))
    if generated is not None:
        events.append((client_id, "key.generated", generated, {"state": "next"}))

    return events


def _check_periods(policy: Policy) -> None:
    if policy.rotation_period_seconds <= 0:
        raise InvalidPolicy("rotation_period must be positive")
    if policy.prepublish_period_seconds > policy.rotation_period_seconds:
        raise InvalidPolicy(
            "prepublish_period cannot exceed rotation_period: the next key is "
            "published one rotation ahead"
        )


async def _locked(tx: Tx, client_id: str) -> Client:
    client = await tx.lock_client(client_id)
    if client is None:
        raise NotFound(f"no client {client_id}")

    return client


async def _live_list(tx: Tx, client_id: str) -> list[KeyRecord]:
    live = await tx.live_keys(client_id)

    return [
        k for state in (KeyState.ACTIVE, KeyState.NEXT) for k in live.get(state, [])
    ]


async def _notify(tx: Tx, client_id: str) -> None:
    # Delivered at commit, to every replica that LISTENs, this one included.
    await tx.notify(NOTIFY_CHANNEL, client_id)
