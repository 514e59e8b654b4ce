"""schemathesis, from PyPI, against a live ``keysvc serve`` and its /openapi.json.

The service runs as a real subprocess on a loopback port over the test's
database. Before the run the test registers one client of each kind (keys
generated, imported, hosted at a loopback jwks_uri, and a client_secret_jwt
one), a client to delete, and a verifier; a schemathesis config file in a
temporary folder then hands schemathesis those ids and their tokens, so that
the generated traffic reaches each client's own routes with real ids and the
credential each route takes (the admin token for admin routes, the client's
own token for its routes, the verifier token for /verify).

The checks: no 5xx, every status, content type, header and body as
documented. The run is seeded, so a failure replays; one worker, since
CPython 3.11 can fail parsing lambda sources from several threads at once
(``SystemError: AST constructor recursion depth mismatch``). The rotation
and assertion rate limits are off (``KEYSVC_ROTATION_RATE=0``,
``KEYSVC_ASSERTION_RATE=0``): with them the run meets mostly 429s and stops
reaching the rotation and signing logic.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from harness import KeysvcProcess
from jwcrypto import jwk
from remote_upstream import Upstream, public, signing_key

from keysvc.http.app import create_app
from keysvc.http.openapi import document
from keysvc.sealing import format_kek, new_kek
from keysvc.secret import Secret
from keysvc.settings import Settings

ADMIN_TOKEN = "ksad_" + "s" * 43
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_schema_conformance,response_headers_conformance"
)
SEED = "20261203"
MAX_EXAMPLES = "20"
RUN_TIMEOUT = 240.0


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    """A remote client's JWKS host, on loopback."""
    server = await Upstream().start()
    server.document = {"keys": [public(signing_key("ES256", kid="remote-1"))]}
    yield server
    await server.close()


@pytest.fixture
async def keysvc(database_url: str, tmp_path: Path) -> AsyncIterator[KeysvcProcess]:
    """``python -m keysvc serve`` on a free loopback port, ready."""
    process = KeysvcProcess(
        {
            "KEYSVC_DATABASE_URL": database_url,
            "KEYSVC_ADMIN_TOKEN": ADMIN_TOKEN,
            "KEYSVC_KEKS": format_kek(new_kek("st-1")),
            "KEYSVC_KEYGEN_WORKERS": "1",
            "KEYSVC_SCHEDULER": "0",
            "KEYSVC_ROTATION_RATE": "0",
            "KEYSVC_ASSERTION_RATE": "0",
            "KEYSVC_REMOTE_ALLOW": "127.0.0.1/32",
            "KEYSVC_REMOTE_ALLOW_HTTP": "1",
            "KEYSVC_DATA_DIR": str(tmp_path / "data"),
            "KEYSVC_LOG_FORMAT": "json",
        },
        name="keysvc-schemathesis",
    )
    await asyncio.wait_for(process.started(), 90)
    yield process
    await process.stop()


