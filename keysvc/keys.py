"""Key material: policies, generation, thumbprints, and public keys in and out.

Everything here is pure and synchronous. :func:`public_jwk` is the one way a key
leaves keysvc: it copies an allow-list of public members and nothing else, so
no flag or default can make it publish a private part. :func:`import_public_jwk`
is the one way a client's key comes in, and it refuses anything it does not
understand rather than dropping it.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes
from jwcrypto import jwk
from jwcrypto.common import JWException

from keysvc.errors import InvalidKey, InvalidPolicy, KeysvcError

SIGNING_ALGS: tuple[str, ...] = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
    "Ed25519",
)
RSA_KEY_SIZES: tuple[int, ...] = (2048, 3072, 4096)

_SHARED_SECRET_ALGS = ("HS256", "HS384", "HS512")
_EC_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
_COORDINATE_BYTES = {"P-256": 32, "P-384": 48, "P-521": 66, "Ed25519": 32}
_PUBLIC_MEMBERS = {"RSA": ("n", "e"), "EC": ("crv", "x", "y"), "OKP": ("crv", "x")}
_METADATA_MEMBERS = ("kid", "use", "alg", "key_ops")
# "priv" is the private part of the AKP (post-quantum) key type.
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k", "priv")

_MAX_JWK_CHARS = 16 * 1024
# An 8192-bit modulus is 1366 base64url characters; names and labels are short.
_MAX_MATERIAL_CHARS = 2048
_MAX_LABEL_CHARS = 256
_RSA_MIN_BITS = 2048
_RSA_MAX_BITS = 8192
# SP 800-56B caps the public exponent below 2**256.
_RSA_MAX_EXPONENT_BYTES = 32


@dataclass(frozen=True, slots=True)
class KeySpec:
    """What kind of key a client's policy asks for; valid by construction."""

    alg: str
    key_size: int | None

    def __post_init__(self) -> None:
        kty, _ = key_type(self.alg)
        if kty != "RSA":
            if self.key_size is not None:
                raise InvalidPolicy(f"key_size applies to RSA only, not to {self.alg}")
            return

        size = self.key_size
        if isinstance(size, bool) or not isinstance(size, int):
            raise InvalidPolicy(f"RSA key_size must be an integer, not {_quote(size)}")
        if size not in RSA_KEY_SIZES:
            sizes = ", ".join(map(str, RSA_KEY_SIZES))
            raise InvalidPolicy(f"RSA key_size must be one of {sizes}, not {size}")


@dataclass(frozen=True, slots=True)
class GeneratedKey:
    """A fresh key pair: the public JWK to publish, the private JWK to seal."""

    kid: str
    alg: str
    public_jwk: dict[str, Any]
    private_jwk: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class ImportedKey:
    """A client's public key that passed every check, ready to store."""

    kid: str
    alg: str
    public_jwk: dict[str, Any]
    key: jwk.JWK = field(repr=False, compare=False)


def key_spec(
    alg: str, key_size: int | None = None, *, default_rsa_size: int = 2048
) -> KeySpec:
    """Validate a client's key policy, giving RSA the default size if none is set."""
    kty, _ = key_type(alg)
    if kty == "RSA" and key_size is None:
        key_size = default_rsa_size

    return KeySpec(alg, key_size)


def key_type(alg: str) -> tuple[str, str | None]:
    """The JWK ``kty`` and ``crv`` a signing algorithm needs (``crv`` None for RSA)."""
    if alg not in SIGNING_ALGS:
        raise InvalidPolicy(_unknown_alg(alg))

    if alg.startswith(("RS", "PS")):
        return "RSA", None
    if alg in _EC_CURVES:
        return "EC", _EC_CURVES[alg]
    return "OKP", "Ed25519"


def same_family(alg_a: str, alg_b: str) -> bool:
    """Whether two algorithm names are one signature scheme, so one key serves both.

    A key signs and verifies with the one algorithm it is published with; the
    only two names for one scheme are ``EdDSA`` and ``Ed25519`` (RFC 9864). RS256
    and PS256 share a key type, not a scheme, so they are not one family. A name
    outside :data:`SIGNING_ALGS` (``HS256``, ``none``) matches nothing.
    """
    if alg_a not in SIGNING_ALGS or alg_b not in SIGNING_ALGS:
        return False

    return _scheme(alg_a) == _scheme(alg_b)


def generate_key(spec: KeySpec) -> GeneratedKey:
    """Generate a key pair for a policy; CPU-bound, meant for a process pool."""
    kty, crv = key_type(spec.alg)
    if kty == "RSA":
        key = jwk.JWK.generate(kty="RSA", size=spec.key_size)
    else:
        key = jwk.JWK.generate(kty=kty, crv=crv)

    public = public_jwk(key, alg=spec.alg)
    private = key.export_private().encode("utf-8")
    return GeneratedKey(
        kid=public["kid"], alg=spec.alg, public_jwk=public, private_jwk=private
    )


