"""Client assertions (RFC 7523): parsing, claim checks, signatures, signing.

Verification is split into steps so that the service can run the cheap ones
before it touches the database: :func:`parse_assertion` (structure and
header), :func:`check_claims` (times, issuer, audience, ``jti``), then, once
the client and its key are looked up, :func:`check_signature`. Recording the
``jti`` is the service's last step. Every refusal is an
:class:`~keysvc.errors.AssertionRejected` whose ``reason`` names the check.

The module is pure: no I/O, no clock (``now`` is passed in), no key parsing.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import math
import re
import secrets
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from cryptography.exceptions import InvalidSignature
from jwcrypto.common import JWException
from jwcrypto.jwa import JWA
from jwcrypto.jwk import JWK

from keysvc.errors import AssertionRejected
from keysvc.keys import SIGNING_ALGS, key_type

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
EXPLICIT_TYP = "client-authentication+jwt"
MAX_ASSERTION_BYTES = 8192

MAX_JTI_LENGTH = 256

# The algorithms keysvc verifies and signs with, each with the key type (and
# curve) it needs, looked up on every verification. "none", in any spelling,
# is absent, and so refused.
_KEY_TYPES: dict[str, tuple[str, str | None]] = {
    alg: key_type(alg) for alg in SIGNING_ALGS
} | {"HS256": ("oct", None)}
_EDDSA_NAMES = frozenset({"EdDSA", "Ed25519"})

# Built once: jwcrypto's algorithm objects hold no key. "EdDSA" runs through
# the fully specified Ed25519 one, the only curve keysvc accepts under it.
_ALGORITHMS = {
    name: JWA.signing_alg("Ed25519" if name == "EdDSA" else name) for name in _KEY_TYPES
}

# RFC 7518 §3.4 fixes an ECDSA signature's length; OpenSSL would accept other
# encodings of the same (r, s), and RSA-PSS a signature shorter than the modulus.
_EC_SIGNATURE_BYTES = {"ES256": 64, "ES384": 96, "ES512": 132}

_UNTRUSTED_HEADERS = frozenset({"jwk", "jku", "x5u", "x5c"})
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


@dataclass(frozen=True, slots=True)
class VerifyPolicy:
    """What one verification accepts; a request may only narrow it."""

    audiences: frozenset[str]
    leeway_seconds: int = 30
    max_lifetime_seconds: int = 600
    require_typ: bool = False
    expected_client_id: str | None = None
    max_bytes: int = MAX_ASSERTION_BYTES


@dataclass(frozen=True, slots=True)
class ParsedAssertion:
    """A structurally sound compact JWS whose header passed its checks.

    ``client_id``, ``jti`` and ``exp`` read validated claims: before
    :func:`check_claims` has passed they refuse as it would.
    """

    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes = field(repr=False)
    signature: bytes = field(repr=False)
    token: str = field(repr=False)

    @property
    def alg(self) -> str:
        alg: str = self.header["alg"]
        return alg

    @property
    def kid(self) -> str | None:
        kid: str | None = self.header.get("kid")
        return kid

    @property
    def client_id(self) -> str:
        return _issuer(self.claims)

    @property
    def jti(self) -> str:
        return _token_id(self.claims)

    @property
    def exp(self) -> int:
        """``exp`` rounded up, so a ``jti`` kept until then outlives the token."""
        return math.ceil(_expiry(self.claims))


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """A key a client's assertions may be signed with, parsed once by the caller."""

    kid: str
    alg: str
    key: JWK = field(repr=False)
    symmetric: bool = False


@dataclass(frozen=True, slots=True)
class SignedAssertion:
    token: str = field(repr=False)
    jti: str
    expires_at: int


def parse_assertion(token: object, policy: VerifyPolicy) -> ParsedAssertion:
    """Split a compact JWS and check its header; no claim is judged yet."""
    if not isinstance(token, str):
        raise AssertionRejected("malformed", "the assertion is not a string")
    if len(token) > policy.max_bytes:
        raise AssertionRejected("too_large", "the assertion exceeds the size limit")
    if token.lstrip().startswith("{"):
        raise AssertionRejected(
            "unsupported_serialization", "only the compact serialization is accepted"
        )

    segments = token.split(".")
    if len(segments) == 5:
        raise AssertionRejected(
            "unsupported_serialization", "an encrypted JWT (JWE) is not accepted"
        )
    if len(segments) != 3 or not token.isascii():
        raise AssertionRejected("malformed", "the assertion is not a compact JWS")

    encoded_header, encoded_payload, encoded_signature = segments
    header = _decode_object(encoded_header)
    _check_header(header, policy)

    claims = _decode_object(encoded_payload)
    signature = _decode_segment(encoded_signature)
    signing_input = token[: len(encoded_header) + 1 + len(encoded_payload)]

    return ParsedAssertion(
        header=header,
        claims=claims,
        signing_input=signing_input.encode("ascii"),
        signature=signature,
        token=token,
    )


