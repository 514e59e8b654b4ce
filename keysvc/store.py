"""Every SQL statement keysvc runs against its own tables.

:class:`Store` answers reads on the pool; :meth:`Store.transaction` yields a
:class:`Tx` whose methods the lifecycle composes into one atomic change. The
domain decides, this module only executes: no policy is decided here.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from keysvc.db import translated
from keysvc.models import (
    AuthMethod,
    Client,
    Event,
    KeyRecord,
    KeySource,
    KeyState,
    Policy,
)

_CLIENT_COLUMNS = """
    client_id, auth_method, key_source, alg, key_size, rotation_period_seconds,
    prepublish_period_seconds, grace_period_seconds, jwks_uri, token_hash,
    created_at, updated_at
"""
_KEY_COLUMNS = """
    client_id, kid, alg, state, origin, public_jwk, created_at, published_at,
    activated_at, retired_at, ended_at
"""


@dataclass(frozen=True, slots=True)
class NewKey:
    """A key about to be stored; ``sealed`` is None for an imported public key."""

    kid: str
    alg: str
    state: KeyState
    origin: str
    public_jwk: dict[str, Any]
    kek_id: str | None = None
    sealed: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class PublishedSet:
    """What a JWKS document is built from."""

    key_source: KeySource
    prepublish_period_seconds: int
    grace_period_seconds: int
    keys: list[dict[str, Any]]


def _client(row: asyncpg.Record) -> Client:
    return Client(
        client_id=row["client_id"],
        auth_method=AuthMethod(row["auth_method"]),
        key_source=KeySource(row["key_source"]),
        policy=Policy(
            alg=row["alg"],
            key_size=row["key_size"],
            rotation_period_seconds=row["rotation_period_seconds"],
            prepublish_period_seconds=row["prepublish_period_seconds"],
            grace_period_seconds=row["grace_period_seconds"],
        ),
        jwks_uri=row["jwks_uri"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        token_hash=bytes(row["token_hash"]),
    )


def _key(row: asyncpg.Record) -> KeyRecord:
    sealed = row.get("sealed")
    return KeyRecord(
        client_id=row["client_id"],
        kid=row["kid"],
        alg=row["alg"],
        state=KeyState(row["state"]),
        origin=row["origin"],
        public_jwk=row["public_jwk"],
        created_at=row["created_at"],
        published_at=row["published_at"],
        activated_at=row["activated_at"],
        retired_at=row["retired_at"],
        ended_at=row["ended_at"],
        kek_id=row.get("kek_id"),
        sealed=None if sealed is None else bytes(sealed),
    )


class Store:
    """Reads on the pool, and the entry to transactions."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @asynccontextmanager
    async def transaction(self, what: str) -> AsyncIterator[Tx]:
        async with translated(what), self.pool.acquire() as conn:
            async with conn.transaction():
                yield Tx(conn)

    async def ping(self) -> None:
        async with translated("ping"):
            await self.pool.fetchval("SELECT 1")

    async def get_client(self, client_id: str) -> Client | None:
        async with translated("read client"):
            row = await self.pool.fetchrow(
                f"SELECT {_CLIENT_COLUMNS} FROM clients WHERE client_id = $1",
                client_id,
            )

        return None if row is None else _client(row)

    async def client_for_token(self, digest: bytes) -> str | None:
        async with translated("authenticate"):
            value: str | None = await self.pool.fetchval(
                "SELECT client_id FROM clients WHERE token_hash = $1", digest
            )

        return value

    async def list_clients(self, *, after: str | None, limit: int) -> list[Client]:
        async with translated("list clients"):
            rows = await self.pool.fetch(
                f"SELECT {_CLIENT_COLUMNS} FROM clients"
                " WHERE $1::text IS NULL OR client_id > $1"
                " ORDER BY client_id LIMIT $2",
                after,
                limit,
            )

        return [_client(row) for row in rows]

    async def list_keys(self, client_id: str) -> list[KeyRecord]:
        async with translated("list keys"):
            rows = await self.pool.fetch(
                f"SELECT {_KEY_COLUMNS} FROM keys WHERE client_id = $1"
                " ORDER BY created_at, kid",
                client_id,
            )

        return [_key(row) for row in rows]

    async def published_set(self, client_id: str) -> PublishedSet | None:
        """The client's published public keys, active first, or None if unknown."""
        async with translated("read JWKS"):
            rows = await self.pool.fetch(
                """
                SELECT c.key_source, c.prepublish_period_seconds,
                       c.grace_period_seconds, k.public_jwk
                FROM clients c
                LEFT JOIN keys k ON k.client_id = c.client_id
                    AND k.state IN ('active', 'next', 'retired')
                WHERE c.client_id = $1
                ORDER BY array_position(ARRAY['active', 'next', 'retired'], k.state),
                         k.published_at DESC, k.kid
                """,
                client_id,
            )
        if not rows:
            return None

        first = rows[0]
        return PublishedSet(
            key_source=KeySource(first["key_source"]),
            prepublish_period_seconds=first["prepublish_period_seconds"],
            grace_period_seconds=first["grace_period_seconds"],
            keys=[row["public_jwk"] for row in rows if row["public_jwk"] is not None],
        )

    async def signing_key(self, client_id: str) -> KeyRecord | None:
        """The active key with its sealed private part, if the client has one."""
        async with translated("read signing key"):
            row = await self.pool.fetchrow(
                f"SELECT {_KEY_COLUMNS}, kek_id, sealed FROM keys"
                " WHERE client_id = $1 AND state = 'active'",
                client_id,
            )

        return None if row is None else _key(row)

    async def events(
        self, client_id: str, *, after: int | None, limit: int
    ) -> list[Event]:
        async with translated("read events"):
            rows = await self.pool.fetch(
                "SELECT event_id, client_id, kind, kid, actor, detail, at FROM events"
                " WHERE client_id = $1 AND ($2::bigint IS NULL OR event_id > $2)"
                " ORDER BY event_id LIMIT $3",
                client_id,
                after,
                limit,
            )

        return [Event(**dict(row)) for row in rows]

    async def sealed_keys(
        self, *, after: tuple[str, str] | None, limit: int
    ) -> list[KeyRecord]:
        """Keys that still hold a sealed private part, in a stable order."""
        client_id, kid = after if after else ("", "")
        async with translated("list sealed keys"):
            rows = await self.pool.fetch(
                f"SELECT {_KEY_COLUMNS}, kek_id, sealed FROM keys"
                " WHERE sealed IS NOT NULL AND (client_id, kid) > ($1, $2)"
                " ORDER BY client_id, kid LIMIT $3",
                client_id,
                kid,
                limit,
            )

        return [_key(row) for row in rows]


