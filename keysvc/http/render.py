"""Domain records as the JSON the API returns."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from keysvc.models import Client, Event, KeyRecord


def timestamp(value: datetime | None) -> str | None:
    if value is None:
        return None

    return value.isoformat().replace("+00:00", "Z")


def client(record: Client) -> dict[str, Any]:
    policy = record.policy
    return {
        "client_id": record.client_id,
        "auth_method": record.auth_method.value,
        "key_source": record.key_source.value,
        "alg": policy.alg,
        "key_size": policy.key_size,
        "rotation_period_seconds": policy.rotation_period_seconds,
        "prepublish_period_seconds": policy.prepublish_period_seconds,
        "grace_period_seconds": policy.grace_period_seconds,
        "jwks_uri": record.jwks_uri,
        "jwks_url": f"/clients/{record.client_id}/jwks.json",
        "created_at": timestamp(record.created_at),
        "updated_at": timestamp(record.updated_at),
    }


def key(record: KeyRecord) -> dict[str, Any]:
    # public_jwk was built by keys.public_jwk() and checked by the schema's
    # constraint; KeyRecord.sealed is never rendered.
    return {
        "kid": record.kid,
        "alg": record.alg,
        "state": record.state.value,
        "origin": record.origin,
        "public_jwk": record.public_jwk,
        "created_at": timestamp(record.created_at),
        "published_at": timestamp(record.published_at),
        "activated_at": timestamp(record.activated_at),
        "retired_at": timestamp(record.retired_at),
        "ended_at": timestamp(record.ended_at),
    }


def event(record: Event) -> dict[str, Any]:
    return {
        "event_id": record.event_id,
        "kind": record.kind,
        "kid": record.kid,
        "actor": record.actor,
        "detail": record.detail,
        "at": timestamp(record.at),
    }
