"""Migrations apply once across replicas; the schema guards the invariants."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import pytest

from keysvc import migrations
from keysvc.errors import MigrationError


@pytest.fixture
async def empty_db(pg_root, database_url):
    """A database with nothing of keysvc in it, owned by the test role."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    finally:
        await conn.close()

    return database_url


async def test_migrate_applies_every_file_and_records_the_version(empty_db):
    conn = await asyncpg.connect(empty_db)
    try:
        applied = await migrations.migrate(conn)
        again = await migrations.migrate(conn)
        version = await migrations.database_version(conn)
    finally:
        await conn.close()

    assert applied == list(range(1, migrations.code_version() + 1))
    assert again == []
    assert version == migrations.code_version()


async def test_replicas_migrating_together_apply_each_file_once(empty_db):
    conns = [await asyncpg.connect(empty_db) for _ in range(5)]
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(migrations.migrate(c) for c in conns)), 60
        )
        rows = await conns[0].fetch("SELECT version FROM keysvc_schema ORDER BY 1")
    finally:
        for conn in conns:
            await conn.close()

    applied = sorted(v for result in results for v in result)
    assert applied == list(range(1, migrations.code_version() + 1))
    assert [r["version"] for r in rows] == applied


async def test_a_database_newer_than_the_code_refuses(database_url):
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO keysvc_schema (version, name, checksum) VALUES (999, 'x', 'x')"
        )
        with pytest.raises(MigrationError, match="newer than this code"):
            await migrations.migrate(conn)
    finally:
        await conn.close()


async def test_an_edited_migration_refuses(database_url):
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "UPDATE keysvc_schema SET checksum = 'edited' WHERE version = 1"
        )
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await migrations.migrate(conn)
    finally:
        await conn.close()


async def test_migrations_need_no_superuser(database_url):
    conn = await asyncpg.connect(database_url)
    try:
        is_super = await conn.fetchval(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
        )
    finally:
        await conn.close()

    assert is_super is False


JWK = json.dumps({"kty": "EC", "crv": "P-256", "x": "a", "y": "b"})


async def _client(conn: asyncpg.Connection, client_id: str = "c") -> None:
    await conn.execute(
        "INSERT INTO clients (client_id, auth_method, key_source, alg,"
        " rotation_period_seconds, prepublish_period_seconds, grace_period_seconds,"
        " token_hash) VALUES ($1, 'private_key_jwt', 'imported', 'ES256', 60, 10, 10,"
        " $2)",
        client_id,
        client_id.encode(),
    )


async def _key(conn, kid, state, *, jwk=JWK, sealed=None, kek_id=None, ended=False):
    await conn.execute(
        "INSERT INTO keys (client_id, kid, alg, state, origin, public_jwk, kek_id,"
        " sealed, activated_at, retired_at, ended_at) VALUES ('c', $1, 'ES256', $2,"
        " CASE WHEN $3::bytea IS NULL THEN 'imported' ELSE 'generated' END, $4::jsonb,"
        " $5, $3, now(), now(), CASE WHEN $6 THEN now() END)",
        kid,
        state,
        sealed,
        jwk,
        kek_id,
        ended,
    )


@pytest.fixture
async def conn(database_url):
    connection = await asyncpg.connect(database_url)
    await _client(connection)
    yield connection
    await connection.close()


async def test_the_database_refuses_a_second_active_key(conn):
    await _key(conn, "k1", "active")

    with pytest.raises(asyncpg.UniqueViolationError):
        await _key(conn, "k2", "active")


async def test_the_database_refuses_a_second_next_key(conn):
    await _key(conn, "k1", "next")

    with pytest.raises(asyncpg.UniqueViolationError):
        await _key(conn, "k2", "next")


async def test_the_database_refuses_unknown_states(conn):
    with pytest.raises(asyncpg.CheckViolationError):
        await _key(conn, "k1", "dormant")


@pytest.mark.parametrize("member", ["d", "p", "q", "dp", "dq", "qi", "oth", "k"])
async def test_the_database_refuses_private_members_in_a_public_key(conn, member):
    jwk = json.dumps({"kty": "EC", "x": "a", member: "secret"})

    with pytest.raises(asyncpg.CheckViolationError):
        await _key(conn, "k1", "next", jwk=jwk)


async def test_the_database_refuses_a_sealed_blob_on_an_ended_key(conn):
    with pytest.raises(asyncpg.CheckViolationError):
        await _key(conn, "k1", "revoked", sealed=b"blob", kek_id="k", ended=True)


async def test_the_database_refuses_bad_client_ids(database_url):
    connection = await asyncpg.connect(database_url)
    try:
        for bad in ("", "-x", "a b", "x" * 129, "é"):
            with pytest.raises(asyncpg.CheckViolationError):
                await _client(connection, bad)
    finally:
        await connection.close()
