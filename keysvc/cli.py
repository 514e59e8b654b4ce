"""The ``keysvc`` command: serve, migrate, rewrap, and client administration."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from keysvc import __version__, embedded, migrations
from keysvc.db import create_pool
from keysvc.errors import KeysvcError
from keysvc.http import render, server
from keysvc.http.app import create_app, with_dev_secrets
from keysvc.http.appkeys import LIFECYCLE, SETTINGS, STORE
from keysvc.lifecycle import ClientRequest, Lifecycle
from keysvc.logs import setup_logging
from keysvc.models import AuthMethod, KeySource
from keysvc.periods import parse_period
from keysvc.settings import Settings
from keysvc.store import Store

logger = logging.getLogger("keysvc")

Command = Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]


def _out(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


# -- serve ---------------------------------------------------------------------


def serve(settings: Settings) -> int:
    settings = with_dev_secrets(settings)
    app = create_app(settings)
    if settings.embedded and sys.stdout.isatty() and settings.admin_token:
        # Shown on the terminal only, never in the log stream.
        sys.stdout.write(
            f"\n  dev admin token: {settings.admin_token.reveal()}\n"
            f"  (kept in {settings.data_dir / 'admin-token'}; development only)\n\n"
        )
        sys.stdout.flush()
    asyncio.run(server.serve(app, settings))

    return 0


# -- commands that need the database ------------------------------------------


@asynccontextmanager
async def _service(settings: Settings) -> AsyncIterator[web.Application]:
    """Open what ``serve`` opens (database, migrations, key workers), no socket."""
    app = create_app(settings)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        yield app
    finally:
        await runner.cleanup()


async def _migrate(settings: Settings, _args: argparse.Namespace) -> int:
    async with embedded.database(settings.database_url, settings.data_dir) as dsn:
        pool = await create_pool(
            dsn, min_size=1, max_size=1, timeout_seconds=settings.db_timeout_seconds
        )
        try:
            async with pool.acquire() as conn:
                applied = await migrations.migrate(conn)
                version = await migrations.database_version(conn)
        finally:
            await pool.close()
    _out({"applied": applied, "schema_version": version})

    return 0


async def _rewrap(settings: Settings, _args: argparse.Namespace) -> int:
    async with _service(settings) as app:
        moved, failed = await app[LIFECYCLE].rewrap_all(actor="cli")
    _out({"rewrapped": moved, "failed": failed})

    return 1 if failed else 0


async def _client_create(settings: Settings, args: argparse.Namespace) -> int:
    request = ClientRequest(
        client_id=args.client_id,
        auth_method=AuthMethod(args.auth_method),
        key_source=KeySource(args.key_source),
        alg=args.alg,
        key_size=args.key_size,
        rotation_period_seconds=_period(args.rotation_period),
        prepublish_period_seconds=_period(args.prepublish_period),
        grace_period_seconds=_period(args.grace_period),
        jwks_uri=args.jwks_uri,
    )
    async with _service(settings) as app:
        created = await app[LIFECYCLE].create_client(request, actor="cli")
    _out(
        {
            "client": render.client(created.client),
            "keys": [render.key(k) for k in created.keys],
            "client_token": created.client_token,
        }
    )

    return 0


async def _client_list(settings: Settings, args: argparse.Namespace) -> int:
    async with _service(settings) as app:
        clients = await app[STORE].list_clients(after=args.after, limit=args.limit)
    _out({"clients": [render.client(c) for c in clients]})

    return 0


async def _client_get(settings: Settings, args: argparse.Namespace) -> int:
    async with _service(settings) as app:
        store: Store = app[STORE]
        client = await store.get_client(args.client_id)
        keys = await store.list_keys(args.client_id)
    if client is None:
        raise KeysvcError(f"no client {args.client_id}")
    _out({"client": render.client(client), "keys": [render.key(k) for k in keys]})

    return 0


async def _client_delete(settings: Settings, args: argparse.Namespace) -> int:
    async with _service(settings) as app:
        await app[LIFECYCLE].delete_client(args.client_id, actor="cli")
    _out({"deleted": args.client_id})

    return 0


async def _key_rotate(settings: Settings, args: argparse.Namespace) -> int:
    async with _service(settings) as app:
        lifecycle: Lifecycle = app[LIFECYCLE]
        after = await lifecycle.rotate(args.client_id, force=args.force, actor="cli")
    _out({state.value: render.key(key) for state, key in after.items()})

    return 0


async def _key_revoke(settings: Settings, args: argparse.Namespace) -> int:
    async with _service(settings) as app:
        key = await app[LIFECYCLE].revoke(args.client_id, args.kid, actor="cli")
    _out({"key": render.key(key)})

    return 0


async def _key_import(settings: Settings, args: argparse.Namespace) -> int:
    jwk = json.loads(args.jwk_file.read()) if args.jwk_file else None
    async with _service(settings) as app:
        key = await app[LIFECYCLE].import_key(
            args.client_id, jwk, activate=args.activate, actor="cli"
        )
    _out({"key": render.key(key)})

    return 0


def _period(value: str | None) -> int | None:
    return (
        None
        if value is None
        else parse_period(int(value) if value.isdigit() else value)
    )


# -- argument parsing ----------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keysvc", description="Key management for RFC 7523 client authentication."
    )
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("serve", help="run the HTTP service (applies migrations first)")
    sub.add_parser("migrate", help="apply database migrations and exit")
    sub.add_parser("rewrap", help="re-seal every private part under the first KEK")

    clients = sub.add_parser("client", help="client administration").add_subparsers(
        dest="action", required=True
    )
    create = clients.add_parser("create")
    create.add_argument("client_id")
    create.add_argument("--auth-method", default="private_key_jwt",
                        choices=[m.value for m in AuthMethod])  # fmt: skip
    create.add_argument("--key-source", default="generated",
                        choices=[s.value for s in KeySource])  # fmt: skip
    create.add_argument("--alg")
    create.add_argument("--key-size", type=int)
    create.add_argument("--rotation-period")
    create.add_argument("--prepublish-period")
    create.add_argument("--grace-period")
    create.add_argument("--jwks-uri")
    create.set_defaults(run=_client_create)
    listing = clients.add_parser("list")
    listing.add_argument("--after")
    listing.add_argument("--limit", type=int, default=100)
    listing.set_defaults(run=_client_list)
    for name, run in (("get", _client_get), ("delete", _client_delete)):
        one = clients.add_parser(name)
        one.add_argument("client_id")
        one.set_defaults(run=run)

    keys = sub.add_parser("key", help="key administration").add_subparsers(
        dest="action", required=True
    )
    rotate = keys.add_parser("rotate")
    rotate.add_argument("client_id")
    rotate.add_argument("--force", action="store_true")
    rotate.set_defaults(run=_key_rotate)
    revoke = keys.add_parser("revoke")
    revoke.add_argument("client_id")
    revoke.add_argument("kid")
    revoke.set_defaults(run=_key_revoke)
    imported = keys.add_parser("import")
    imported.add_argument("client_id")
    imported.add_argument("jwk_file", type=argparse.FileType("r"))
    imported.add_argument("--activate", action="store_true")
    imported.set_defaults(run=_key_import)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except KeysvcError as exc:
        sys.stderr.write(f"keysvc: {exc.detail}\n")
        return 2
    setup_logging(settings.log_format, settings.log_level)

    try:
        if args.command == "serve":
            return serve(settings)
        run: Command = {"migrate": _migrate, "rewrap": _rewrap}.get(
            args.command, getattr(args, "run", None)
        )  # type: ignore[assignment]
        return asyncio.run(run(settings, args))
    except KeysvcError as exc:
        sys.stderr.write(f"keysvc: {exc.detail}\n")
        return 1


__all__ = ["SETTINGS", "main"]
