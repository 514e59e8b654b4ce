"""JSON Schemas of the API: request bodies are checked against them, and
``/openapi.json`` is built from the same objects, so the two cannot drift.
"""

from __future__ import annotations

import json
from typing import Any

import fastjsonschema
from aiohttp import web
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from keysvc.assertions import ASSERTION_TYPE
from keysvc.errors import InvalidRequest, UnsupportedMediaType
from keysvc.keys import SIGNING_ALGS

CLIENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._~-]{0,127}$"
KID_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"

Schema = dict[str, Any]

PERIOD: Schema = {
    "description": "seconds, or a number with a unit: 90, '15m', '12h', '30d'",
    "oneOf": [
        {"type": "integer", "minimum": 0, "maximum": 3_153_600_000},
        {"type": "string", "pattern": r"^\s*\d{1,10}[smhdw]?\s*$", "maxLength": 16},
    ],
}

TIMESTAMP: Schema = {"type": "string", "format": "date-time"}
NULLABLE_TIMESTAMP: Schema = {"type": ["string", "null"], "format": "date-time"}

# What a client's policy may say, at creation and in a PATCH alike.
_POLICY: Schema = {
    "alg": {"enum": list(SIGNING_ALGS)},
    "key_size": {"enum": [2048, 3072, 4096]},
    "rotation_period": PERIOD,
    "prepublish_period": PERIOD,
    "grace_period": PERIOD,
    "jwks_uri": {"type": "string", "minLength": 1, "maxLength": 2048},
}

CREATE_CLIENT: Schema = {
    "type": "object",
    "additionalProperties": False,
    "required": ["client_id"],
    "properties": {
        "client_id": {"type": "string", "pattern": CLIENT_ID_PATTERN},
        "auth_method": {"enum": ["private_key_jwt", "client_secret_jwt"]},
        "key_source": {"enum": ["generated", "imported", "remote"]},
        **_POLICY,
    },
}

PATCH_CLIENT: Schema = {
    "type": "object",
    "additionalProperties": False,
    "minProperties": 1,
    "properties": _POLICY,
}

ROTATE: Schema = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"force": {"type": "boolean"}},
}

IMPORT_KEY: Schema = {
    "type": "object",
    "additionalProperties": False,
    "required": ["jwk"],
    "properties": {
        "jwk": {"type": "object", "maxProperties": 16},
        "activate": {"type": "boolean"},
    },
}

PUBLIC_JWK: Schema = {
    "type": "object",
    "required": ["kty", "kid", "use", "alg"],
    "properties": {
        "kty": {"enum": ["RSA", "EC", "OKP"]},
        "kid": {"type": "string"},
        "use": {"const": "sig"},
        "alg": {"type": "string"},
        "crv": {"type": "string"},
        "n": {"type": "string"},
        "e": {"type": "string"},
        "x": {"type": "string"},
        "y": {"type": "string"},
    },
    "not": {
        "anyOf": [
            {"required": [member]} for member in ("d", "p", "q", "dp", "dq", "qi", "k")
        ]
    },
}

JWKS: Schema = {
    "type": "object",
    "required": ["keys"],
    "properties": {"keys": {"type": "array", "items": PUBLIC_JWK}},
}

CLIENT: Schema = {
    "type": "object",
    "required": [
        "client_id", "auth_method", "key_source", "alg", "rotation_period_seconds",
        "prepublish_period_seconds", "grace_period_seconds", "created_at",
    ],
    "properties": {
        "client_id": {"type": "string"},
        "auth_method": {"enum": ["private_key_jwt", "client_secret_jwt"]},
        "key_source": {"enum": ["generated", "imported", "remote"]},
        "alg": {"type": "string"},
        "key_size": {"type": ["integer", "null"]},
        "rotation_period_seconds": {"type": "integer"},
        "prepublish_period_seconds": {"type": "integer"},
        "grace_period_seconds": {"type": "integer"},
        "jwks_uri": {"type": ["string", "null"]},
        "jwks_url": {"type": "string"},
        "created_at": TIMESTAMP,
        "updated_at": TIMESTAMP,
    },
}  # fmt: skip

KEY: Schema = {
    "type": "object",
    "required": ["kid", "alg", "state", "origin", "created_at", "public_jwk"],
    "properties": {
        "kid": {"type": "string"},
        "alg": {"type": "string"},
        "state": {"enum": ["next", "active", "retired", "expired", "revoked"]},
        "origin": {"enum": ["generated", "imported"]},
        "public_jwk": PUBLIC_JWK,
        "created_at": TIMESTAMP,
        "published_at": TIMESTAMP,
        "activated_at": NULLABLE_TIMESTAMP,
        "retired_at": NULLABLE_TIMESTAMP,
        "ended_at": NULLABLE_TIMESTAMP,
    },
}

EVENT: Schema = {
    "type": "object",
    "required": ["event_id", "kind", "actor", "at"],
    "properties": {
        "event_id": {"type": "integer"},
        "kind": {"type": "string"},
        "kid": {"type": ["string", "null"]},
        "actor": {"type": "string"},
        "detail": {"type": "object"},
        "at": TIMESTAMP,
    },
}

PROBLEM: Schema = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "retry_after": {"type": "integer"},
    },
}


# -- client assertions (RFC 7523) ---------------------------------------------

AUDIENCE: Schema = {"type": "string", "minLength": 1, "maxLength": 2048}
VERIFIER_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"

