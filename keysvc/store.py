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

from keysvc.db import CONNECTION_FAULTS, Connection, translated
from keysvc.errors import KeysvcError, StatementFailed
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

# The same columns, qualified, for queries that join keys k to clients.
_VERIFIER_COLUMNS = "verifier_id, name, audiences, require_typ, created_at"
_KEY_COLUMNS_OF_K = ", ".join(f"k.{c.strip()}" for c in _KEY_COLUMNS.split(","))


# The timestamp column a key's move into each state sets.
_STATE_STAMPS = {KeyState.ACTIVE: "activated_at", KeyState.RETIRED: "retired_at"}

# An audit event about to be written: client id, kind, kid, detail.
AuditEntry = tuple[str, str, str | None, dict[str, Any]]


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


@dataclass(frozen=True, slots=True)
class KeyGauges:
    """What the scheduler's gauges show, read in one round trip."""

    keys_by_state: dict[str, int]
    oldest_active_key_age_seconds: float
    clients_rotation_overdue: int


@dataclass(frozen=True, slots=True)
class OverdueKey:
    """An imported client's active key, older than its rotation period."""

    client_id: str
    kid: str
    overdue_seconds: float


@dataclass(frozen=True, slots=True)
class VerifierRecord:
    """An authorization server allowed to ask ``/verify``, and its audiences."""

    verifier_id: str
    name: str
    audiences: tuple[str, ...]
    require_typ: bool
    created_at: datetime


@dataclass(frozen=True, slots=True)
class SecretRecord:
    """A ``client_secret_jwt`` secret that is still accepted, sealed."""

    secret_id: str
    state: str
    valid_until: datetime | None
    kek_id: str
    sealed: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class VerificationMaterial:
    """What verifying one client's assertions needs, read in one go."""

    client_id: str
    auth_method: AuthMethod
    key_source: KeySource
    alg: str
    public_keys: list[dict[str, Any]]
    secrets: list[SecretRecord]


@dataclass(frozen=True, slots=True)
class SigningMaterial:
    """The key (or secret) a client's assertions are signed with, if any."""

    auth_method: AuthMethod
    kid: str | None
    alg: str | None
    kek_id: str | None
    sealed: bytes | None = field(repr=False)


@dataclass(frozen=True, slots=True)
class JtiOutcome:
    """What the one atomic ``jti`` insert found."""

    live: bool
    fresh: bool
    db_now: float


@dataclass(frozen=True, slots=True)
class RemoteSet:
    """A remote client's jwks_uri and what keysvc last fetched from it.

    ``keys`` is None until a fetch succeeds; ``fresh_seconds`` is what is left
    of its freshness, negative once it is stale. Times are the database's.
    """

    client_id: str
    jwks_uri: str
    alg: str
    keys: list[dict[str, Any]] | None
    upstream_etag: str | None
    fresh_seconds: float
    failures: int
    since_attempt_seconds: float


def _remote_set(row: asyncpg.Record) -> RemoteSet:
    return RemoteSet(
        client_id=row["client_id"],
        jwks_uri=row["jwks_uri"],
        alg=row["alg"],
        keys=row["keys"],
        upstream_etag=row["upstream_etag"],
        fresh_seconds=row["fresh_seconds"] or 0.0,
        failures=row["failures"] or 0,
        since_attempt_seconds=row["since_attempt_seconds"] or 0.0,
    )


# A row fetched from another jwks_uri than the client's is no row at all.
_REMOTE_COLUMNS = """
    c.client_id, c.jwks_uri, c.alg, r.keys, r.upstream_etag, r.failures,
    extract(epoch FROM r.fresh_until - now())::float8 AS fresh_seconds,
    extract(epoch FROM now() - r.attempted_at)::float8 AS since_attempt_seconds
"""


def _verifier(row: asyncpg.Record) -> VerifierRecord:
    return VerifierRecord(
        verifier_id=row["verifier_id"],
        name=row["name"],
        audiences=tuple(row["audiences"]),
        require_typ=row["require_typ"],
        created_at=row["created_at"],
    )


def _one(row: asyncpg.Record | None) -> asyncpg.Record:
    """The row a RETURNING statement must give back."""
    if row is None:
        raise KeysvcError("a write returned no row")

    return row


