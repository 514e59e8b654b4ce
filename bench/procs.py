"""Servers under test as pinned subprocesses: start, wait until they answer, stop.

The server side of every measure runs on core 0 (``taskset -c 0``); the bench
itself, and so every load generator it starts, runs on core 1.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

SERVER_CORE = 0
LOAD_CORE = 1


def pin_self(core: int) -> None:
    """Move this process (and what it starts from now on) to one core."""
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > core:
        os.sched_setaffinity(0, {core})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]

    return port


class Server:
    """One pinned server process whose output goes to a log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        core: int = SERVER_CORE,
    ) -> None:
        self.name = name
        self.log = log
        pinned = ["taskset", "-c", str(core), *argv]
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                pinned,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_http(self, url: str, *, timeout: float = 60.0) -> None:
        """Poll ``url`` until it answers 2xx; fail with the log's tail if not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.tail()}")
            with contextlib.suppress(OSError, urllib.error.URLError):
                with urllib.request.urlopen(url, timeout=2) as response:
                    if 200 <= response.status < 300:
                        return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not answer {url}: {self.tail()}")

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""

        return "\n".join(text.splitlines()[-lines:])

    def rss_bytes(self) -> int:
        """Resident memory (VmRSS) of the server process itself."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS for {self.name}")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the server, then SIGKILL whatever is left of its group."""
        if self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        # Its own session: the group is the server and the workers it forked.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    try:
        yield server
    finally:
        server.stop()


def unpin() -> None:
    """Give a worker process every core again (an initializer for bench pools)."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, range(os.cpu_count() or 1))