SIGN_ASSERTION: Schema = {
    "type": "object",
    "additionalProperties": False,
    "required": ["audience"],
    "properties": {
        "audience": {
            "oneOf": [
                AUDIENCE,
                {"type": "array", "items": AUDIENCE, "minItems": 1, "maxItems": 10},
            ]
        },
        "lifetime": PERIOD,
        "explicit_typ": {"type": "boolean"},
    },
}

CREATE_VERIFIER: Schema = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "audiences"],
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 200},
        "audiences": {
            "description": "the issuer identifier and the token endpoint URL an "
            "assertion's aud may name, compared as exact strings",
            "type": "array",
            "items": AUDIENCE,
            "minItems": 1,
            "maxItems": 20,
        },
        "require_typ": {"type": "boolean"},
    },
}

VERIFY: Schema = {
    "type": "object",
    "additionalProperties": False,
    "required": ["client_assertion", "client_assertion_type"],
    "properties": {
        "client_assertion": {"type": "string"},
        "client_assertion_type": {"const": ASSERTION_TYPE},
        "audience": AUDIENCE,
        "client_id": {"type": "string", "minLength": 1, "maxLength": 128},
    },
}

VERIFIER: Schema = {
    "type": "object",
    "required": ["verifier_id", "name", "audiences", "require_typ", "created_at"],
    "properties": {
        "verifier_id": {"type": "string"},
        "name": {"type": "string"},
        "audiences": {"type": "array", "items": {"type": "string"}},
        "require_typ": {"type": "boolean"},
        "created_at": TIMESTAMP,
    },
}

SIGNED_ASSERTION: Schema = {
    "type": "object",
    "required": ["client_assertion", "client_assertion_type", "expires_at"],
    "properties": {
        "client_assertion": {"type": "string"},
        "client_assertion_type": {"const": ASSERTION_TYPE},
        "expires_at": TIMESTAMP,
    },
}

VERIFICATION: Schema = {
    "oneOf": [
        {
            "type": "object",
            "required": ["valid", "client_id", "kid", "alg", "expires_at"],
            "properties": {
                "valid": {"const": True},
                "client_id": {"type": "string"},
                "kid": {"type": ["string", "null"]},
                "alg": {"type": "string"},
                "expires_at": TIMESTAMP,
            },
        },
        {
            "type": "object",
            "required": ["valid", "error", "reason"],
            "properties": {
                "valid": {"const": False},
                "error": {"const": "invalid_client"},
                "reason": {"type": "string"},
            },
        },
    ]
}

ROTATED_SECRET: Schema = {
    "type": "object",
    "required": ["client_secret", "secret_id", "previous_valid_until"],
    "properties": {
        "client_secret": {"type": "string"},
        "secret_id": {"type": "string"},
        "previous_valid_until": NULLABLE_TIMESTAMP,
    },
}


class BodyValidator:
    """Checks a JSON body against a schema, with messages that quote no values.

    A body is accepted by a validator compiled to plain Python (fastjsonschema,
    a few microseconds: this runs on every signing and /verify request); one
    it refuses is judged again by jsonschema, the reference, whose error tree
    names the place and the rule. A test holds the two to the same verdicts.
    """

    def __init__(self, schema: Schema) -> None:
        Draft202012Validator.check_schema(schema)
        self._validator = Draft202012Validator(schema)
        self._fast = fastjsonschema.compile(schema, use_formats=False)

    def __call__(self, body: Any) -> dict[str, Any]:
        try:
            self._fast(body)
        except (fastjsonschema.JsonSchemaException, RecursionError):
            error = next(iter(self._validator.iter_errors(body)), None)
            if error is not None:
                raise InvalidRequest(_describe(error)) from None
        if not isinstance(body, dict):
            raise InvalidRequest("the body must be a JSON object")

        return body


def _describe(error: ValidationError) -> str:
    # The instance may be a token or a key: name the place and the rule only.
    best = error
    while best.context:
        best = min(best.context, key=lambda e: len(e.path))
    where = "/".join(str(p) for p in best.absolute_path) or "body"
    rule = best.validator
    schema = best.schema if isinstance(best.schema, dict) else {}
    value: Any = best.validator_value
    if rule == "additionalProperties":
        extra = sorted(
            set(best.instance) - set(schema.get("properties", {}))
            if isinstance(best.instance, dict)
            else []
        )
        return f"{where}: unknown field(s) {', '.join(repr(e[:40]) for e in extra)}"
    if rule == "required":
        missing = [
            r for r in value if not isinstance(best.instance, dict)
            or r not in best.instance
        ]  # fmt: skip
        return f"{where}: missing required field(s) {', '.join(missing)}"
    if rule == "enum":
        return f"{where}: must be one of {', '.join(map(str, value))}"
    if rule == "type":
        return f"{where}: must be of type {value}"
    if rule == "pattern":
        return f"{where}: must match {value}"
    if rule == "oneOf":
        return f"{where}: not a valid value ({schema.get('description', '')})"

    return f"{where}: fails the {rule} rule ({value})"


async def read_json(request: web.Request, validator: BodyValidator) -> dict[str, Any]:
    """Read, parse and validate a JSON request body; an empty body is ``{}``."""
    raw = await request.read()
    if not raw.strip():
        return validator({})
    media = request.content_type
    if media != "application/json" and not media.endswith("+json"):
        raise UnsupportedMediaType("send the body as application/json")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InvalidRequest("the body is not valid JSON") from exc

    return validator(body)
