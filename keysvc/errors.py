"""The one exception tree of keysvc.

Every error the service raises on purpose derives from :class:`KeysvcError`.
Each class carries a short machine ``code`` and the HTTP ``status`` it maps to,
so the HTTP layer turns any of them into one RFC 9457 problem document without
knowing the domain. A ``detail`` is written for the caller: it never holds a
token, a secret, a KEK or key material.
"""

from __future__ import annotations

from typing import Any, ClassVar

PROBLEM_BASE = "urn:keysvc:problem:"


class KeysvcError(Exception):
    """Root of every error keysvc raises on purpose."""

    code: ClassVar[str] = "internal"
    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    @property
    def type_uri(self) -> str:
        return PROBLEM_BASE + self.code


class ConfigError(KeysvcError):
    """A setting is missing or does not parse; the message names the variable."""

    code = "config"
    title = "Configuration error"


class InvalidRequest(KeysvcError):
    """The request is malformed: bad JSON, unknown fields, wrong types."""

    code = "invalid_request"
    status = 400
    title = "Invalid request"


class InvalidPolicy(InvalidRequest):
    """A client policy (algorithm, key size, periods) is not acceptable."""

    code = "invalid_policy"
    title = "Invalid key policy"


class InvalidKey(InvalidRequest):
    """A JWK brought by a caller is not an acceptable public signing key."""

    code = "invalid_key"
    status = 422
    title = "Invalid key"


class InvalidJwksUri(InvalidRequest):
    """A ``jwks_uri`` fails the scheme or address checks."""

    code = "invalid_jwks_uri"
    status = 422
    title = "Invalid jwks_uri"


class Unauthorized(KeysvcError):
    """No credential, or one that matches nothing."""

    code = "unauthorized"
    status = 401
    title = "Unauthorized"


class Forbidden(KeysvcError):
    """A valid credential that may not act on this resource."""

    code = "forbidden"
    status = 403
    title = "Forbidden"


class NotFound(KeysvcError):
    code = "not_found"
    status = 404
    title = "Not found"


class MethodNotAllowed(KeysvcError):
    code = "method_not_allowed"
    status = 405
    title = "Method not allowed"


class NotAcceptable(KeysvcError):
    code = "not_acceptable"
    status = 406
    title = "Not acceptable"


class Conflict(KeysvcError):
    """The request contradicts the current state; may carry ``retry_after``."""

    code = "conflict"
    status = 409
    title = "Conflict"

    def __init__(
        self, detail: str, *, retry_after: int | None = None, **extra: Any
    ) -> None:
        super().__init__(detail, **extra)
        self.retry_after = retry_after


class TooYoung(Conflict):
    """A manual rotation while the ``next`` key is younger than prepublish."""

    code = "next_key_too_young"
    title = "Next key not yet published long enough"


class PayloadTooLarge(KeysvcError):
    code = "payload_too_large"
    status = 413
    title = "Payload too large"


class UnsupportedMediaType(KeysvcError):
    code = "unsupported_media_type"
    status = 415
    title = "Unsupported media type"


class RateLimited(KeysvcError):
    code = "rate_limited"
    status = 429
    title = "Too many requests"

    def __init__(self, detail: str, *, retry_after: int, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.retry_after = retry_after


class Unavailable(KeysvcError):
    """A dependency (the database, an upstream) cannot answer now."""

    code = "unavailable"
    status = 503
    title = "Service unavailable"

    def __init__(
        self, detail: str, *, retry_after: int | None = None, **extra: Any
    ) -> None:
        super().__init__(detail, **extra)
        self.retry_after = retry_after


class UpstreamFailed(Unavailable):
    """A client's ``jwks_uri`` could not be fetched, or its answer was refused.

    ``outcome`` is the short label of the failure (``timeout``, ``refused``,
    ``invalid``, ...) that the fetch metrics count.
    """

    code = "upstream_failed"
    title = "Client-hosted JWKS unavailable"

    def __init__(
        self, detail: str, *, outcome: str, retry_after: int | None = None
    ) -> None:
        super().__init__(detail, retry_after=retry_after)
        self.outcome = outcome


class DatabaseUnavailable(Unavailable):
    """PostgreSQL cannot answer now: down, restarting, or out of connections."""

    code = "database_unavailable"


class StatementFailed(KeysvcError):
    """PostgreSQL refused a statement inside a savepoint (its SQLSTATE named)."""

    code = "statement_failed"


class UnsealError(KeysvcError):
    """A sealed private part cannot be opened: wrong row, wrong or unknown KEK."""

    code = "unseal_failed"
    title = "Key material unavailable"

    def __init__(self, detail: str, *, kid: str) -> None:
        super().__init__(detail, kid=kid)
        self.kid = kid


class MigrationError(KeysvcError):
    """The database schema cannot be brought to this code's version."""

    code = "migration"
    title = "Migration error"


class AssertionRejected(KeysvcError):
    """A client assertion failed one verification check.

    ``/verify`` answers these as ``200 {"valid": false, ...}``, not as a problem:
    the verifier asked a question and this is the answer. ``reason`` is a short
    code for the verifier and the metrics (``expired``, ``replayed``, ...); the
    detail never quotes a key or the token.
    """

    code = "invalid_client"
    status = 401
    title = "Client assertion rejected"

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail, reason=reason)
        self.reason = reason
