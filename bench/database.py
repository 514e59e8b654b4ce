"""The bench's PostgreSQL: pgserver in a temporary folder, and bulk loads.

The server is started while the bench runs on core 0, so that PostgreSQL's
processes share that core with the server under test: on two cores the load
generator keeps core 1 to itself, and DB-bound measures pay for the database
on the server's core, as a one-box deployment would.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg

from bench.procs import LOAD_CORE, SERVER_CORE, pin_self

ROLE = "keysvc_bench"


class Postgres:
    """A pgserver instance; databases for keysvc are owned by a plain role."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._server: Any = None
        self.superuser = ""

    def start(self) -> None:
        import pgserver

        pin_self(SERVER_CORE)
        try:
            self._server = pgserver.get_server(  # type: ignore[attr-defined]
                self.folder, cleanup_mode="stop"
            )
        finally:
            pin_self(LOAD_CORE)
        self.superuser = str(self._server.get_uri())

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None

    def dsn(self, database: str, *, user: str = ROLE) -> str:
        rest = self.superuser.split("@", 1)[1]
        host_and_db, _, query = rest.partition("?")
        host = host_and_db.split("/", 1)[0]

        return f"postgresql://{user}@{host}/{database}" + (f"?{query}" if query else "")

    async def fresh_database(self, name: str) -> str:
        """Drop and create ``name``, owned by the bench role; return its DSN."""
        conn = await asyncpg.connect(self.superuser)
        try:
            if not await conn.fetchval(
                "SELECT 1 FROM pg_roles WHERE rolname = $1", ROLE
            ):
                await conn.execute(f"CREATE ROLE {ROLE} LOGIN NOSUPERUSER NOCREATEDB")
            await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            await conn.execute(f"CREATE DATABASE {name} OWNER {ROLE}")
        finally:
            await conn.close()

        return self.dsn(name)


@dataclass(frozen=True, slots=True)
class BulkKey:
    """A key row: a real public JWK whose kid is its thumbprint."""

    kid: str
    alg: str
    public_jwk: str


_CLIENT_COLUMNS = (
    "client_id",
    "auth_method",
    "key_source",
    "alg",
    "key_size",
    "rotation_period_seconds",
    "prepublish_period_seconds",
    "grace_period_seconds",
    "token_hash",
)
_KEY_COLUMNS = (
    "client_id",
    "kid",
    "alg",
    "state",
    "origin",
    "public_jwk",
    "created_at",
    "published_at",
    "activated_at",
)


async def load_generated_clients(
    dsn: str,
    client_ids: Sequence[str],
    pairs: Sequence[tuple[BulkKey, BulkKey]],
    *,
    key_size: int | None = None,
    age_seconds: int = 0,
    rotation_period_seconds: int = 30 * 86400,
    prepublish_period_seconds: int = 86400,
) -> None:
    """COPY generated clients, each with an active and a next key, in one commit.

    ``age_seconds`` backdates both keys, which makes the clients due for
    rotation when it exceeds their rotation period. The keys carry no sealed
    private part: nothing the bench measures reads one. The tables are
    analysed in the same commit.
    """
    alg = pairs[0][0].alg
    clients = [
        (
            cid,
            "private_key_jwt",
            "generated",
            alg,
            key_size,
            rotation_period_seconds,
            prepublish_period_seconds,
            3600,
            os.urandom(32),
        )
        for cid in client_ids
    ]
    conn = await asyncpg.connect(dsn)
    try:
        now = await conn.fetchval("SELECT now()")
        then = now - timedelta(seconds=age_seconds)
        keys = []
        for cid, (active, following) in zip(client_ids, pairs, strict=True):
            keys.append(
                (
                    cid,
                    active.kid,
                    alg,
                    "active",
                    "generated",
                    active.public_jwk,
                    then,
                    then,
                    then,
                )
            )
            keys.append(
                (
                    cid,
                    following.kid,
                    alg,
                    "next",
                    "generated",
                    following.public_jwk,
                    then,
                    then,
                    None,
                )
            )
        async with conn.transaction():
            await conn.copy_records_to_table(
                "clients", records=clients, columns=_CLIENT_COLUMNS
            )
            await conn.copy_records_to_table("keys", records=keys, columns=_KEY_COLUMNS)
            # Planner statistics as autovacuum would have them for a table this
            # size: without them the first queries plan for the table as it was
            # before the load. In the same commit, so they are there at once.
            await conn.execute("ANALYZE clients, keys")
    finally:
        await conn.close()


def jwk_text(members: dict[str, object]) -> str:
    return json.dumps(members, separators=(",", ":"))
