"""A client-hosted JWK Set: which of its keys keysvc serves, and for how long.

A document that is not a JWK Set, that holds a key with a private member,
that repeats a kid or holds a key of the client's type that does not parse
is refused whole: it is broken, and serving part of it would hide that.
Keys that are sound but not for this client (another ``use``, another
algorithm, a key type keysvc does not verify with, an RSA modulus under 2048
bits) are left out and counted by reason. A key without ``use`` is taken as a
signing key (RFC 7517 makes ``use`` optional and many clients omit it); a key
without ``alg`` is taken for the client's algorithm if its type fits.

Every key leaves through :func:`keysvc.keys.public_jwk`, with the upstream's
kid (or, if it has none, its RFC 7638 thumbprint).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from keysvc import keys
from keysvc.errors import InvalidKey, UpstreamFailed

MAX_KEYS = 100
MAX_KID_CHARS = 256
# Used when the upstream says nothing about caching, then clamped to bounds.
DEFAULT_TTL_SECONDS = 300
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k", "priv")
_RSA_MIN_BITS = 2048


@dataclass(frozen=True, slots=True)
class KeySet:
    """The public keys keysvc serves for a client, and what it left out."""

    keys: list[dict[str, Any]]
    skipped: dict[str, int]


def parse_key_set(body: bytes, *, alg: str) -> KeySet:
    """Validate a fetched document for a client whose policy is ``alg``."""
    entries = _entries(body)
    for index, entry in enumerate(entries):
        found = [name for name in _PRIVATE_MEMBERS if name in entry]
        if found:
            raise _invalid(
                f"key {_label(entry, index)} carries private members "
                f"({', '.join(found)}); the whole document is refused"
            )
    _refuse_duplicates([entry["kid"] for entry in entries if "kid" in entry])

    accepted, skipped = [], Counter[str]()
    for index, entry in enumerate(entries):
        reason = _left_out(entry, alg)
        if reason is not None:
            skipped[reason] += 1
            continue
        accepted.append(_published(entry, index, alg))
    _refuse_duplicates([key["kid"] for key in accepted])

    return KeySet(accepted, dict(sorted(skipped.items())))


def freshness_seconds(
    *,
    cache_control: str | None,
    expires: str | None,
    date: str | None,
    age: str | None,
    min_seconds: int,
    max_seconds: int,
) -> int:
    """How long a fetched set stays fresh: the upstream's word, within bounds.

    ``s-maxage`` or ``max-age`` (less ``Age``) win over ``Expires``, which
    is read against the upstream's own ``Date`` so that its clock skew does
    not matter; ``no-store`` and ``no-cache`` mean the shortest bound.
    """
    directives = _directives(cache_control)
    ttl: float = DEFAULT_TTL_SECONDS
    if "no-store" in directives or "no-cache" in directives:
        ttl = 0
    elif _seconds(directives.get("s-maxage")) is not None:
        ttl = (_seconds(directives["s-maxage"]) or 0) - (_seconds(age) or 0)
    elif _seconds(directives.get("max-age")) is not None:
        ttl = (_seconds(directives["max-age"]) or 0) - (_seconds(age) or 0)
    elif expires is not None:
        until, now = _http_date(expires), _http_date(date) or datetime.now(UTC)
        # An Expires that does not parse means "already expired" (RFC 9111).
        ttl = (until - now).total_seconds() if until is not None else 0

    return int(min(max(ttl, min_seconds), max_seconds))


def _entries(body: bytes) -> list[dict[str, Any]]:
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise _invalid("the document is not valid JSON") from exc

    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise _invalid("the document is not a JWK Set: it has no 'keys' array")
    entries: list[dict[str, Any]] = document["keys"]
    if len(entries) > MAX_KEYS:
        raise _invalid(f"the JWK Set holds more than {MAX_KEYS} keys")
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise _invalid(f"key #{index} is not a JSON object")
        kid = entry.get("kid", "")
        if not isinstance(kid, str) or len(kid) > MAX_KID_CHARS:
            raise _invalid(f"key #{index} has a kid that is not a short string")

    return entries


def _left_out(entry: dict[str, Any], alg: str) -> str | None:
    """Why a sound key is not one this client signs with, or None to keep it."""
    if entry.get("use", "sig") != "sig":
        return "use"
    ops = entry.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return "use"
    if entry.get("kty") not in ("RSA", "EC", "OKP"):
        return "kty"

    own = entry.get("alg", alg)
    if not isinstance(own, str) or not keys.same_family(own, alg):
        return "alg"
    kty, crv = keys.key_type(alg)
    if entry.get("kty") != kty or (crv is not None and entry.get("crv") != crv):
        return "alg"
    if kty == "RSA" and _rsa_bits(entry) < _RSA_MIN_BITS:
        return "weak"

    return None


def _published(entry: dict[str, Any], index: int, alg: str) -> dict[str, Any]:
    try:
        key = keys.load_public_key(entry)
        published = keys.public_jwk(key, alg=entry.get("alg", alg))
    except (InvalidKey, ValueError) as exc:
        raise _invalid(f"key {_label(entry, index)} is not a usable key") from exc

    if entry.get("kid"):
        published["kid"] = entry["kid"]

    return published


def _rsa_bits(entry: dict[str, Any]) -> int:
    n = entry.get("n")
    if not isinstance(n, str):
        return _RSA_MIN_BITS  # parsing refuses it, and with it the document
    try:
        raw = base64.urlsafe_b64decode(n + "=" * (-len(n) % 4))
    except (ValueError, binascii.Error):
        # Not a modulus at all: parsing refuses it, and with it the document.
        return _RSA_MIN_BITS

    return int.from_bytes(raw, "big").bit_length()


def _refuse_duplicates(kids: list[str]) -> None:
    seen: set[str] = set()
    for kid in kids:
        if kid in seen:
            raise _invalid(f"kid {_quote(kid)} appears twice in the JWK Set")
        seen.add(kid)


def _directives(header: str | None) -> dict[str, str]:
    directives = {}
    for part in (header or "").split(","):
        name, _, value = part.partition("=")
        if name.strip():
            directives[name.strip().lower()] = value.strip().strip('"')

    return directives


def _seconds(value: str | None) -> int | None:
    if value is None or not value.isdigit() or len(value) > 12:
        return None

    return int(value)


def _http_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None

    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _label(entry: dict[str, Any], index: int) -> str:
    kid = entry.get("kid")
    return _quote(kid) if isinstance(kid, str) and kid else f"#{index}"


def _quote(value: str) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _invalid(detail: str) -> UpstreamFailed:
    return UpstreamFailed(detail, outcome="invalid")
