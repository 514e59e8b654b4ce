"""Bearer tokens: made random, kept only as hashes, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

# A prefix tells an operator which kind of token leaked, without revealing it.
CLIENT_PREFIX = "kscl_"
VERIFIER_PREFIX = "ksvf_"
ADMIN_PREFIX = "ksad_"


def new_token(prefix: str) -> str:
    """A fresh token of 256 random bits."""
    return prefix + secrets.token_urlsafe(32)


def token_hash(token: str) -> bytes:
    """SHA-256 of a token: tokens carry 256 bits, so no slow hash is needed."""
    return hashlib.sha256(token.encode()).digest()


def matches(token: str, expected_hash: bytes) -> bool:
    return hmac.compare_digest(token_hash(token), expected_hash)


class TokenCache:
    """Client-token hashes already resolved, so a hot route skips the database.

    Only matches are kept, briefly; deleting a client drops its entry on every
    replica (the same NOTIFY that drops its JWKS), and the TTL bounds the rest.
    """

    def __init__(self, *, ttl: float = 60.0, max_entries: int = 100_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._by_hash: dict[bytes, tuple[str, float]] = {}
        self._by_client: dict[str, bytes] = {}

    def get(self, digest: bytes) -> str | None:
        found = self._by_hash.get(digest)
        if found is None or found[1] < time.monotonic():
            return None

        return found[0]

    def put(self, digest: bytes, client_id: str) -> None:
        if len(self._by_hash) >= self.max_entries:
            self.clear()
        self._by_hash[digest] = (client_id, time.monotonic() + self.ttl)
        self._by_client[client_id] = digest

    def invalidate(self, client_id: str) -> None:
        digest = self._by_client.pop(client_id, None)
        if digest is not None:
            self._by_hash.pop(digest, None)

    def clear(self) -> None:
        self._by_hash.clear()
        self._by_client.clear()
