"""The HMAC secrets of ``client_secret_jwt`` clients: made, sealed, rotated.

A secret is 256 random bits written as text, shown to its client once. As
OpenID Connect Core §10.1 has it, the HMAC key is the UTF-8 octets of that
text, so a client can hand it to any JWT library as it is. At rest it is
sealed like a private key, under the associated data of its client and of a
secret id that no kid can take (a kid never holds a colon), so a sealed
secret cannot pass for a sealed key. A client has one ``current`` secret and
at most one ``previous`` one, accepted until its grace period ends; a
destroyed secret is gone from its row.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field
from datetime import datetime

from jwcrypto.common import base64url_encode
from jwcrypto.jwk import JWK

from keysvc.errors import UnsealError
from keysvc.sealing import SealedBlob, Sealer
from keysvc.store import Store, Tx

logger = logging.getLogger(__name__)

HMAC_ALG = "HS256"
# Tells an operator what kind of credential leaked, without revealing it.
SECRET_PREFIX = "kscs_"
_SECRET_BYTES = 32
_ID_BYTES = 12


@dataclass(frozen=True, slots=True)
class IssuedSecret:
    """A secret just made: shown to the client once, then only sealed."""

    secret_id: str
    secret: str = field(repr=False)
    previous_valid_until: datetime | None = None


def new_secret() -> tuple[str, str]:
    """A fresh ``(secret_id, secret)``; the secret carries 256 random bits."""
    secret_id = secrets.token_urlsafe(_ID_BYTES)
    secret = SECRET_PREFIX + secrets.token_urlsafe(_SECRET_BYTES)

    return secret_id, secret


def sealing_label(secret_id: str) -> str:
    """The ``kid`` a secret is sealed under: no key's kid can be the same."""
    return f"secret:{secret_id}"


def hmac_key(secret: bytes) -> JWK:
    """The HS256 key of a secret: its UTF-8 octets, as OIDC Core §10.1 says."""
    return JWK(kty="oct", k=base64url_encode(secret))


def unseal(sealer: Sealer, client_id: str, secret_id: str, blob: SealedBlob) -> bytes:
    return sealer.unseal(blob, client_id=client_id, kid=sealing_label(secret_id))


async def issue(tx: Tx, sealer: Sealer, client_id: str) -> IssuedSecret:
    """Make a secret and store it, sealed, as the client's ``current`` one."""
    secret_id, secret = new_secret()
    sealed = sealer.seal(
        secret.encode("utf-8"), client_id=client_id, kid=sealing_label(secret_id)
    )
    await tx.insert_secret(client_id, secret_id, sealed.kek_id, sealed.blob)

    return IssuedSecret(secret_id, secret)


async def rotate(
    tx: Tx, sealer: Sealer, client_id: str, *, grace_period_seconds: int
) -> IssuedSecret:
    """Demote the current secret for the grace period and issue a new one.

    A secret still in its grace period from an earlier rotation is destroyed:
    at most two secrets are ever accepted for one client. Call after locking
    the client's row.
    """
    valid_until = await tx.demote_secret(client_id, grace_period_seconds)
    issued = await issue(tx, sealer, client_id)

    return IssuedSecret(issued.secret_id, issued.secret, valid_until)


async def rewrap_all(
    store: Store, sealer: Sealer, *, actor: str, batch: int = 200
) -> tuple[int, list[str]]:
    """Move every sealed secret to the first KEK; return (moved, failed labels)."""
    moved, failed = 0, []
    after: tuple[str, str] | None = None
    while page := await store.sealed_secrets(after=after, limit=batch):
        after = (page[-1][0], page[-1][1].secret_id)
        for client_id, secret in page:
            if secret.kek_id == sealer.current_kek_id:
                continue
            label = sealing_label(secret.secret_id)
            try:
                resealed = sealer.rewrap(
                    SealedBlob(secret.kek_id, secret.sealed),
                    client_id=client_id,
                    kid=label,
                )
            except UnsealError as exc:
                logger.error("cannot rewrap %s: %s", label, exc.detail)
                failed.append(label)
                continue
            async with store.transaction("rewrap secret") as tx:
                if await tx.reseal_secret(
                    client_id, secret.secret_id, resealed.kek_id, resealed.blob
                ):
                    await tx.record(
                        client_id,
                        "secret.rewrapped",
                        actor=actor,
                        secret_id=secret.secret_id,
                        kek_id=resealed.kek_id,
                    )
                    moved += 1

    return moved, failed
