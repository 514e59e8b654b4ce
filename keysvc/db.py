"""The asyncpg pool, and the one place where database faults become errors."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from keysvc.errors import Conflict, DatabaseUnavailable
from keysvc.secret import Secret

logger = logging.getLogger(__name__)

# A connection of its own, or one lent by the pool: both run statements alike.
Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy

# Faults that mean "the database cannot answer now", not "the request is wrong".
CONNECTION_FAULTS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.QueryCanceledError,
    asyncpg.exceptions.InsufficientResourcesError,
    OSError,
    TimeoutError,
)


async def _init_connection(conn: asyncpg.Connection) -> None:
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(
            type_name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )


async def create_pool(
    dsn: Secret, *, min_size: int, max_size: int, timeout_seconds: float
) -> asyncpg.Pool:
    """Open a pool whose statements time out instead of hanging."""
    return await asyncpg.create_pool(
        dsn.reveal(),
        min_size=min_size,
        max_size=max_size,
        timeout=timeout_seconds,
        command_timeout=timeout_seconds,
        init=_init_connection,
        server_settings={"application_name": "keysvc"},
    )


@asynccontextmanager
async def translated(what: str) -> AsyncIterator[None]:
    """Turn database faults into keysvc errors that the HTTP layer can answer.

    ``what`` names the operation for the log; the caller sees a 503 or 409,
    never a driver message (it can quote parameters).
    """
    try:
        yield
    except asyncpg.UniqueViolationError as exc:
        raise Conflict(f"{what}: it already exists") from exc
    except asyncpg.SerializationError as exc:
        raise Conflict(f"{what}: a concurrent change won; retry") from exc
    except asyncpg.exceptions.LockNotAvailableError as exc:
        raise Conflict(f"{what}: busy with a concurrent change; retry") from exc
    except CONNECTION_FAULTS as exc:
        logger.warning("database unavailable during %s: %s", what, type(exc).__name__)
        raise DatabaseUnavailable(
            "the database is unavailable; retry shortly", retry_after=2
        ) from exc
    except asyncio.CancelledError:
        raise
