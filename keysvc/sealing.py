"""Private parts sealed at rest with AES-256-GCM under key-encryption keys.

A sealed blob is ``version || nonce || ciphertext+tag``. The associated data
binds the blob to its row (client id and kid) and to the KEK that sealed it,
so a blob copied to another row, or presented under another KEK id, does not
open.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keysvc.errors import UnsealError

_VERSION = b"\x01"
_NONCE_BYTES = 12
_KEK_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True, slots=True)
class Kek:
    """One key-encryption key: an id stored beside each blob, and 32 bytes."""

    kek_id: str
    key: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class SealedBlob:
    kek_id: str
    blob: bytes = field(repr=False)


def parse_keks(value: str) -> tuple[Kek, ...]:
    """Parse ``id:base64url(32 bytes)`` entries, comma-separated; raise ValueError.

    Messages name the entry by position and id, never by its key.
    """
    keks: list[Kek] = []
    for position, entry in enumerate(value.split(","), start=1):
        kek_id, sep, encoded = entry.strip().partition(":")
        if not sep or not _KEK_ID.fullmatch(kek_id):
            raise ValueError(f"entry {position} is not 'id:base64url-key'")
        try:
            key = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"KEK {kek_id!r} is not base64url") from exc
        if len(key) != 32:
            raise ValueError(f"KEK {kek_id!r} must be 32 bytes, not {len(key)}")
        if any(k.kek_id == kek_id for k in keks):
            raise ValueError(f"KEK id {kek_id!r} is given twice")
        keks.append(Kek(kek_id, key))

    if not keks:
        raise ValueError("at least one KEK is needed")

    return tuple(keks)


def new_kek(kek_id: str) -> Kek:
    return Kek(kek_id, secrets.token_bytes(32))


def format_kek(kek: Kek) -> str:
    """The ``id:base64url`` form that :func:`parse_keks` reads."""
    encoded = base64.urlsafe_b64encode(kek.key).rstrip(b"=").decode()

    return f"{kek.kek_id}:{encoded}"


def _associated_data(kek_id: str, client_id: str, kid: str) -> bytes:
    # Length-prefixed, so no two different triples give the same bytes.
    parts = (b"keysvc-seal-v1", kek_id.encode(), client_id.encode(), kid.encode())

    return b"".join(len(p).to_bytes(2, "big") + p for p in parts)


class Sealer:
    """Seals under the first KEK and opens under any configured one."""

    def __init__(self, keks: tuple[Kek, ...]) -> None:
        if not keks:
            raise ValueError("a Sealer needs at least one KEK")
        self._current = keks[0]
        self._by_id = {k.kek_id: AESGCM(k.key) for k in keks}

    @property
    def current_kek_id(self) -> str:
        return self._current.kek_id

    def knows(self, kek_id: str) -> bool:
        return kek_id in self._by_id

    def seal(self, plaintext: bytes, *, client_id: str, kid: str) -> SealedBlob:
        kek_id = self._current.kek_id
        nonce = os.urandom(_NONCE_BYTES)
        aad = _associated_data(kek_id, client_id, kid)
        ciphertext = self._by_id[kek_id].encrypt(nonce, plaintext, aad)

        return SealedBlob(kek_id, _VERSION + nonce + ciphertext)

    def unseal(self, sealed: SealedBlob, *, client_id: str, kid: str) -> bytes:
        """Open a blob, or raise :class:`UnsealError` naming the kid."""
        aead = self._by_id.get(sealed.kek_id)
        if aead is None:
            raise UnsealError(
                f"key {kid} is sealed under KEK {sealed.kek_id!r}, "
                "which is not configured",
                kid=kid,
            )
        blob = sealed.blob
        if len(blob) < 1 + _NONCE_BYTES + 16 or blob[:1] != _VERSION:
            raise UnsealError(f"the sealed blob of key {kid} is malformed", kid=kid)

        nonce, ciphertext = blob[1 : 1 + _NONCE_BYTES], blob[1 + _NONCE_BYTES :]
        aad = _associated_data(sealed.kek_id, client_id, kid)
        try:
            return aead.decrypt(nonce, ciphertext, aad)
        except InvalidTag as exc:
            raise UnsealError(
                f"the sealed blob of key {kid} does not open: it belongs to "
                "another row or was sealed under another key",
                kid=kid,
            ) from exc

    def rewrap(self, sealed: SealedBlob, *, client_id: str, kid: str) -> SealedBlob:
        """Re-seal a blob under the current KEK (a no-op copy if it already is)."""
        if sealed.kek_id == self._current.kek_id:
            return sealed
        plaintext = self.unseal(sealed, client_id=client_id, kid=kid)

        return self.seal(plaintext, client_id=client_id, kid=kid)
