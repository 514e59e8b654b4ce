"""Real keys for the bench, made with ``cryptography`` in a pool of processes.

Each public JWK is built the way keysvc publishes one (``kty``, ``kid``,
``use``, ``alg`` and the public members), and its kid is its RFC 7638
thumbprint, computed here from the canonical members.
"""

from __future__ import annotations

import base64
import hashlib
import json
import multiprocessing
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from bench.database import BulkKey, jwk_text
from bench.procs import unpin


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int_bytes(value: int, length: int | None = None) -> bytes:
    size = length or max(1, (value.bit_length() + 7) // 8)

    return value.to_bytes(size, "big")


def public_members(private: PrivateKeyTypes) -> dict[str, str]:
    """The required public members of a key, as RFC 7638 orders them."""
    public = private.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        point = public.public_numbers()
        curve = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
        size = (public.curve.key_size + 7) // 8
        return {
            "crv": curve[public.curve.name],
            "kty": "EC",
            "x": b64url(_int_bytes(point.x, size)),
            "y": b64url(_int_bytes(point.y, size)),
        }
    if isinstance(public, rsa.RSAPublicKey):
        numbers = public.public_numbers()
        return {
            "e": b64url(_int_bytes(numbers.e)),
            "kty": "RSA",
            "n": b64url(_int_bytes(numbers.n)),
        }
    if isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return {"crv": "Ed25519", "kty": "OKP", "x": b64url(raw)}
    raise TypeError(f"no JWK form for {type(public).__name__}")


def thumbprint(members: dict[str, str]) -> str:
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":"))

    return b64url(hashlib.sha256(canonical.encode()).digest())


def published_jwk(private: PrivateKeyTypes, alg: str) -> dict[str, Any]:
    """The public JWK as keysvc would publish it."""
    members = public_members(private)
    jwk: dict[str, Any] = {
        "kty": members["kty"],
        "kid": thumbprint(members),
        "use": "sig",
        "alg": alg,
    }
    jwk.update((k, v) for k, v in members.items() if k != "kty")

    return jwk


def new_private(alg: str, rsa_bits: int = 2048) -> PrivateKeyTypes:
    if alg.startswith(("RS", "PS")):
        return rsa.generate_private_key(65537, rsa_bits)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg in ("EdDSA", "Ed25519"):
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"the bench makes no {alg} keys")


def _p256_batch(count: int) -> list[BulkKey]:
    keys = []
    for _ in range(count):
        jwk = published_jwk(ec.generate_private_key(ec.SECP256R1()), "ES256")
        keys.append(BulkKey(jwk["kid"], "ES256", jwk_text(jwk)))

    return keys


def p256_public_keys(count: int, *, processes: int = 2) -> list[BulkKey]:
    """``count`` distinct real P-256 public keys, made in a process pool."""
    chunk = 2000
    sizes = [chunk] * (count // chunk) + ([count % chunk] if count % chunk else [])
    context = multiprocessing.get_context("forkserver")
    with context.Pool(processes, initializer=unpin) as pool:
        batches = pool.map(_p256_batch, sizes)

    return [key for batch in batches for key in batch]


def private_jwk(private: PrivateKeyTypes, alg: str) -> dict[str, Any]:
    """A private RSA JWK, for a peer that must hold its own signing keys."""
    if not isinstance(private, rsa.RSAPrivateKey):
        raise TypeError("the peers are given RSA keys")
    numbers = private.private_numbers()
    jwk = published_jwk(private, alg)
    for name, value in (
        ("d", numbers.d),
        ("p", numbers.p),
        ("q", numbers.q),
        ("dp", numbers.dmp1),
        ("dq", numbers.dmq1),
        ("qi", numbers.iqmp),
    ):
        jwk[name] = b64url(_int_bytes(value))

    return jwk


def pem(private: PrivateKeyTypes) -> bytes:
    return private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