def thumbprint(key: jwk.JWK) -> str:
    """The RFC 7638 SHA-256 thumbprint of a key, base64url unpadded: its kid."""
    if key.get("kty") not in _PUBLIC_MEMBERS:
        raise KeysvcError("only RSA, EC and OKP keys have a kid in keysvc")

    kid: str = key.thumbprint(hashes.SHA256())
    return kid


def public_jwk(key: jwk.JWK, *, alg: str) -> dict[str, Any]:
    """The JWK keysvc publishes for a key: kty, kid, use, alg and public members.

    The members are copied from an allow-list for the key type, never exported
    by jwcrypto, so a private member cannot get through whatever ``key`` holds.
    The order is fixed, so equal keys serialise to equal bytes.
    """
    kty, crv = key_type(alg)
    if key.get("kty") != kty or (crv is not None and key.get("crv") != crv):
        raise KeysvcError(f"a key of type {key.get('kty')} cannot be used as {alg}")

    published: dict[str, Any] = {
        "kty": kty,
        "kid": thumbprint(key),
        "use": "sig",
        "alg": alg,
    }
    for name in _PUBLIC_MEMBERS[kty]:
        published[name] = key[name]

    return published


def import_public_jwk(obj: object, *, policy_alg: str) -> ImportedKey:
    """Validate a public JWK that a client brings for its policy algorithm.

    Anything unexpected is refused with :class:`InvalidKey`, whose detail names
    the member at fault but never quotes key material. Its kid, if given, must
    already be the RFC 7638 thumbprint, which is the kid keysvc uses. A
    ``policy_alg`` outside :data:`SIGNING_ALGS` raises :class:`InvalidPolicy`.
    """
    kty, crv = key_type(policy_alg)
    members = _checked_members(obj, kty)
    _check_labels(members, policy_alg, crv)
    _check_material(members, kty)

    key = _build_public_key(members, kty)
    kid = thumbprint(key)
    if "kid" in members and members["kid"] != kid:
        raise InvalidKey(
            f"kid must be the RFC 7638 thumbprint of the key, which is {kid}",
            expected_kid=kid,
        )

    return ImportedKey(
        kid=kid,
        alg=policy_alg,
        public_jwk=public_jwk(key, alg=policy_alg),
        key=key,
    )


def load_private_key(private_jwk: bytes) -> jwk.JWK:
    """Parse a private JWK as :func:`generate_key` made it, once unsealed."""
    try:
        key = jwk.JWK.from_json(private_jwk.decode("utf-8"))
    except (JWException, TypeError, ValueError) as exc:
        raise KeysvcError("an unsealed private key does not parse as a JWK") from exc

    if key.get("kty") not in _PUBLIC_MEMBERS or not key.has_private:
        raise KeysvcError("an unsealed private key is not an asymmetric private JWK")

    return key


def load_public_key(public_jwk: dict[str, Any]) -> jwk.JWK:
    """Rebuild a verifying key from a stored public JWK, refusing private members."""
    if not isinstance(public_jwk, dict):
        raise InvalidKey("a public JWK must be a JSON object")

    _refuse_private_members(public_jwk)
    kty, crv = public_jwk.get("kty"), public_jwk.get("crv", "")
    if not isinstance(kty, str) or kty not in _PUBLIC_MEMBERS:
        raise InvalidKey(f"kty {_quote(kty)} is not a signing key type of keysvc")
    if kty != "RSA" and (not isinstance(crv, str) or crv not in _COORDINATE_BYTES):
        raise InvalidKey(f"crv {_quote(crv)} is not a curve keysvc signs with")

    labels = tuple(name for name in ("kid", "alg") if name in public_jwk)
    return _build_public_key(public_jwk, kty, keep=labels)


def _checked_members(obj: object, kty: str) -> dict[str, Any]:
    """Check a JWK's shape: size, no private or unknown members, bounded strings."""
    if not isinstance(obj, dict):
        raise InvalidKey("a JWK must be a JSON object")
    try:
        size = len(json.dumps(obj))
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidKey("a JWK must be a JSON object") from exc
    if size > _MAX_JWK_CHARS:
        raise InvalidKey("a JWK must not be larger than 16 KiB")
    if not all(isinstance(name, str) for name in obj):
        raise InvalidKey("a JWK's member names must be strings")

    _refuse_private_members(obj)
    if obj.get("kty") == "oct":
        raise InvalidKey("symmetric keys (kty 'oct') are never imported")
    if obj.get("kty") != kty:
        raise InvalidKey(f"kty must be {kty!r} for this client's policy")

    allowed = ("kty", *_PUBLIC_MEMBERS[kty], *_METADATA_MEMBERS)
    unknown = sorted(name for name in obj if name not in allowed)
    if unknown:
        names = ", ".join(_quote(name) for name in unknown[:3])
        raise InvalidKey(f"member not allowed in {kty} public JWKs: {names}")

    for name, value in obj.items():
        _check_value(name, value)

    return obj


