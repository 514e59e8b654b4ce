"""Bearer tokens: made random, kept only as hashes, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets

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