def check_claims(parsed: ParsedAssertion, policy: VerifyPolicy, *, now: float) -> None:
    """Check the RFC 7523 §3 claims against ``policy`` at time ``now``."""
    claims = parsed.claims
    client_id = _issuer(claims)
    if claims.get("sub") != client_id:
        raise AssertionRejected("iss_sub_mismatch", "iss and sub must be equal")
    if policy.expected_client_id is not None and client_id != policy.expected_client_id:
        raise AssertionRejected("client_id", "the assertion is for another client")

    # Comparisons only: a huge integer claim never meets float arithmetic.
    leeway = policy.leeway_seconds
    expires = _expiry(claims)
    not_before = _optional_time(claims, "nbf")
    issued = _optional_time(claims, "iat")
    if expires + leeway <= now:
        raise AssertionRejected("expired", "the assertion has expired")
    if not_before is not None and not_before > now + leeway:
        raise AssertionRejected("not_yet_valid", "the assertion is not valid yet")
    if issued is not None and issued > now + leeway:
        raise AssertionRejected(
            "iat_in_future", "the assertion is issued in the future"
        )

    start = issued if issued is not None else now
    if expires > start + policy.max_lifetime_seconds:
        raise AssertionRejected("lifetime_too_long", "the assertion lives too long")

    _token_id(claims)
    if not _audience_accepted(claims.get("aud"), policy.audiences):
        raise AssertionRejected("audience", "the assertion is not for this audience")


def check_signature(parsed: ParsedAssertion, key: VerificationKey) -> None:
    """Verify the signature with ``key``, under the algorithm it is published for."""
    alg = parsed.alg
    if not _alg_fits(alg, key):
        raise AssertionRejected(
            "alg_mismatch", f"the key is published for {key.alg} only"
        )

    try:
        if len(parsed.signature) == _signature_length(alg, key.key):
            _ALGORITHMS[alg].verify(key.key, parsed.signing_input, parsed.signature)
            return
    except (InvalidSignature, JWException, ValueError) as exc:
        raise AssertionRejected(
            "bad_signature", "the signature does not verify"
        ) from exc

    raise AssertionRejected("bad_signature", "the signature has the wrong length")


def sign_assertion(
    key: JWK,
    *,
    alg: str,
    kid: str | None,
    client_id: str,
    audience: str | list[str],
    lifetime_seconds: int,
    now: float,
    explicit_typ: bool = False,
) -> SignedAssertion:
    """Sign a client assertion for ``client_id`` (an oct JWK for HS256).

    Without ``explicit_typ`` the header has no ``typ``: "JWT" would tell a
    verifier nothing it can check, and RFC 7519 makes it optional.
    """
    needed = _KEY_TYPES.get(alg)
    if needed is None or (key.get("kty"), key.get("crv")) != needed:
        raise ValueError(f"{alg} cannot sign with this key")
    if lifetime_seconds <= 0:
        raise ValueError("an assertion's lifetime must be positive")

    issued_at = int(now)
    expires_at = issued_at + lifetime_seconds
    jti = secrets.token_urlsafe(32)
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "iat": issued_at,
        "exp": expires_at,
        "jti": jti,
    }

    header = _header_segment(alg, kid, explicit_typ)
    signing_input = header + b"." + _encode_object(claims)
    signature = _ALGORITHMS[alg].sign(key, signing_input)
    token = (signing_input + b"." + _encode_segment(signature)).decode("ascii")

    return SignedAssertion(token=token, jti=jti, expires_at=expires_at)


def _check_header(header: dict[str, Any], policy: VerifyPolicy) -> None:
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise AssertionRejected("malformed", "the header has no alg")
    if alg not in _KEY_TYPES:
        raise AssertionRejected("alg_not_allowed", "the algorithm is not accepted")
    if "crit" in header or header.get("b64", True) is not True:
        raise AssertionRejected("unsupported_header", "a header extension is used")
    if not _UNTRUSTED_HEADERS.isdisjoint(header):
        raise AssertionRejected(
            "untrusted_header", "keys named by the token itself are never used"
        )

    if "kid" in header and not _is_identifier(header["kid"]):
        raise AssertionRejected("malformed", "the header kid is not a string")
    typ = header.get("typ")
    if "typ" in header and not isinstance(typ, str):
        raise AssertionRejected("malformed", "the header typ is not a string")
    if policy.require_typ and (typ is None or _media_type(typ) != EXPLICIT_TYP):
        raise AssertionRejected("typ", f"the header typ must be {EXPLICIT_TYP}")


