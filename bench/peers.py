"""The servers keysvc is held against: nginx, the bare aiohttp ceiling, and
node-oidc-provider, each started in the foreground and pinned to core 0.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from bench.procs import Server, free_port
from bench.service import ROOT

NODE_DIR = Path(__file__).with_name("node")

_NGINX_CONF = """\
daemon off;
worker_processes 1;
{user}
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    default_type application/json;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_body_temp_path {folder}/client_body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {folder}/www;
    }}
}}
"""


def start_nginx(workdir: Path, body: bytes) -> tuple[Server, str]:
    """nginx serving ``body`` as the static file /jwks.json; return it and the URL."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    folder = workdir / "nginx"
    (folder / "www").mkdir(parents=True, exist_ok=True)
    (folder / "www" / "jwks.json").write_bytes(body)
    port = free_port()
    # Workers run as nobody unless told otherwise; the temp folders are private.
    user = "user root;" if os.geteuid() == 0 else ""
    conf = folder / "nginx.conf"
    conf.write_text(_NGINX_CONF.format(folder=folder, port=port, user=user))
    server = Server(
        "nginx", [nginx, "-c", str(conf), "-p", str(folder)], log=folder / "out.log"
    )
    url = f"http://127.0.0.1:{port}/jwks.json"
    server.wait_http(url, timeout=20)

    return server, url


def start_ceiling(workdir: Path, config: dict[str, Any]) -> tuple[Server, str]:
    """The bare aiohttp ceiling (bench/ceiling.py); return it and its base URL."""
    port = free_port()
    path = workdir / f"ceiling-{port}.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({**config, "port": port}, handle)
    server = Server(
        "ceiling",
        [sys.executable, "-m", "bench.ceiling", str(path)],
        log=workdir / f"ceiling-{port}.log",
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    server.wait_http(url + "/jwks.json", timeout=30)

    return server, url


def node_ready() -> bool:
    return (
        shutil.which("node") is not None
        and (NODE_DIR / "node_modules" / "oidc-provider").is_dir()
    )


def start_oidc_provider(
    workdir: Path, private_jwks: dict[str, Any]
) -> tuple[Server, str]:
    """node-oidc-provider with these signing keys; return it and its /jwks URL."""
    port = free_port()
    keys = workdir / "oidc-keys.json"
    fd = os.open(keys, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(private_jwks, handle)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "NODE_ENV": "production",
        "PEER_PORT": str(port),
        "PEER_JWKS_FILE": str(keys),
    }
    server = Server(
        "oidc-provider",
        ["node", str(NODE_DIR / "jwks_peer.mjs")],
        log=workdir / "oidc-provider.log",
        env=env,
        cwd=NODE_DIR,
    )
    url = f"http://127.0.0.1:{port}/jwks"
    server.wait_http(url, timeout=30)

    return server, url
