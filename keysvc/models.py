"""The records keysvc keeps: clients, their keys, and audit events."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class KeyState(StrEnum):
    NEXT = "next"
    ACTIVE = "active"
    RETIRED = "retired"
    EXPIRED = "expired"
    REVOKED = "revoked"


PUBLISHED_STATES = (KeyState.ACTIVE, KeyState.NEXT, KeyState.RETIRED)


class KeySource(StrEnum):
    GENERATED = "generated"
    IMPORTED = "imported"
    REMOTE = "remote"


class AuthMethod(StrEnum):
    PRIVATE_KEY_JWT = "private_key_jwt"
    CLIENT_SECRET_JWT = "client_secret_jwt"


@dataclass(frozen=True, slots=True)
class Policy:
    """How a client's keys are made and how long each phase lasts."""

    alg: str
    key_size: int | None
    rotation_period_seconds: int
    prepublish_period_seconds: int
    grace_period_seconds: int


@dataclass(frozen=True, slots=True)
class Client:
    client_id: str
    auth_method: AuthMethod
    key_source: KeySource
    policy: Policy
    jwks_uri: str | None
    created_at: datetime
    updated_at: datetime
    token_hash: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One key of a client; ``sealed`` is its private part, when keysvc holds it."""

    client_id: str
    kid: str
    alg: str
    state: KeyState
    origin: str
    public_jwk: dict[str, Any]
    created_at: datetime
    published_at: datetime
    activated_at: datetime | None
    retired_at: datetime | None
    ended_at: datetime | None
    kek_id: str | None = None
    sealed: bytes | None = field(default=None, repr=False)

    @property
    def has_private_part(self) -> bool:
        return self.sealed is not None


@dataclass(frozen=True, slots=True)
class Event:
    event_id: int
    client_id: str
    kind: str
    kid: str | None
    actor: str
    detail: dict[str, Any]
    at: datetime
