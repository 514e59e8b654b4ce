"""What tests run against: `keysvc serve` as a real process, ports, temp folders."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def own_temp_dir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class KeysvcProcess:
    """One `keysvc serve` on a loopback port; its stderr kept as lines."""

    def __init__(self, env: dict[str, str], *, name: str = "keysvc") -> None:
        self.name = name
        self.port = free_port()
        self.env = {"PATH": os.environ["PATH"], **env, "KEYSVC_PORT": str(self.port)}
        self.base = f"http://127.0.0.1:{self.port}"
        self.process: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self._reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "keysvc", "serve", env=self.env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            # Its own process group: a kill takes its key workers with it,
            # as when a container or a machine dies.
            start_new_session=True,
        )  # fmt: skip
        self._reader = asyncio.create_task(self._read())

    async def ready(self, http: aiohttp.ClientSession, *, within: float = 60) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if not self.running:
                raise AssertionError("\n".join(self.lines[-20:]))
            try:
                async with http.get(f"{self.base}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
        raise AssertionError(f"{self.name} did not become ready")

    async def started(self) -> KeysvcProcess:
        """Start and wait until ready, with a client of its own."""
        await self.start()
        async with aiohttp.ClientSession() as http:
            await self.ready(http)

        return self

    def signal(self, sig: int) -> None:
        if self.running:
            assert self.process is not None
            self.process.send_signal(sig)

    async def kill(self) -> None:
        """SIGKILL to the process and its workers: no cleanup, no release."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        await self.wait()

    async def stop(self, *, within: float = 20) -> int:
        """SIGTERM and wait; kill whatever is left after ``within`` seconds."""
        self.signal(signal.SIGTERM)
        try:
            return await self.wait(within=within)
        finally:
            await self.kill()

    async def wait(self, *, within: float = 20) -> int:
        assert self.process is not None
        code = await asyncio.wait_for(self.process.wait(), within)
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 5)

        return code

    async def _read(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        async for line in self.process.stderr:
            self.lines.append(line.decode().rstrip("\n"))
