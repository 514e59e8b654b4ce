"""Verifiers: the authorization servers allowed to ask ``/verify``.

A verifier's bearer token is bound to the audiences it may accept (its
issuer identifier and its token endpoint URL, compared as exact strings),
and optionally to explicit typing. The token is shown once and kept only as
a hash.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

from keysvc.errors import InvalidRequest, NotFound
from keysvc.store import Store, VerifierRecord
from keysvc.tokens import VERIFIER_PREFIX, new_token, token_hash

logger = logging.getLogger(__name__)

# Payload: a verifier id, sent when one is deleted.
NOTIFY_CHANNEL = "keysvc_verifiers"
MAX_AUDIENCES = 20
MAX_LISTED = 1000


@dataclass(frozen=True, slots=True)
class CreatedVerifier:
    verifier: VerifierRecord
    verifier_token: str = field(repr=False)


class Verifiers:
    """Registers, lists, removes and authenticates verifiers.

    Verifiers are few and change rarely, so each token's verifier is kept in
    memory once looked up: ``/verify`` then costs one database statement,
    the jti insert. A deletion drops it here at once and, through
    ``NOTIFY`` on :data:`NOTIFY_CHANNEL`, on every other replica.
    """

    def __init__(self, store: Store, *, max_entries: int = 10_000) -> None:
        self.store = store
        self.max_entries = max_entries
        self._by_hash: dict[bytes, VerifierRecord] = {}
        # Bumped by each invalidation: a lookup begun before it is not kept.
        self._generation = 0

    async def create(
        self, name: str, audiences: Sequence[str], *, require_typ: bool, actor: str
    ) -> CreatedVerifier:
        distinct = list(dict.fromkeys(audiences))
        if not 1 <= len(distinct) <= MAX_AUDIENCES or not all(
            _printable(a) for a in distinct
        ):
            raise InvalidRequest(
                f"audiences must be 1 to {MAX_AUDIENCES} non-empty printable strings"
            )
        if not _printable(name):
            raise InvalidRequest("name must be a non-empty printable string")

        token = new_token(VERIFIER_PREFIX)
        async with self.store.transaction("create verifier") as tx:
            verifier = await tx.insert_verifier(
                verifier_id=secrets.token_urlsafe(12),
                name=name,
                audiences=distinct,
                require_typ=require_typ,
                token_hash=token_hash(token),
            )
        logger.info(
            "verifier %s (%s) created by %s",
            verifier.verifier_id,
            name,
            actor,
            extra={"verifier_id": verifier.verifier_id},
        )

        return CreatedVerifier(verifier, token)

    async def list(self) -> list[VerifierRecord]:
        return await self.store.list_verifiers(limit=MAX_LISTED)

    async def delete(self, verifier_id: str, *, actor: str) -> None:
        async with self.store.transaction("delete verifier") as tx:
            deleted = await tx.delete_verifier(verifier_id)
            await tx.notify(NOTIFY_CHANNEL, verifier_id)
        self.invalidate(verifier_id)
        if not deleted:
            raise NotFound(f"no verifier {verifier_id}")

        logger.info(
            "verifier %s deleted by %s",
            verifier_id,
            actor,
            extra={"verifier_id": verifier_id},
        )

    async def for_token(self, token: str) -> VerifierRecord | None:
        """The verifier this bearer token belongs to, if any (found by hash)."""
        digest = token_hash(token)
        known = self._by_hash.get(digest)
        if known is not None:
            return known

        generation = self._generation
        verifier = await self.store.verifier_for_token(digest)
        if verifier is not None and generation == self._generation:
            if len(self._by_hash) >= self.max_entries:
                self._by_hash.clear()
            self._by_hash[digest] = verifier

        return verifier

    def invalidate(self, verifier_id: str) -> None:
        self._generation += 1
        for digest in [
            d for d, v in self._by_hash.items() if v.verifier_id == verifier_id
        ]:
            del self._by_hash[digest]

    def clear(self) -> None:
        self._generation += 1
        self._by_hash.clear()


def _printable(value: str) -> bool:
    # Stored as text: no NUL, no lone surrogate, no control character.
    return value != "" and value.isprintable()
