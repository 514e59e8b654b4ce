"""The OpenAPI 3.1 document at ``/openapi.json``, built from the same schemas
that validate request bodies.
"""

from __future__ import annotations

from typing import Any

from keysvc import __version__
from keysvc.http import schemas as s

Operation = dict[str, Any]

_PROBLEM_CONTENT = {"application/problem+json": {"schema": s.PROBLEM}}
_REASONS = {
    "400": "Malformed request",
    "401": "Missing or invalid bearer token",
    "403": "The token may not act on this resource",
    "404": "No such client or key",
    "406": "No acceptable media type",
    "409": "Conflicts with the current state (Retry-After when it will pass)",
    "413": "Body too large",
    "415": "Body is not JSON",
    "422": "A well-formed value that cannot be accepted",
    "429": "Too many requests (Retry-After)",
    "503": "The database, or a client's jwks_uri, is unavailable (Retry-After)",
}
_SECONDS = {"type": "string", "pattern": r"^\d+$"}
# Headers a problem carries: always for 401 and 429, where known for 409 and 503.
_PROBLEM_HEADERS = {
    "401": {"WWW-Authenticate": {"required": True, "schema": {"type": "string"}}},
    "409": {"Retry-After": {"schema": _SECONDS}},
    "429": {"Retry-After": {"required": True, "schema": _SECONDS}},
    "503": {"Retry-After": {"schema": _SECONDS}},
}

_CLIENT_ID = {
    "name": "client_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": s.CLIENT_ID_PATTERN},
}
_KID = {
    "name": "kid",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": s.KID_PATTERN},
}
_VERIFIER_ID = {
    "name": "verifier_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": s.VERIFIER_ID_PATTERN},
}
_LIMIT = {
    "name": "limit",
    "in": "query",
    "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 100},
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }


def _op(
    summary: str,
    responses: dict[str, Any],
    *,
    problems: tuple[str, ...],
    auth: str | None = None,
    body: dict[str, Any] | None = None,
    params: list[dict[str, Any]] | None = None,
) -> Operation:
    op: Operation = {"summary": summary, "responses": dict(responses)}
    if auth is not None:
        op["security"] = [{auth: []}]
        problems = ("401", "403", *problems)
    if body is not None:
        # An empty body reads as {}: optional only where {} is a valid body.
        op["requestBody"] = {
            "required": bool(body.get("required")),
            "content": {"application/json": {"schema": body}},
        }
        problems = ("400", "413", "415", *problems)
    problems = (*problems, "503")
    for code in sorted(set(problems)):
        op["responses"][code] = {
            "description": _REASONS[code],
            "content": _PROBLEM_CONTENT,
        }
        if code in _PROBLEM_HEADERS:
            op["responses"][code]["headers"] = _PROBLEM_HEADERS[code]
    if params:
        op["parameters"] = params

    return op