async def _post(
    http: aiohttp.ClientSession, url: str, body: Any, token: str = ADMIN_TOKEN
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    async with http.post(url, json=body, headers=headers) as response:
        answer: dict[str, Any] = await response.json()
        assert response.status == 201, answer
        return answer


async def _world(
    http: aiohttp.ClientSession, base: str, upstream: Upstream, leak_watch: Any
) -> dict[str, Any]:
    """The clients and the verifier whose ids and tokens schemathesis uses."""
    clients = f"{base}/clients"
    made = {
        "gen": await _post(http, clients, {"client_id": "st-gen"}),
        "imp": await _post(
            http, clients, {"client_id": "st-imp", "key_source": "imported"}
        ),
        "sec": await _post(
            http, clients, {"client_id": "st-sec", "auth_method": "client_secret_jwt"}
        ),
        "remote": await _post(
            http,
            clients,
            {
                "client_id": "st-remote",
                "key_source": "remote",
                "jwks_uri": upstream.url(),
            },
        ),
        "del": await _post(http, clients, {"client_id": "st-del"}),
    }
    imported = json.loads(jwk.JWK.generate(kty="EC", crv="P-256").export_public())
    made["imported_key"] = await _post(
        http,
        f"{clients}/st-imp/keys",
        {"jwk": imported, "activate": True},
        made["imp"]["client_token"],
    )
    made["verifier"] = await _post(
        http,
        f"{base}/verifiers",
        {"name": "st-as", "audiences": ["https://as.example/token"]},
    )
    for answer in made.values():
        leak_watch.add(answer.get("client_token", ""), answer.get("client_secret", ""))
    leak_watch.add(made["verifier"]["verifier_token"])

    return made


def _toml(value: Any) -> str:
    """A TOML value: strings, numbers and lists are written as in JSON."""
    if isinstance(value, dict):
        pairs = ", ".join(f"{k} = {_toml(v)}" for k, v in value.items())
        return f"{{ {pairs} }}"

    return json.dumps(value)


def _operation(name: str, *, token: str | None = None, **parameters: Any) -> list[str]:
    lines = ["[[operations]]", f"include-name = {_toml(name)}"]
    if token is not None:
        lines.append(f"headers = {{ Authorization = {_toml('Bearer ' + token)} }}")
    if parameters:
        pairs = ", ".join(f"{_toml(k)} = {_toml(v)}" for k, v in parameters.items())
        lines.append(f"parameters = {{ {pairs} }}")

    return [*lines, ""]


def _config(made: dict[str, Any]) -> str:
    """A schemathesis.toml: credentials per security scheme, ids per operation."""
    gen, imp, sec = made["gen"], made["imp"], made["sec"]
    published = [gen["active"]["kid"], gen["next"]["kid"], "remote-1"]
    published.append(made["imported_key"]["key"]["kid"])
    lines = [
        "[auth.openapi.admin]",
        f"bearer = {_toml(ADMIN_TOKEN)}",
        # Overridden below, operation by operation, by the client's own token.
        "[auth.openapi.clientOrAdmin]",
        f"bearer = {_toml(ADMIN_TOKEN)}",
        "[auth.openapi.verifier]",
        f"bearer = {_toml(made['verifier']['verifier_token'])}",
        "",
        "[dictionaries.clients]",
        f"values = {_toml(['st-gen', 'st-imp', 'st-sec', 'st-remote'])}",
        "[dictionaries.kids]",
        f"values = {_toml(published)}",
        "",
    ]
    # The public routes take any known client and kid (and now and then a
    # made-up one, which must be a 404).
    known = {"dictionary": "clients", "probability": 0.9}
    kids = {"dictionary": "kids", "probability": 0.9}
    for method in ("GET", "OPTIONS"):
        lines += _operation(
            f"{method} /clients/{{client_id}}/jwks.json", **{"path.client_id": known}
        )
        lines += _operation(
            f"{method} /clients/{{client_id}}/jwks/{{kid}}",
            **{"path.client_id": known, "path.kid": kids},
        )
    lines += _operation("GET /clients/{client_id}", **{"path.client_id": "st-gen"})
    lines += _operation("PATCH /clients/{client_id}", **{"path.client_id": "st-gen"})
    lines += _operation("DELETE /clients/{client_id}", **{"path.client_id": "st-del"})
    lines += _operation(
        "GET /clients/{client_id}/events", **{"path.client_id": "st-gen"}
    )
    for name, owner in (
        ("GET /clients/{client_id}/keys", gen),
        ("POST /clients/{client_id}/keys", imp),
        ("POST /clients/{client_id}/keys/rotate", gen),
        ("POST /clients/{client_id}/assertions", gen),
        ("POST /clients/{client_id}/secret/rotate", sec),
    ):
        lines += _operation(
            name,
            token=owner["client_token"],
            **{"path.client_id": owner["client"]["client_id"]},
        )
    lines += _operation(
        "POST /clients/{client_id}/keys/{kid}/revoke",
        token=gen["client_token"],
        **{"path.client_id": "st-gen", "path.kid": gen["next"]["kid"]},
    )

    return "\n".join(lines)


# Routes each a schemathesis run must reach with a success, or it tested little.
MUST_SUCCEED = [
    ("GET", "/clients/{client_id}/jwks.json"),
    ("GET", "/clients/{client_id}/jwks/{kid}"),
    ("GET", "/clients/{client_id}"),
    ("GET", "/clients/{client_id}/keys"),
    ("GET", "/clients/{client_id}/events"),
    ("POST", "/clients"),
    ("PATCH", "/clients/{client_id}"),
    ("DELETE", "/clients/{client_id}"),
    ("POST", "/clients/{client_id}/keys/rotate"),
    ("POST", "/clients/{client_id}/keys/{kid}/revoke"),
    ("POST", "/clients/{client_id}/assertions"),
    ("POST", "/clients/{client_id}/secret/rotate"),
    ("POST", "/verifiers"),
    ("POST", "/verify"),
]


def _access(lines: list[str]) -> dict[tuple[str, str], set[int]]:
    statuses: dict[tuple[str, str], set[int]] = defaultdict(set)
    for line in lines:
        entry = json.loads(line) if line.startswith("{") else {}
        if entry.get("logger") == "keysvc.access":
            statuses[entry["method"], entry["route"]].add(entry["status"])

    return statuses


async def _schemathesis(config: Path, base: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        str(SCHEMATHESIS), "--config-file", str(config), "run",
        f"{base}/openapi.json", "--checks", CHECKS,
        "--phases", "coverage,fuzzing,stateful", "--max-examples", MAX_EXAMPLES,
        "--seed", SEED, "--workers", "1", "--request-timeout", "10",
        "--generation-database", "none", "--no-color",
        cwd=config.parent,
        env={"PATH": os.environ["PATH"], "HOME": str(config.parent)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        output, _ = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT)
    except TimeoutError:
        process.kill()
        await asyncio.wait_for(process.wait(), 10)
        raise

    return process.returncode or 0, output.decode(errors="replace")


@pytest.mark.slow
async def test_schemathesis_finds_no_response_outside_the_openapi_document(
    keysvc: KeysvcProcess, upstream: Upstream, tmp_path: Path, leak_watch: Any
):
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        made = await _world(http, keysvc.base, upstream, leak_watch)
    config = tmp_path / "schemathesis.toml"
    config.write_text(_config(made))

    code, output = await _schemathesis(config, keysvc.base)

    assert code == 0, output
    reached = _access(keysvc.lines)
    missed = [r for r in MUST_SUCCEED if not any(s < 300 for s in reached[r])]
    assert not missed, (missed, output[-3000:])
    assert not any(s >= 500 for statuses in reached.values() for s in statuses)
    # Nothing the run sent made keysvc write a traceback or a credential.
    credentials = [ADMIN_TOKEN, made["verifier"]["verifier_token"]]
    credentials += [made[c]["client_token"] for c in ("gen", "imp", "sec", "remote")]
    log = "\n".join(keysvc.lines)
    assert "Traceback" not in log
    assert not [c[:8] for c in credentials if c in log]


async def test_a_malformed_request_is_logged_in_one_line_without_its_bytes(
    keysvc: KeysvcProcess,
):
    """aiohttp refuses a header with a NUL byte before any route runs; its log
    line must carry no traceback and not the header, here a credential of no
    shape the log's token mask would know."""
    credential = "opaque-" + secrets.token_urlsafe(24)
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", keysvc.port), 10
    )
    writer.write(
        b"GET /healthz HTTP/1.1\r\nHost: keysvc\r\n"
        + f"Authorization: Bearer {credential}".encode()
        + b"\x00\r\n\r\n"
    )
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await asyncio.wait_for(writer.wait_closed(), 10)

    assert answer.split(b"\r\n")[0].endswith(b" 400 Bad Request")
    for _ in range(100):
        refused = [line for line in keysvc.lines if "malformed HTTP request" in line]
        if refused:
            break
        await asyncio.sleep(0.05)
    assert len(refused) == 1, keysvc.lines[-5:]
    assert json.loads(refused[0])["level"] == "INFO"
    log = "\n".join(keysvc.lines)
    assert "Traceback" not in log
    assert credential not in log


def test_every_route_the_app_serves_is_in_the_openapi_document():
    settings = Settings(admin_token=Secret(ADMIN_TOKEN), keks=(new_kek("doc-1"),))
    app = create_app(settings)
    served = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None
    }
    documented = {
        (method.upper(), path)
        for path, operations in document()["paths"].items()
        for method in operations
    }

    assert served == documented