def _check_value(name: str, value: object) -> None:
    """Check that one member is a string (key_ops a list of them) of sane length."""
    if name == "key_ops":
        if not isinstance(value, list):
            raise InvalidKey("key_ops must be a list of strings")
        for op in value:
            _check_value("key_ops entry", op)
        return

    limit = _MAX_MATERIAL_CHARS if name in ("n", "e", "x", "y") else _MAX_LABEL_CHARS
    if not isinstance(value, str):
        raise InvalidKey(f"{name} must be a string")
    if len(value) > limit:
        raise InvalidKey(f"{name} must not be longer than {limit} characters")


def _check_labels(members: dict[str, Any], policy_alg: str, crv: str | None) -> None:
    """Check use, key_ops, alg and crv against a signing key of the policy alg."""
    if "use" in members and members["use"] != "sig":
        raise InvalidKey("use must be 'sig': keysvc keys only sign")
    if "key_ops" in members and members["key_ops"] != ["verify"]:
        raise InvalidKey("key_ops must be exactly ['verify'] for a public key")
    if "alg" in members and not same_family(members["alg"], policy_alg):
        raise InvalidKey(f"alg must be the client's policy alg, {policy_alg}")
    if crv is not None and members.get("crv") != crv:
        raise InvalidKey(f"crv must be {crv!r} for {policy_alg}")


def _check_material(members: dict[str, Any], kty: str) -> None:
    """Check key members: present, canonical base64url, sizes a signing key needs."""
    for name in _PUBLIC_MEMBERS[kty]:
        if name not in members:
            raise InvalidKey(f"{kty} public JWKs need the member {name}")

    if kty == "RSA":
        _check_rsa(_base64url(members, "n"), _base64url(members, "e"))
        return

    # The curve was checked against the policy before; it fixes the lengths.
    crv = members["crv"]
    size = _COORDINATE_BYTES[crv]
    for name in ("x", "y") if kty == "EC" else ("x",):
        if len(_base64url(members, name)) != size:
            raise InvalidKey(f"{name} must be {size} octets on {crv}")


def _check_rsa(modulus: bytes, exponent: bytes) -> None:
    """Check an RSA public key's modulus length and exponent."""
    for name, raw in (("n", modulus), ("e", exponent)):
        if not raw or raw[0] == 0:
            raise InvalidKey(f"{name} must be a positive integer without leading zeros")

    bits = int.from_bytes(modulus, "big").bit_length()
    if not _RSA_MIN_BITS <= bits <= _RSA_MAX_BITS:
        raise InvalidKey(
            f"RSA modulus must be {_RSA_MIN_BITS} to {_RSA_MAX_BITS} bits, not {bits}"
        )

    e = int.from_bytes(exponent, "big")
    if len(exponent) > _RSA_MAX_EXPONENT_BYTES or e < 3 or e % 2 == 0:
        raise InvalidKey("RSA exponent must be odd, at least 3 and below 2**256")


def _base64url(members: dict[str, Any], name: str) -> bytes:
    """Decode one member, refusing padding and any non-canonical encoding."""
    text = members[name]
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise InvalidKey(f"{name} must be unpadded base64url") from exc

    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != text:
        raise InvalidKey(f"{name} must be unpadded base64url, canonically encoded")

    return raw


def _build_public_key(
    members: dict[str, Any], kty: str, keep: tuple[str, ...] = ()
) -> jwk.JWK:
    """Make a jwcrypto key of only the public members, and prove it usable."""
    wanted = (*_PUBLIC_MEMBERS[kty], *keep)
    picked = {name: members[name] for name in wanted if name in members}

    try:
        key = jwk.JWK(kty=kty, **picked)
        # jwcrypto builds the key lazily; this is where a point off its curve fails.
        key.get_op_key("verify")
    except (JWException, TypeError, ValueError) as exc:
        raise InvalidKey(f"not a usable {kty} public key") from exc

    return key


def _refuse_private_members(obj: dict[Any, Any]) -> None:
    """Refuse a JWK that carries any private member, naming them."""
    found = [name for name in _PRIVATE_MEMBERS if name in obj]
    if found:
        raise InvalidKey(
            f"private member present: {', '.join(found)}; "
            "keysvc takes public keys only: send the public part alone"
        )


def _unknown_alg(alg: object) -> str:
    """Explain why a name is not a signing algorithm keysvc makes keys for."""
    if alg in _SHARED_SECRET_ALGS:
        return f"{alg} signs with a shared secret (client_secret_jwt), not a key"
    if isinstance(alg, str) and alg.lower() == "none":
        return "alg 'none' is never accepted"

    return f"alg {_quote(alg)} is not one of {', '.join(SIGNING_ALGS)}"


def _scheme(alg: str) -> str:
    """The name of the signature scheme an algorithm name stands for."""
    return "EdDSA" if alg == "Ed25519" else alg


def _quote(value: object) -> str:
    """Quote a caller's value for a message, cut short so it cannot flood a log."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