class Tx:
    """Statements inside one transaction; rows read here are locked where noted."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def now(self) -> datetime:
        """The database clock, which every replica shares."""
        value: datetime = await self.conn.fetchval("SELECT now()")
        return value

    async def insert_client(
        self,
        *,
        client_id: str,
        auth_method: str,
        key_source: str,
        policy: Policy,
        jwks_uri: str | None,
        token_hash: bytes,
    ) -> Client:
        row = await self.conn.fetchrow(
            f"""
            INSERT INTO clients (client_id, auth_method, key_source, alg, key_size,
                rotation_period_seconds, prepublish_period_seconds,
                grace_period_seconds, jwks_uri, token_hash)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
            RETURNING {_CLIENT_COLUMNS}
            """,
            client_id,
            auth_method,
            key_source,
            policy.alg,
            policy.key_size,
            policy.rotation_period_seconds,
            policy.prepublish_period_seconds,
            policy.grace_period_seconds,
            jwks_uri,
            token_hash,
        )
        return _client(row)

    async def lock_client(self, client_id: str) -> Client | None:
        """Read a client and lock its row: changes to one client's keys queue up."""
        row = await self.conn.fetchrow(
            f"SELECT {_CLIENT_COLUMNS} FROM clients WHERE client_id = $1 FOR UPDATE",
            client_id,
        )
        return None if row is None else _client(row)

    async def update_client(self, client_id: str, changes: dict[str, Any]) -> Client:
        columns = list(changes)
        assignments = ", ".join(f"{c} = ${i}" for i, c in enumerate(columns, start=2))
        row = await self.conn.fetchrow(
            f"UPDATE clients SET {assignments}, updated_at = now()"
            f" WHERE client_id = $1 RETURNING {_CLIENT_COLUMNS}",
            client_id,
            *changes.values(),
        )
        return _client(row)

    async def delete_client(self, client_id: str) -> None:
        await self.conn.execute("DELETE FROM clients WHERE client_id = $1", client_id)

    async def live_keys(self, client_id: str) -> dict[KeyState, list[KeyRecord]]:
        """The client's published keys by state (call after :meth:`lock_client`)."""
        rows = await self.conn.fetch(
            f"SELECT {_KEY_COLUMNS} FROM keys"
            " WHERE client_id = $1 AND state IN ('next', 'active', 'retired')"
            " ORDER BY published_at",
            client_id,
        )
        by_state: dict[KeyState, list[KeyRecord]] = {}
        for row in rows:
            key = _key(row)
            by_state.setdefault(key.state, []).append(key)

        return by_state

    async def get_key(self, client_id: str, kid: str) -> KeyRecord | None:
        row = await self.conn.fetchrow(
            f"SELECT {_KEY_COLUMNS} FROM keys WHERE client_id = $1 AND kid = $2",
            client_id,
            kid,
        )
        return None if row is None else _key(row)

    async def insert_keys(self, client_id: str, keys: Sequence[NewKey]) -> None:
        for key in keys:
            await self.conn.execute(
                """
                INSERT INTO keys (client_id, kid, alg, state, origin, public_jwk,
                    kek_id, sealed, activated_at)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8,
                    CASE WHEN $4 = 'active' THEN now() END)
                """,
                client_id,
                key.kid,
                key.alg,
                key.state.value,
                key.origin,
                key.public_jwk,
                key.kek_id,
                key.sealed,
            )

    async def retire(self, client_id: str, kid: str) -> None:
        await self.conn.execute(
            "UPDATE keys SET state = 'retired', retired_at = now()"
            " WHERE client_id = $1 AND kid = $2 AND state = 'active'",
            client_id,
            kid,
        )

    async def activate(self, client_id: str, kid: str) -> None:
        await self.conn.execute(
            "UPDATE keys SET state = 'active', activated_at = now()"
            " WHERE client_id = $1 AND kid = $2 AND state = 'next'",
            client_id,
            kid,
        )

    async def end(self, client_id: str, kid: str, state: KeyState) -> None:
        """Expire or revoke a key, destroying its private part in the same write."""
        await self.conn.execute(
            "UPDATE keys SET state = $3, ended_at = now(), sealed = NULL,"
            " kek_id = NULL WHERE client_id = $1 AND kid = $2",
            client_id,
            kid,
            state.value,
        )

    async def reseal(
        self, client_id: str, kid: str, kek_id: str, sealed: bytes
    ) -> bool:
        status = await self.conn.execute(
            "UPDATE keys SET kek_id = $3, sealed = $4"
            " WHERE client_id = $1 AND kid = $2 AND sealed IS NOT NULL",
            client_id,
            kid,
            kek_id,
            sealed,
        )
        return bool(status == "UPDATE 1")

    async def sealed_part(self, client_id: str, kid: str) -> tuple[str, bytes] | None:
        row = await self.conn.fetchrow(
            "SELECT kek_id, sealed FROM keys WHERE client_id = $1 AND kid = $2"
            " AND sealed IS NOT NULL FOR UPDATE",
            client_id,
            kid,
        )
        return None if row is None else (row["kek_id"], bytes(row["sealed"]))

    async def notify(self, channel: str, payload: str) -> None:
        """Queue a NOTIFY; PostgreSQL delivers it only if the transaction commits."""
        await self.conn.execute("SELECT pg_notify($1, $2)", channel, payload)

    async def record(
        self,
        client_id: str,
        kind: str,
        *,
        actor: str,
        kid: str | None = None,
        **detail: Any,
    ) -> None:
        """Append to the audit trail, in the same transaction as the change."""
        await self.conn.execute(
            "INSERT INTO events (client_id, kind, kid, actor, detail)"
            " VALUES ($1, $2, $3, $4, $5)",
            client_id,
            kind,
            kid,
            actor,
            json.loads(json.dumps(detail, default=str)),
        )