def _secret(row: asyncpg.Record) -> SecretRecord:
    return SecretRecord(
        secret_id=row["secret_id"],
        state=row["state"],
        valid_until=row["valid_until"],
        kek_id=row["kek_id"],
        sealed=bytes(row["sealed"]),
    )


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


def _row_count(status: str) -> int:
    """The count at the end of a command tag such as ``DELETE 42``."""
    return int(status.rsplit(" ", 1)[-1])


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows of ``width`` values as ``width`` column lists, for ``unnest``."""
    columns: list[list[Any]] = [[] for _ in range(width)]
    for row in rows:
        for column, value in zip(columns, row, strict=True):
            column.append(value)

    return columns


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

    async def schema_version(self) -> int:
        """The highest applied migration; one round trip, for /readyz."""
        async with translated("read schema version"):
            value = await self.pool.fetchval("SELECT max(version) FROM keysvc_schema")

        return int(value or 0)

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

    async def key_gauges(self) -> KeyGauges:
        async with translated("read key gauges"):
            # Aggregates: always exactly one row.
            (row,) = await self.pool.fetch(
                """
                SELECT
                    (SELECT coalesce(jsonb_object_agg(state, n), '{}'::jsonb)
                     FROM (SELECT state, count(*) AS n FROM keys GROUP BY state) s)
                        AS by_state,
                    (SELECT coalesce(extract(epoch FROM now() - min(activated_at)), 0)
                     FROM keys WHERE state = 'active') AS oldest,
                    (SELECT count(*) FROM clients c
                     JOIN keys a ON a.client_id = c.client_id AND a.state = 'active'
                     WHERE a.activated_at
                         <= now() - make_interval(secs => c.rotation_period_seconds))
                        AS overdue
                """
            )

        return KeyGauges(
            keys_by_state={state: int(n) for state, n in row["by_state"].items()},
            oldest_active_key_age_seconds=float(row["oldest"]),
            clients_rotation_overdue=int(row["overdue"]),
        )

    # -- assertions -----------------------------------------------------------

    async def db_now(self) -> float:
        """The database clock, as Unix seconds."""
        async with translated("read clock"):
            value: float = await self.pool.fetchval(
                "SELECT extract(epoch FROM clock_timestamp())::float8"
            )

        return value

    async def verifier_for_token(self, digest: bytes) -> VerifierRecord | None:
        async with translated("authenticate verifier"):
            row = await self.pool.fetchrow(
                f"SELECT {_VERIFIER_COLUMNS} FROM verifiers WHERE token_hash = $1",
                digest,
            )

        return None if row is None else _verifier(row)

    async def list_verifiers(self, *, limit: int) -> list[VerifierRecord]:
        async with translated("list verifiers"):
            rows = await self.pool.fetch(
                f"SELECT {_VERIFIER_COLUMNS} FROM verifiers"
                " ORDER BY created_at, verifier_id LIMIT $1",
                limit,
            )

        return [_verifier(row) for row in rows]

    async def verification_material(
        self, client_id: str
    ) -> VerificationMaterial | None:
        """A client's published keys and accepted secrets, or None if unknown."""
        async with translated("read verification keys"), self.pool.acquire() as conn:
            client = await conn.fetchrow(
                "SELECT auth_method, key_source, alg FROM clients WHERE client_id = $1",
                client_id,
            )
            if client is None:
                return None
            keys = await conn.fetch(
                "SELECT public_jwk FROM keys WHERE client_id = $1"
                " AND state IN ('next', 'active', 'retired')",
                client_id,
            )
            secrets = await conn.fetch(
                "SELECT secret_id, state, valid_until, kek_id, sealed"
                " FROM client_secrets WHERE client_id = $1 AND (state = 'current'"
                " OR (state = 'previous' AND valid_until > now()))",
                client_id,
            )

        return VerificationMaterial(
            client_id=client_id,
            auth_method=AuthMethod(client["auth_method"]),
            key_source=KeySource(client["key_source"]),
            alg=client["alg"],
            public_keys=[row["public_jwk"] for row in keys],
            secrets=[_secret(row) for row in secrets],
        )

    async def signing_material(self, client_id: str) -> SigningMaterial | None:
        """The active key, or the current secret, of a client; None if unknown."""
        async with translated("read signing key"):
            row = await self.pool.fetchrow(
                """
                SELECT c.auth_method,
                       coalesce(k.kid, s.secret_id) AS kid,
                       CASE WHEN k.kid IS NOT NULL THEN k.alg
                            WHEN s.secret_id IS NOT NULL THEN 'HS256' END AS alg,
                       coalesce(k.kek_id, s.kek_id) AS kek_id,
                       coalesce(k.sealed, s.sealed) AS sealed
                FROM clients c
                LEFT JOIN keys k ON k.client_id = c.client_id
                    AND k.state = 'active' AND k.sealed IS NOT NULL
                LEFT JOIN client_secrets s ON s.client_id = c.client_id
                    AND s.state = 'current'
                WHERE c.client_id = $1
                """,
                client_id,
            )
        if row is None:
            return None

        sealed = row["sealed"]
        return SigningMaterial(
            auth_method=AuthMethod(row["auth_method"]),
            kid=row["kid"],
            alg=row["alg"],
            kek_id=row["kek_id"],
            sealed=None if sealed is None else bytes(sealed),
        )

    async def record_jti(
        self,
        client_id: str,
        jti: str,
        *,
        expires_at: float,
        source: str,
        key_id: str | None,
    ) -> JtiOutcome:
        """Record an assertion's ``jti`` once, if its key is still accepted.

        One statement, no transaction around it: the primary key makes the
        insert atomic, so of two replicas inserting the same ``jti`` at once
        exactly one finds it fresh. ``source`` says where the key must still
        be: ``key`` (published), ``secret`` (current or in grace), ``remote``
        (not checked here). A revoked key refuses at once, on every replica.
        """
        async with translated("record jti"):
            row = await self.pool.fetchrow(
                """
                WITH live AS (
                    SELECT 1 FROM keys
                    WHERE $4 = 'key' AND client_id = $1 AND kid = $5
                      AND state IN ('next', 'active', 'retired')
                    UNION ALL
                    SELECT 1 FROM client_secrets
                    WHERE $4 = 'secret' AND client_id = $1 AND secret_id = $5
                      AND (state = 'current'
                           OR (state = 'previous' AND valid_until > now()))
                    UNION ALL
                    SELECT 1 WHERE $4 = 'remote'
                ), recorded AS (
                    INSERT INTO used_jtis (client_id, jti, expires_at)
                    SELECT $1, $2, to_timestamp($3) WHERE EXISTS (SELECT FROM live)
                    ON CONFLICT DO NOTHING
                    RETURNING 1
                )
                SELECT EXISTS (SELECT FROM live) AS live,
                       EXISTS (SELECT FROM recorded) AS fresh,
                       extract(epoch FROM clock_timestamp())::float8 AS db_now
                """,
                client_id,
                jti,
                float(expires_at),
                source,
                key_id,
            )
        if row is None:
            raise KeysvcError("the jti insert returned no row")

        return JtiOutcome(live=row["live"], fresh=row["fresh"], db_now=row["db_now"])

    async def sealed_secrets(
        self, *, after: tuple[str, str] | None, limit: int
    ) -> list[tuple[str, SecretRecord]]:
        """Secrets that still hold a sealed blob, with their client, in order."""
        client_id, secret_id = after if after else ("", "")
        async with translated("list sealed secrets"):
            rows = await self.pool.fetch(
                "SELECT client_id, secret_id, state, valid_until, kek_id, sealed"
                " FROM client_secrets WHERE sealed IS NOT NULL"
                " AND (client_id, secret_id) > ($1, $2)"
                " ORDER BY client_id, secret_id LIMIT $3",
                client_id,
                secret_id,
                limit,
            )

        return [(row["client_id"], _secret(row)) for row in rows]

    # -- remote JWKS ----------------------------------------------------------

    async def remote_set(self, client_id: str) -> RemoteSet | None:
        """A remote client's last fetched set, or None if no such remote client."""
        async with translated("read remote JWKS"):
            row = await self.pool.fetchrow(
                f"SELECT {_REMOTE_COLUMNS} FROM clients c"
                " LEFT JOIN remote_jwks r ON r.client_id = c.client_id"
                " AND r.jwks_uri = c.jwks_uri"
                " WHERE c.client_id = $1 AND c.key_source = 'remote'",
                client_id,
            )

        return None if row is None else _remote_set(row)

    async def count_stale_remote_sets(self) -> int:
        async with translated("count stale remote JWKS"):
            count: int = await self.pool.fetchval(
                "SELECT count(*) FROM remote_jwks r JOIN clients c"
                " ON c.client_id = r.client_id AND c.jwks_uri = r.jwks_uri"
                " WHERE r.fresh_until < now()"
            )

        return count