def _media_type(value: str) -> str:
    # RFC 7515 §4.1.9: compared case-insensitively; "application/" may be left
    # out where no other "/" remains.
    lowered = value.lower()
    subtype = lowered.removeprefix("application/")

    return subtype if "/" not in subtype else lowered


def _alg_fits(alg: str, key: VerificationKey) -> bool:
    same_name = alg == key.alg or {alg, key.alg} <= _EDDSA_NAMES
    # A secret verifies HS256 alone, and HS256 needs a secret: an RSA public
    # key's bytes must never serve as an HMAC key.
    if not same_name or key.symmetric != (alg == "HS256"):
        return False

    needed = _KEY_TYPES.get(alg)

    return needed == (key.key.get("kty"), key.key.get("crv"))


def _signature_length(alg: str, key: JWK) -> int:
    if alg in _EC_SIGNATURE_BYTES:
        return _EC_SIGNATURE_BYTES[alg]
    if alg.startswith(("RS", "PS")):
        modulus_bits: int = key.get_op_key("verify").key_size
        return (modulus_bits + 7) // 8
    return 64 if alg in _EDDSA_NAMES else 32


def _issuer(claims: dict[str, Any]) -> str:
    iss = claims.get("iss")
    if _is_identifier(iss):
        return iss

    raise AssertionRejected("iss_sub_mismatch", "iss must name the client")


def _token_id(claims: dict[str, Any]) -> str:
    jti = claims.get("jti")
    if _is_identifier(jti) and len(jti) <= MAX_JTI_LENGTH:
        return jti

    raise AssertionRejected("missing_jti", "a unique jti of bounded length is required")


def _expiry(claims: dict[str, Any]) -> int | float:
    exp = claims.get("exp")
    if _is_number(exp):
        return exp

    raise AssertionRejected("missing_exp", "exp must be present, a number")


def _optional_time(claims: dict[str, Any], name: str) -> int | float | None:
    value = claims.get(name)
    if _is_number(value) or name not in claims:
        return value

    raise AssertionRejected("malformed", f"{name} must be a number")


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _audience_accepted(aud: object, accepted: frozenset[str]) -> bool:
    if isinstance(aud, str):
        return aud in accepted
    if not isinstance(aud, list) or not all(isinstance(item, str) for item in aud):
        return False

    return not accepted.isdisjoint(aud)


def _is_identifier(value: object) -> TypeGuard[str]:
    # It reaches the database: no NUL, no lone surrogate from a JSON escape.
    return isinstance(value, str) and value != "" and value.isprintable()


def _decode_segment(segment: str) -> bytes:
    # Strict base64url: no padding, no stray characters, no unused bits set,
    # so that one token has one encoding.
    if len(segment) % 4 == 1 or not _BASE64URL.fullmatch(segment):
        raise AssertionRejected("malformed", "a segment is not base64url")
    try:
        data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except binascii.Error as exc:
        raise AssertionRejected("malformed", "a segment is not base64url") from exc
    if _encode_segment(data) != segment.encode("ascii"):
        raise AssertionRejected("malformed", "a segment is not canonical base64url")

    return data


def _decode_object(segment: str) -> dict[str, Any]:
    data = _decode_segment(segment)
    try:
        value = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_unique_members,
            parse_float=_finite_float,
            parse_constant=_refuse_constant,
        )
    except (ValueError, RecursionError) as exc:
        raise AssertionRejected("malformed", "a segment is not valid JSON") from exc
    if not isinstance(value, dict):
        raise AssertionRejected("malformed", "a segment is not a JSON object")

    return value


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members = dict(pairs)
    if len(members) != len(pairs):
        raise ValueError("duplicate member name")

    return members


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")

    return value


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _encode_segment(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


_compact = json.JSONEncoder(separators=(",", ":")).encode


def _encode_object(value: dict[str, Any]) -> bytes:
    return _encode_segment(_compact(value).encode("ascii"))


@functools.lru_cache(maxsize=4096)
def _header_segment(alg: str, kid: str | None, explicit_typ: bool) -> bytes:
    """The encoded protected header: the same for every assertion of a key."""
    header: dict[str, str] = {"alg": alg}
    if kid is not None:
        header["kid"] = kid
    if explicit_typ:
        header["typ"] = EXPLICIT_TYP

    return _encode_object(header)