def _obj(**props: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": list(props), "properties": props}


_NULLABLE_KEY = {"oneOf": [s.KEY, {"type": "null"}]}
_CREATED = {
    "type": "object",
    "required": ["client", "client_token"],
    "properties": {
        "client": s.CLIENT,
        "active": _NULLABLE_KEY,
        "next": _NULLABLE_KEY,
        "client_token": {"type": "string"},
        "client_secret": {"type": "string"},
    },
}
_KEYS_AFTER = {
    "type": "object",
    "properties": {
        "active": _NULLABLE_KEY,
        "next": _NULLABLE_KEY,
        "retired": _NULLABLE_KEY,
    },
}
_READY = {
    "type": "object",
    "required": ["ready", "checks"],
    "properties": {"ready": {"type": "boolean"}, "checks": {"type": "object"}},
}
_JWKS_HEADERS = {
    "ETag": {"required": True, "schema": {"type": "string"}},
    "Cache-Control": {"required": True, "schema": {"type": "string"}},
    "Access-Control-Allow-Origin": {"required": True, "schema": {"const": "*"}},
}
_LOCATION = {"Location": {"required": True, "schema": {"type": "string"}}}


def _preflight(*names: str) -> dict[str, Any]:
    # A preflight looks nothing up: it answers for any path of the route.
    return {
        "summary": "CORS preflight for browsers that revalidate the document",
        "parameters": [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in names
        ],
        "responses": {
            "204": {
                "description": "The methods and headers a browser may send",
                "headers": {
                    "Access-Control-Allow-Origin": _JWKS_HEADERS[
                        "Access-Control-Allow-Origin"
                    ],
                    "Access-Control-Allow-Methods": {
                        "required": True,
                        "schema": {"type": "string"},
                    },
                },
            }
        },
    }


def _jwks_response(schema: dict[str, Any], media: str) -> dict[str, Any]:
    return {
        "200": {
            "description": "Published public keys",
            "headers": _JWKS_HEADERS,
            "content": {
                "application/json": {"schema": schema},
                media: {"schema": schema},
            },
        },
        "304": {
            "description": "Not modified (If-None-Match)",
            "headers": _JWKS_HEADERS,
        },
    }


def paths() -> dict[str, Any]:
    admin, client = "admin", "clientOrAdmin"
    return {
        "/clients/{client_id}/jwks.json": {
            "get": _op(
                "The client's published JWKS",
                _jwks_response(s.JWKS, "application/jwk-set+json"),
                problems=("404", "406"),
                params=[_CLIENT_ID],
            ),
            "options": _preflight("client_id"),
        },
        "/clients/{client_id}/jwks/{kid}": {
            "get": _op(
                "One published key",
                _jwks_response(s.PUBLIC_JWK, "application/jwk+json"),
                problems=("404", "406"),
                params=[_CLIENT_ID, _KID],
            ),
            "options": _preflight("client_id", "kid"),
        },
        "/clients": {
            "post": _op(
                "Register a client",
                {
                    "201": _json(_CREATED, "The client, its first keys, its token")
                    | {"headers": _LOCATION}
                },
                problems=("409", "422"),
                auth=admin,
                body=s.CREATE_CLIENT,
            ),
            "get": _op(
                "List clients",
                {
                    "200": _json(
                        _obj(
                            clients={"type": "array", "items": s.CLIENT},
                            next_cursor={"type": ["string", "null"]},
                        ),
                        "A page of clients",
                    )
                },
                problems=("400",),
                auth=admin,
                params=[
                    _LIMIT,
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                ],
            ),
        },
        "/clients/{client_id}": {
            "get": _op(
                "A client",
                {"200": _json(_obj(client=s.CLIENT), "The client")},
                problems=("404",),
                auth=admin,
                params=[_CLIENT_ID],
            ),
            "patch": _op(
                "Change a client's policy",
                {"200": _json(_obj(client=s.CLIENT), "The client after the change")},
                problems=("404", "409", "422"),
                auth=admin,
                body=s.PATCH_CLIENT,
                params=[_CLIENT_ID],
            ),
            "delete": _op(
                "Delete a client and its keys",
                {"204": {"description": "Deleted"}},
                problems=("404",),
                auth=admin,
                params=[_CLIENT_ID],
            ),
        },
        "/clients/{client_id}/events": {
            "get": _op(
                "The client's audit trail",
                {
                    "200": _json(
                        _obj(
                            events={"type": "array", "items": s.EVENT},
                            next_after={"type": ["integer", "null"]},
                        ),
                        "Events, oldest first",
                    )
                },
                problems=("400", "404"),
                auth=admin,
                params=[
                    _CLIENT_ID,
                    _LIMIT,
                    {
                        "name": "after",
                        "in": "query",
                        "schema": {
                            "type": "integer",
                            "minimum": 0,
                            "maximum": 10**18 - 1,
                        },
                    },
                ],
            )
        },
        "/clients/{client_id}/keys": {
            "get": _op(
                "Every key of the client, without private members",
                {"200": _json(_obj(keys={"type": "array", "items": s.KEY}), "Keys")},
                problems=("404",),
                auth=client,
                params=[_CLIENT_ID],
            ),
            "post": _op(
                "Import a public key",
                {"201": _json(_obj(key=s.KEY), "The imported key")},
                problems=("404", "409", "422"),
                auth=client,
                body=s.IMPORT_KEY,
                params=[_CLIENT_ID],
            ),
        },
        "/clients/{client_id}/keys/rotate": {
            "post": _op(
                "Promote the next key",
                {"201": _json(_KEYS_AFTER, "The keys after the rotation")},
                problems=("404", "409", "429"),
                auth=client,
                body=s.ROTATE,
                params=[_CLIENT_ID],
            )
        },
        "/clients/{client_id}/keys/{kid}/revoke": {
            "post": _op(
                "Revoke a key at once",
                {"200": _json(_obj(key=s.KEY), "The revoked key")},
                problems=("404", "409"),
                auth=client,
                body={"type": "object", "additionalProperties": False},
                params=[_CLIENT_ID, _KID],
            )
        },
        "/clients/{client_id}/assertions": {
            "post": _op(
                "A client assertion signed by the active key (or the secret, HS256)",
                {"200": _json(s.SIGNED_ASSERTION, "The assertion, shown this once")},
                problems=("404", "409", "429"),
                auth=client,
                body=s.SIGN_ASSERTION,
                params=[_CLIENT_ID],
            )
        },
        "/clients/{client_id}/secret/rotate": {
            "post": _op(
                "A new secret for a client_secret_jwt client; the old one in grace",
                {"201": _json(s.ROTATED_SECRET, "The new secret, shown this once")},
                problems=("404", "409"),
                auth=client,
                body={"type": "object", "additionalProperties": False},
                params=[_CLIENT_ID],
            )
        },
        "/verifiers": {
            "post": _op(
                "Register a verifier (an authorization server) and its audiences",
                {
                    "201": _json(
                        _obj(verifier=s.VERIFIER, verifier_token={"type": "string"}),
                        "The verifier and its token, shown this once",
                    )
                },
                problems=(),
                auth=admin,
                body=s.CREATE_VERIFIER,
            ),
            "get": _op(
                "List verifiers",
                {
                    "200": _json(
                        _obj(verifiers={"type": "array", "items": s.VERIFIER}),
                        "Every verifier, oldest first",
                    )
                },
                problems=(),
                auth=admin,
            ),
        },
        "/verifiers/{verifier_id}": {
            "delete": _op(
                "Delete a verifier: its token stops working",
                {"204": {"description": "Deleted"}},
                problems=("404",),
                auth=admin,
                params=[_VERIFIER_ID],
            )
        },
        "/verify": {
            "post": _op(
                "Verify a client assertion (RFC 7523 §3, RFC 8725)",
                {
                    "200": _json(
                        s.VERIFICATION,
                        "The verdict: valid, or refused with the reason",
                    )
                },
                # 429 once a per-verifier limit is configured (the admit seam).
                problems=("429",),
                auth="verifier",
                body=s.VERIFY,
            )
        },
        "/healthz": {
            "get": {
                "summary": "The process answers",
                "responses": {"200": _json({"type": "object"}, "Alive")},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Database reachable and migrated, listener connected",
                "responses": {
                    "200": _json(_READY, "Ready"),
                    "503": _json(_READY, "Not ready"),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "Text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    }


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "keysvc",
            "version": __version__,
            "description": "Key management for OAuth client authentication with "
            "signed JWTs (RFC 7523).",
        },
        "paths": paths(),
        "components": {
            "securitySchemes": {
                "admin": {"type": "http", "scheme": "bearer"},
                "clientOrAdmin": {"type": "http", "scheme": "bearer"},
                "verifier": {"type": "http", "scheme": "bearer"},
            }
        },
    }
