"""keysvc as the bench runs it: ``python -m keysvc serve`` pinned to core 0.

The admin token and the KEK are generated for each bench run and handed to
the process in its environment; nothing prints them. The HTTP API is then
driven with a real client, the way an operator's tooling would.
"""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.procs import Server, free_port

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class Credentials:
    admin_token: str = field(repr=False)
    keks: str = field(repr=False)

    @classmethod
    def generate(cls) -> Credentials:
        kek = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
        return cls("ksad_" + secrets.token_urlsafe(32), f"bench-1:{kek}")


def keysvc_env(
    dsn: str,
    credentials: Credentials,
    data_dir: Path,
    *,
    port: int = 0,
    log_level: str = "WARNING",
    scheduler: bool = False,
    scheduler_interval: float = 30.0,
    extra_env: dict[str, str] | None = None,
) -> dict[str, str]:
    """The environment of one keysvc process: secrets are passed here only."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "KEYSVC_HOST": "127.0.0.1",
        "KEYSVC_PORT": str(port),
        "KEYSVC_DATABASE_URL": dsn,
        "KEYSVC_ADMIN_TOKEN": credentials.admin_token,
        "KEYSVC_KEKS": credentials.keks,
        "KEYSVC_DATA_DIR": str(data_dir),
        "KEYSVC_LOG_LEVEL": log_level,
        "KEYSVC_LOG_FORMAT": "json",
        "KEYSVC_SCHEDULER": "1" if scheduler else "0",
        "KEYSVC_SCHEDULER_INTERVAL": f"{scheduler_interval:g}",
        "KEYSVC_REMOTE_ALLOW": "127.0.0.1",
        "KEYSVC_REMOTE_ALLOW_HTTP": "1",
        **(extra_env or {}),
    }


def migrate(dsn: str, credentials: Credentials, workdir: Path) -> None:
    """``keysvc migrate`` on a fresh database, as an operator runs it."""
    subprocess.run(
        [sys.executable, "-m", "keysvc", "migrate"],
        env=keysvc_env(dsn, credentials, workdir),
        cwd=ROOT,
        capture_output=True,
        timeout=120,
        check=True,
    )


def start_keysvc(
    name: str,
    dsn: str,
    credentials: Credentials,
    workdir: Path,
    *,
    log_level: str = "WARNING",
    scheduler: bool = False,
    scheduler_interval: float = 30.0,
    extra_env: dict[str, str] | None = None,
) -> tuple[Server, str]:
    """Start one replica and wait until /readyz answers; return it and its URL."""
    port = free_port()
    data_dir = workdir / f"{name}-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    env = keysvc_env(
        dsn,
        credentials,
        data_dir,
        port=port,
        log_level=log_level,
        scheduler=scheduler,
        scheduler_interval=scheduler_interval,
        extra_env=extra_env,
    )
    server = Server(
        name,
        [sys.executable, "-m", "keysvc", "serve"],
        log=workdir / f"{name}.log",
        env=env,
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        server.wait_http(url + "/readyz", timeout=90)
    except BaseException:
        server.stop()
        raise

    return server, url


class Api:
    """The keysvc HTTP API, as the bench calls it to set up its clients."""

    def __init__(self, url: str, admin_token: str) -> None:
        self.url = url
        self._admin = {"Authorization": f"Bearer {admin_token}"}
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Api:
        self._session = aiohttp.ClientSession(
            base_url=self.url, timeout=aiohttp.ClientTimeout(total=60)
        )
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use Api as an async context manager")
        return self._session

    async def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        token: str | None = None,
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else self._admin
        async with self.session.request(
            method, path, json=body, headers=headers
        ) as response:
            try:
                payload = await response.json(content_type=None)
            except ValueError:
                payload = None
            return response.status, payload

    async def expect(
        self, method: str, path: str, body: dict[str, Any] | None = None, **kw: Any
    ) -> Any:
        status, payload = await self.call(method, path, body, **kw)
        if status >= 300:
            title = payload.get("detail") if isinstance(payload, dict) else payload
            raise RuntimeError(f"{method} {path} answered {status}: {title}")
        return payload

    async def routes(self) -> set[str]:
        """The paths the live service's OpenAPI document lists."""
        document = await self.expect("GET", "/openapi.json")
        return set(document.get("paths", {}))

    async def jwks(self, client_id: str) -> tuple[bytes, str]:
        """A client's JWKS bytes and ETag, as any caller gets them."""
        async with self.session.get(f"/clients/{client_id}/jwks.json") as response:
            body = await response.read()
            if response.status != 200:
                raise RuntimeError(f"JWKS of {client_id} answered {response.status}")
            return body, response.headers["ETag"]

    async def status_of(self, path: str, headers: dict[str, str] | None = None) -> int:
        async with self.session.get(path, headers=headers) as response:
            await response.read()
            return response.status

    async def metric(self, name: str) -> float:
        """The sum of every sample of one family on /metrics."""
        async with self.session.get("/metrics") as response:
            text = await response.text()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and not line.startswith("#"):
                head = line.split(" ", 1)[0]
                if head == name or head.startswith(name + "{"):
                    total += float(line.rsplit(" ", 1)[1])
        return total