class Tx:
    """Statements inside one transaction; rows read here are locked where noted."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    @asynccontextmanager
    async def savepoint(self, what: str) -> AsyncIterator[None]:
        """A nested transaction: a failure inside rolls back only its own work.

        A refused statement becomes :class:`StatementFailed`; a lost connection
        still ends the whole transaction.
        """
        try:
            async with self.conn.transaction():
                yield
        except CONNECTION_FAULTS:
            raise
        except asyncpg.PostgresError as exc:
            raise StatementFailed(f"{what}: SQLSTATE {exc.sqlstate}") from exc

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
        return _client(_one(row))

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
        return _client(_one(row))

    async def delete_client(self, client_id: str) -> None:
        await self.conn.execute("DELETE FROM clients WHERE client_id = $1", client_id)

    async def live_keys(self, client_id: str) -> dict[KeyState, list[KeyRecord]]:
        """The client's published keys by state (call after :meth:`lock_client`)."""
        return (await self.live_keys_of([client_id])).get(client_id, {})

    # -- many clients at once, for the scheduler's mass rotations -------------
    # One statement for a whole batch instead of one per client: a batch of
    # hundreds costs a handful of round trips.

    async def lock_claimed_clients(
        self, client_ids: Sequence[str]
    ) -> dict[str, Client]:
        """Lock several clients and clear their rotation claims, in one statement.

        Rows are locked in client-id order, so two batches (or a batch and a
        one-client change, which locks one row) never wait on each other in
        a cycle. Returns the clients that still exist, by id.
        """
        rows = await self.conn.fetch(
            f"""
            UPDATE clients SET rotation_claimed_until = NULL, rotation_claimed_by = NULL
            FROM (
                SELECT client_id AS locked_id FROM clients
                WHERE client_id = ANY($1::text[])
                ORDER BY client_id
                FOR UPDATE
            ) AS locked
            WHERE client_id = locked_id
            RETURNING {_CLIENT_COLUMNS}
            """,
            list(client_ids),
        )
        return {row["client_id"]: _client(row) for row in rows}

    async def live_keys_of(
        self, client_ids: Sequence[str]
    ) -> dict[str, dict[KeyState, list[KeyRecord]]]:
        """The published keys of several clients (locked first): by client
        id, then by state, each list in publication order."""
        rows = await self.conn.fetch(
            f"SELECT {_KEY_COLUMNS} FROM keys"
            " WHERE client_id = ANY($1::text[])"
            " AND state IN ('next', 'active', 'retired')"
            " ORDER BY client_id, published_at",
            list(client_ids),
        )
        by_client: dict[str, dict[KeyState, list[KeyRecord]]] = {}
        for row in rows:
            key = _key(row)
            by_client.setdefault(key.client_id, {}).setdefault(key.state, []).append(
                key
            )

        return by_client

    async def retire_many(self, pairs: Sequence[tuple[str, str]]) -> int:
        """Retire the active key of each (client id, kid); how many changed."""
        return await self._move_many(pairs, KeyState.ACTIVE, KeyState.RETIRED)

    async def activate_many(self, pairs: Sequence[tuple[str, str]]) -> int:
        """Activate the ``next`` key of each (client id, kid); how many changed."""
        return await self._move_many(pairs, KeyState.NEXT, KeyState.ACTIVE)

    async def _move_many(
        self, pairs: Sequence[tuple[str, str]], was: KeyState, becomes: KeyState
    ) -> int:
        stamp = _STATE_STAMPS[becomes]  # a column name of ours, never input
        client_ids, kids = _columns(pairs, 2)
        status = await self.conn.execute(
            f"UPDATE keys k SET state = $3, {stamp} = now()"
            " FROM unnest($1::text[], $2::text[]) AS t(client_id, kid)"
            " WHERE k.client_id = t.client_id AND k.kid = t.kid AND k.state = $4",
            client_ids,
            kids,
            becomes.value,
            was.value,
        )
        return _row_count(status)

    async def insert_next_keys(self, keys: Sequence[tuple[str, NewKey]]) -> None:
        """Insert fresh ``next`` keys, one per (client id, key), in one statement."""
        if any(key.state is not KeyState.NEXT for _, key in keys):
            raise ValueError("insert_next_keys takes next keys only")
        await self.conn.execute(
            """
            INSERT INTO keys (client_id, kid, alg, state, origin, public_jwk,
                kek_id, sealed)
            SELECT client_id, kid, alg, 'next', origin, public_jwk, kek_id, sealed
            FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],
                $5::jsonb[], $6::text[], $7::bytea[])
                AS t(client_id, kid, alg, origin, public_jwk, kek_id, sealed)
            """,
            [client_id for client_id, _ in keys],
            [key.kid for _, key in keys],
            [key.alg for _, key in keys],
            [key.origin for _, key in keys],
            [key.public_jwk for _, key in keys],
            [key.kek_id for _, key in keys],
            [key.sealed for _, key in keys],
        )

    async def record_many(self, events: Sequence[AuditEntry], *, actor: str) -> None:
        """Append (client id, kind, kid, detail) events, in the order given."""
        client_ids, kinds, kids, details = _columns(events, 4)
        await self.conn.execute(
            """
            INSERT INTO events (client_id, kind, kid, actor, detail)
            SELECT client_id, kind, kid, $5, detail
            FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[])
                WITH ORDINALITY AS t(client_id, kind, kid, detail, n)
            ORDER BY n
            """,
            client_ids,
            kinds,
            kids,
            [json.loads(json.dumps(d, default=str)) for d in details],
            actor,
        )

    async def notify_many(self, channel: str, payloads: Sequence[str]) -> None:
        """:meth:`notify` for each payload, in one statement."""
        await self.conn.execute(
            "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p",
            channel,
            list(payloads),
        )

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

    # -- the scheduler's claims ----------------------------------------------
    # Each claim skips rows another transaction holds (SKIP LOCKED), so
    # replicas that scan at once divide the work instead of queueing on it.

    async def claim_due_rotations(
        self, *, limit: int, lease_seconds: int, owner: str
    ) -> list[Client]:
        """Lease generated clients whose active key has outlived its rotation
        period and whose next key has been published for the prepublish period.

        A client another replica holds an unexpired lease on is not due here.
        """
        rows = await self.conn.fetch(
            f"""
            WITH due AS (
                SELECT c.client_id AS due_id
                FROM clients c
                JOIN keys a ON a.client_id = c.client_id AND a.state = 'active'
                JOIN keys n ON n.client_id = c.client_id AND n.state = 'next'
                WHERE c.key_source = 'generated'
                  AND a.activated_at
                      <= now() - make_interval(secs => c.rotation_period_seconds)
                  AND n.published_at
                      <= now() - make_interval(secs => c.prepublish_period_seconds)
                  AND (c.rotation_claimed_until IS NULL
                       OR c.rotation_claimed_until <= now())
                ORDER BY a.activated_at
                LIMIT $1
                FOR UPDATE OF c SKIP LOCKED
            )
            UPDATE clients
            SET rotation_claimed_until = now() + make_interval(secs => $2),
                rotation_claimed_by = $3
            FROM due WHERE client_id = due_id
            RETURNING {_CLIENT_COLUMNS}
            """,
            limit,
            lease_seconds,
            owner,
        )
        return [_client(row) for row in rows]

    async def release_rotation_claims(self, client_ids: Sequence[str]) -> None:
        await self.conn.execute(
            "UPDATE clients SET rotation_claimed_until = NULL,"
            " rotation_claimed_by = NULL"
            " WHERE client_id = ANY($1::text[]) AND rotation_claimed_until IS NOT NULL",
            list(client_ids),
        )

    async def lock_expirable_keys(self, *, limit: int) -> list[KeyRecord]:
        """Retired keys past their client's grace period, key and client locked."""
        rows = await self.conn.fetch(
            f"""
            SELECT {_KEY_COLUMNS_OF_K}
            FROM keys k JOIN clients c ON c.client_id = k.client_id
            WHERE k.state = 'retired'
              AND k.retired_at <= now() - make_interval(secs => c.grace_period_seconds)
            ORDER BY k.retired_at
            LIMIT $1
            FOR UPDATE OF c, k SKIP LOCKED
            """,
            limit,
        )
        return [_key(row) for row in rows]

    async def claim_overdue_reports(self, *, limit: int) -> list[OverdueKey]:
        """Imported clients overdue for rotation, each active key claimed once."""
        rows = await self.conn.fetch(
            """
            WITH overdue AS (
                SELECT c.client_id AS overdue_id, a.kid AS overdue_kid,
                       extract(epoch FROM now() - a.activated_at)
                           - c.rotation_period_seconds AS overdue_seconds
                FROM clients c
                JOIN keys a ON a.client_id = c.client_id AND a.state = 'active'
                WHERE c.key_source = 'imported'
                  AND a.activated_at
                      <= now() - make_interval(secs => c.rotation_period_seconds)
                  AND c.overdue_reported_kid IS DISTINCT FROM a.kid
                ORDER BY a.activated_at
                LIMIT $1
                FOR UPDATE OF c SKIP LOCKED
            )
            UPDATE clients SET overdue_reported_kid = overdue_kid
            FROM overdue WHERE client_id = overdue_id
            RETURNING client_id, overdue_kid, overdue_seconds
            """,
            limit,
        )
        return [
            OverdueKey(row["client_id"], row["overdue_kid"], row["overdue_seconds"])
            for row in rows
        ]

    async def try_lock(self, lock_id: int) -> bool:
        """Take an advisory lock until commit, if no other transaction holds it."""
        taken: bool = await self.conn.fetchval(
            "SELECT pg_try_advisory_xact_lock($1)", lock_id
        )
        return taken

    async def purge_used_jtis(self, *, limit: int) -> int:
        status = await self.conn.execute(
            """
            DELETE FROM used_jtis u
            USING (SELECT client_id, jti FROM used_jtis
                   WHERE expires_at < now() LIMIT $1) old
            WHERE u.client_id = old.client_id AND u.jti = old.jti
            """,
            limit,
        )
        return _row_count(status)

    async def purge_expired_keys(self, *, older_than_seconds: int, limit: int) -> int:
        status = await self.conn.execute(
            """
            DELETE FROM keys k
            USING (SELECT client_id, kid FROM keys
                   WHERE state = 'expired'
                     AND ended_at < now() - make_interval(secs => $1)
                   LIMIT $2) old
            WHERE k.client_id = old.client_id AND k.kid = old.kid
            """,
            older_than_seconds,
            limit,
        )
        return _row_count(status)

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

    # -- assertions -----------------------------------------------------------

    async def insert_secret(
        self, client_id: str, secret_id: str, kek_id: str, sealed: bytes
    ) -> None:
        await self.conn.execute(
            "INSERT INTO client_secrets (client_id, secret_id, state, kek_id, sealed)"
            " VALUES ($1, $2, 'current', $3, $4)",
            client_id,
            secret_id,
            kek_id,
            sealed,
        )

    async def demote_secret(
        self, client_id: str, grace_period_seconds: int
    ) -> datetime | None:
        """Destroy the previous secret, make the current one previous for grace.

        Returns when the demoted secret stops being accepted (None if the
        client had no current secret). Call after :meth:`lock_client`.
        """
        await self.conn.execute(
            "UPDATE client_secrets SET state = 'destroyed', kek_id = NULL,"
            " sealed = NULL, valid_until = NULL, ended_at = now()"
            " WHERE client_id = $1 AND state = 'previous'",
            client_id,
        )
        valid_until: datetime | None = await self.conn.fetchval(
            "UPDATE client_secrets SET state = 'previous',"
            " valid_until = now() + make_interval(secs => $2::bigint)"
            " WHERE client_id = $1 AND state = 'current' RETURNING valid_until",
            client_id,
            grace_period_seconds,
        )
        return valid_until

    async def destroy_expired_secrets(self) -> list[str]:
        """Destroy every previous secret past its grace; return their clients."""
        rows = await self.conn.fetch(
            "UPDATE client_secrets SET state = 'destroyed', kek_id = NULL,"
            " sealed = NULL, valid_until = NULL, ended_at = now()"
            " WHERE state = 'previous' AND valid_until <= now() RETURNING client_id"
        )
        return [row["client_id"] for row in rows]

    async def reseal_secret(
        self, client_id: str, secret_id: str, kek_id: str, sealed: bytes
    ) -> bool:
        status = await self.conn.execute(
            "UPDATE client_secrets SET kek_id = $3, sealed = $4"
            " WHERE client_id = $1 AND secret_id = $2 AND sealed IS NOT NULL",
            client_id,
            secret_id,
            kek_id,
            sealed,
        )
        return bool(status == "UPDATE 1")

    async def insert_verifier(
        self,
        *,
        verifier_id: str,
        name: str,
        audiences: Sequence[str],
        require_typ: bool,
        token_hash: bytes,
    ) -> VerifierRecord:
        row = await self.conn.fetchrow(
            f"""
            INSERT INTO verifiers (verifier_id, name, audiences, require_typ,
                token_hash)
            VALUES ($1, $2, $3, $4, $5)
            RETURNING {_VERIFIER_COLUMNS}
            """,
            verifier_id,
            name,
            list(audiences),
            require_typ,
            token_hash,
        )
        if row is None:
            raise KeysvcError("the verifier insert returned no row")
        return _verifier(row)

    async def delete_verifier(self, verifier_id: str) -> bool:
        status = await self.conn.execute(
            "DELETE FROM verifiers WHERE verifier_id = $1", verifier_id
        )
        return bool(status == "DELETE 1")

    # -- remote JWKS ----------------------------------------------------------

    async def claim_remote_fetch(
        self, client_id: str, *, interval_seconds: float
    ) -> RemoteSet | None:
        """Take the right to fetch a remote client's set now, on every replica.

        Refused (None) while a fetch started less than ``interval_seconds``
        ago; a row left from an earlier jwks_uri is emptied.
        """
        row = await self.conn.fetchrow(
            f"""
            WITH c AS (
                SELECT client_id, jwks_uri, alg FROM clients
                WHERE client_id = $1 AND key_source = 'remote'
            ), r AS (
                INSERT INTO remote_jwks AS r (client_id, jwks_uri)
                SELECT client_id, jwks_uri FROM c
                ON CONFLICT (client_id) DO UPDATE SET
                    attempted_at = now(),
                    jwks_uri = EXCLUDED.jwks_uri,
                    keys = CASE WHEN r.jwks_uri = EXCLUDED.jwks_uri THEN r.keys END,
                    upstream_etag = CASE WHEN r.jwks_uri = EXCLUDED.jwks_uri
                        THEN r.upstream_etag END,
                    fetched_at = CASE WHEN r.jwks_uri = EXCLUDED.jwks_uri
                        THEN r.fetched_at END,
                    fresh_until = CASE WHEN r.jwks_uri = EXCLUDED.jwks_uri
                        THEN r.fresh_until END,
                    failures = CASE WHEN r.jwks_uri = EXCLUDED.jwks_uri
                        THEN r.failures ELSE 0 END
                WHERE r.jwks_uri <> EXCLUDED.jwks_uri
                    OR r.attempted_at <= now() - make_interval(secs => $2)
                RETURNING r.*
            )
            SELECT {_REMOTE_COLUMNS} FROM c JOIN r ON r.client_id = c.client_id
            """,
            client_id,
            interval_seconds,
        )
        return None if row is None else _remote_set(row)

    async def claim_remote_refreshes(
        self,
        *,
        lead_fraction: float,
        interval_seconds: float,
        backoff_cap_seconds: float,
        limit: int,
    ) -> list[RemoteSet]:
        """Claim sets in the last ``lead_fraction`` of their freshness, or failing.

        A failing set is retried after ``interval_seconds`` doubled with each
        failure, up to ``backoff_cap_seconds``. Rows another replica is
        claiming are skipped.
        """
        rows = await self.conn.fetch(
            f"""
            WITH due AS (
                SELECT r.client_id FROM remote_jwks r
                JOIN clients c ON c.client_id = r.client_id
                    AND c.jwks_uri = r.jwks_uri
                WHERE (r.fresh_until IS NULL
                       OR now() >= r.fresh_until
                           - (r.fresh_until - r.fetched_at) * $1::float8)
                  AND r.attempted_at <= now() - make_interval(secs => least(
                      $3::float8, $2::float8 * power(2, least(r.failures, 16))))
                ORDER BY r.fresh_until NULLS FIRST
                LIMIT $4
                FOR UPDATE OF r SKIP LOCKED
            ), r AS (
                UPDATE remote_jwks r SET attempted_at = now()
                FROM due WHERE r.client_id = due.client_id
                RETURNING r.*
            )
            SELECT {_REMOTE_COLUMNS} FROM r JOIN clients c
                ON c.client_id = r.client_id
            """,
            lead_fraction,
            interval_seconds,
            backoff_cap_seconds,
            limit,
        )
        return [_remote_set(row) for row in rows]

    async def save_remote_set(
        self,
        client_id: str,
        jwks_uri: str,
        *,
        keys: list[dict[str, Any]],
        upstream_etag: str | None,
        fresh_seconds: float,
        skipped: dict[str, int],
        fetched_seconds_ago: float = 0.0,
    ) -> bool:
        """Keep a good set fetched ``fetched_seconds_ago``.

        False if the client is gone, its jwks_uri changed, or a set fetched
        later is kept already: an older fetch never replaces a newer one.
        """
        status = await self.conn.execute(
            """
            INSERT INTO remote_jwks AS r (client_id, jwks_uri, keys, upstream_etag,
                fetched_at, fresh_until, attempted_at, skipped)
            SELECT client_id, jwks_uri, $3, $4, now() - make_interval(secs => $7),
                now() + make_interval(secs => $5), now() - make_interval(secs => $7),
                $6
            FROM clients WHERE client_id = $1 AND jwks_uri = $2
            ON CONFLICT (client_id) DO UPDATE SET
                jwks_uri = EXCLUDED.jwks_uri, keys = EXCLUDED.keys,
                upstream_etag = EXCLUDED.upstream_etag,
                fetched_at = EXCLUDED.fetched_at, fresh_until = EXCLUDED.fresh_until,
                failures = 0, last_error = NULL, skipped = EXCLUDED.skipped
            WHERE r.jwks_uri <> EXCLUDED.jwks_uri OR r.fetched_at IS NULL
                OR r.fetched_at <= EXCLUDED.fetched_at
            """,
            client_id,
            jwks_uri,
            keys,
            upstream_etag,
            float(fresh_seconds),
            skipped,
            fetched_seconds_ago,
        )
        return _row_count(status) == 1

    async def revalidate_remote_set(
        self, client_id: str, jwks_uri: str, *, fresh_seconds: float
    ) -> bool:
        """The upstream answered 304: the kept set is fresh again."""
        status = await self.conn.execute(
            "UPDATE remote_jwks SET fetched_at = now(), failures = 0,"
            " fresh_until = now() + make_interval(secs => $3), last_error = NULL"
            " WHERE client_id = $1 AND jwks_uri = $2 AND keys IS NOT NULL",
            client_id,
            jwks_uri,
            float(fresh_seconds),
        )
        return _row_count(status) == 1

    async def remote_fetch_failed(
        self, client_id: str, jwks_uri: str, *, error: str
    ) -> None:
        """Count a failed fetch; the kept set, if any, stays as it was."""
        await self.conn.execute(
            "UPDATE remote_jwks SET failures = failures + 1, last_error = left($3, 500)"
            " WHERE client_id = $1 AND jwks_uri = $2",
            client_id,
            jwks_uri,
            error,
        )
