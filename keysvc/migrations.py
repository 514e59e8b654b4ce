"""Numbered, forward-only SQL migrations, applied once across replicas.

Each ``sql/NNN_name.sql`` runs in its own transaction and is recorded in
``keysvc_schema`` with a checksum. A session-level advisory lock makes
replicas that start together take turns: the first applies, the others find
nothing left to do. A database that records a version this code does not
know refuses to start, as does an applied file whose text has changed.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path

from keysvc.db import Connection
from keysvc.errors import MigrationError

logger = logging.getLogger(__name__)

# An arbitrary constant, the same in every replica: "keysvc" in ASCII.
MIGRATION_LOCK_ID = 0x6B65797376630001
_FILE = re.compile(r"(\d{3})_([a-z0-9_]+)\.sql")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available() -> list[Migration]:
    """The migrations shipped with this code, in order."""
    found = []
    for entry in _sql_dir().iterdir():
        match = _FILE.fullmatch(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text()))
    found.sort(key=lambda m: m.version)

    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise MigrationError(f"migration numbers are not 1..N: {versions}")

    return found


def _sql_dir() -> Traversable:
    # A source checkout (and an editable install) reads sql/ in place; a wheel
    # carries the same files as the keysvc.sql package.
    checkout = Path(__file__).resolve().parent.parent / "sql"
    if (checkout / "001_clients_and_keys.sql").is_file():
        return checkout

    return resources.files("keysvc.sql")


@functools.cache
def code_version() -> int:
    """The version this code migrates to; the shipped files do not change."""
    return len(available())


_BOOTSTRAP = """
CREATE TABLE IF NOT EXISTS keysvc_schema (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


async def migrate(conn: Connection) -> list[int]:
    """Bring the database to this code's version; return what was applied."""
    migrations = available()
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
    try:
        await conn.execute(_BOOTSTRAP)
        applied = await _applied(conn)
        _check_compatible(applied, migrations)

        done = []
        for migration in migrations[len(applied) :]:
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO keysvc_schema (version, name, checksum)"
                    " VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            logger.info("applied migration %03d_%s", migration.version, migration.name)
            done.append(migration.version)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)

    return done


async def database_version(conn: Connection) -> int:
    """The highest applied version, 0 for a database keysvc never touched."""
    exists = await conn.fetchval("SELECT to_regclass('keysvc_schema') IS NOT NULL")
    if not exists:
        return 0

    return int(
        await conn.fetchval("SELECT coalesce(max(version), 0) FROM keysvc_schema")
    )


async def _applied(conn: Connection) -> dict[int, str]:
    rows = await conn.fetch("SELECT version, checksum FROM keysvc_schema ORDER BY 1")

    return {row["version"]: row["checksum"] for row in rows}


def _check_compatible(applied: dict[int, str], migrations: list[Migration]) -> None:
    newest = max(applied, default=0)
    if newest > len(migrations):
        raise MigrationError(
            f"the database is at schema version {newest}, newer than this code "
            f"({len(migrations)}): run a newer keysvc"
        )
    for migration in migrations[: len(applied)]:
        if applied.get(migration.version) != migration.checksum:
            raise MigrationError(
                f"migration {migration.version:03d}_{migration.name} was changed "
                "after it was applied; migrations are forward-only"
            )
