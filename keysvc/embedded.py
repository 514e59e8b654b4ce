"""The embedded default: a real PostgreSQL from the pgserver wheel, and dev secrets.

With no ``KEYSVC_DATABASE_URL``, keysvc runs its own server in the data folder
(reused on the next start, stopped on shutdown) and connects to it as a
``keysvc`` role that owns its database and is no superuser, the same as in
production. The admin token and a KEK are generated once into files of mode
0600 beside it, and the log says loudly that they are for development only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from keysvc.sealing import Kek, format_kek, new_kek, parse_keks
from keysvc.secret import Secret
from keysvc.tokens import ADMIN_PREFIX, new_token

logger = logging.getLogger(__name__)

ROLE = "keysvc"
DATABASE = "keysvc"


@dataclass(frozen=True, slots=True)
class DevSecrets:
    admin_token: Secret
    keks: tuple[Kek, ...]
    admin_token_file: Path
    generated: bool


class EmbeddedPostgres:
    """A pgserver instance in ``data_dir/pg``, and a DSN for the keysvc role."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._server: Any = None

    def start(self) -> tuple[Secret, Secret]:
        """Start (or join) the server; return (superuser DSN, keysvc DSN). Blocks."""
        # Imported here: production never loads it. Its import asks
        # platformdirs for XDG_RUNTIME_DIR and warns where a shell has none.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
            from pgserver.postgres_server import get_server

        _private_dir(self.data_dir)
        self._server = get_server(self.data_dir / "pg", cleanup_mode="stop")
        superuser = self._server.get_uri()
        socket_dir = superuser.rsplit("host=", 1)[1]
        logger.warning(
            "embedded PostgreSQL (development only) running in %s",
            self.data_dir / "pg",
        )

        keysvc_dsn = f"postgresql://{ROLE}@/{DATABASE}?host={socket_dir}"

        return Secret(superuser), Secret(keysvc_dsn)

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None
            logger.info("embedded PostgreSQL stopped")


@asynccontextmanager
async def database(dsn: Secret | None, data_dir: Path) -> AsyncIterator[Secret]:
    """The DSN to use: the given one, or an embedded server's for the lifetime
    of the block (started, its role made, and stopped at the end)."""
    if dsn is not None:
        yield dsn
        return

    embedded = EmbeddedPostgres(data_dir)
    superuser, own = await asyncio.to_thread(embedded.start)
    try:
        await ensure_role(superuser)
        yield own
    finally:
        await asyncio.to_thread(embedded.stop)


async def ensure_role(superuser_dsn: Secret) -> None:
    """Create the keysvc login role and its own database, once."""
    conn = await asyncpg.connect(superuser_dsn.reveal())
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", ROLE):
            await conn.execute(f"CREATE ROLE {ROLE} LOGIN NOSUPERUSER NOCREATEROLE")
        if not await conn.fetchval(
            "SELECT 1 FROM pg_database WHERE datname = $1", DATABASE
        ):
            await conn.execute(f"CREATE DATABASE {DATABASE} OWNER {ROLE}")
    finally:
        await conn.close()


def dev_secrets(data_dir: Path) -> DevSecrets:
    """Read the dev admin token and KEK from the data folder, making them once."""
    _private_dir(data_dir)
    token_file = data_dir / "admin-token"
    kek_file = data_dir / "keks"
    generated = False
    if not token_file.exists():
        _write_private(token_file, new_token(ADMIN_PREFIX))
        generated = True
    if not kek_file.exists():
        _write_private(kek_file, format_kek(new_kek("dev-1")))
        generated = True

    return DevSecrets(
        admin_token=Secret(token_file.read_text().strip()),
        keks=parse_keks(kek_file.read_text().strip()),
        admin_token_file=token_file,
        generated=generated,
    )


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(path.stat().st_mode & ~(stat.S_IRWXG | stat.S_IRWXO) | stat.S_IXOTH)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text + "\n")
