"""Interop fixtures: the node project's packages, installed by the tests.

``npm ci`` runs once, when ``node_modules`` is missing, from the pinned
``package-lock.json``. Without ``node`` the node tests are skipped; CI has
Node.js 20, where a failed install fails them.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from jwcrypto.jwk import JWK

NODE_DIR = Path(__file__).parent / "node"
NODE_TIMEOUT_SECONDS = 60
NPM_TIMEOUT_SECONDS = 300

RunNode = Callable[[str, dict[str, Any]], Awaitable[Any]]


@pytest.fixture(scope="session")
def node_project() -> Path:
    """The node project with its packages installed; skips only without node."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed: the node interop tests need Node.js 20")

    if not (NODE_DIR / "node_modules").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("node is installed but npm is not: cannot install jose")
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            check=True,
            timeout=NPM_TIMEOUT_SECONDS,
            capture_output=True,
        )

    return NODE_DIR


@pytest.fixture
def run_node(node_project: Path) -> RunNode:
    """Run a command of interop.mjs with a JSON request; return its JSON answer."""

    async def run(command: str, request: dict[str, Any]) -> Any:
        process = await asyncio.create_subprocess_exec(
            "node",
            str(node_project / "interop.mjs"),
            command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(
                process.communicate(json.dumps(request).encode()),
                NODE_TIMEOUT_SECONDS,
            )
        except TimeoutError:
            process.kill()
            await process.wait()
            raise
        assert process.returncode == 0, err.decode()[-2000:]

        return json.loads(out)

    return run


# -- keysvc as the libraries meet it ---------------------------------------------

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TOKEN_ENDPOINT = "https://as.example/oauth2/token"
# Each algorithm keysvc publishes, with the key a client would bring for it.
KEY_FOR_ALG: dict[str, dict[str, Any]] = {
    "RS256": {"kty": "RSA", "size": 2048},
    "RS384": {"kty": "RSA", "size": 2048},
    "RS512": {"kty": "RSA", "size": 2048},
    "PS256": {"kty": "RSA", "size": 2048},
    "PS384": {"kty": "RSA", "size": 2048},
    "PS512": {"kty": "RSA", "size": 2048},
    "ES256": {"kty": "EC", "crv": "P-256"},
    "ES384": {"kty": "EC", "crv": "P-384"},
    "ES512": {"kty": "EC", "crv": "P-521"},
    "EdDSA": {"kty": "OKP", "crv": "Ed25519"},
    "Ed25519": {"kty": "OKP", "crv": "Ed25519"},
}

Verdict = Callable[[str], Awaitable[dict[str, Any]]]


@pytest.fixture
def signed_by_keysvc(
    http: aiohttp.ClientSession,
) -> Callable[[dict[str, Any]], Awaitable[str]]:
    """An assertion for TOKEN_ENDPOINT, signed by keysvc for a created client."""

    async def sign(created: dict[str, Any]) -> str:
        client_id = created["client"]["client_id"]
        response = await http.post(
            f"/clients/{client_id}/assertions",
            json={"audience": TOKEN_ENDPOINT},
            headers={"Authorization": f"Bearer {created['client_token']}"},
        )
        body = await response.json()
        assert response.status == 200, body
        return str(body["client_assertion"])

    return sign


@pytest.fixture
async def verify_at_keysvc(
    http: aiohttp.ClientSession, admin: dict[str, str], leak_watch: Any
) -> Verdict:
    """POST /verify as a verifier whose audience is TOKEN_ENDPOINT."""
    response = await http.post(
        "/verifiers",
        json={"name": "interop", "audiences": [TOKEN_ENDPOINT]},
        headers=admin,
    )
    created = await response.json()
    assert response.status == 201, created
    token = created["verifier_token"]
    leak_watch.add(token)

    async def verify(assertion: str) -> dict[str, Any]:
        response = await http.post(
            "/verify",
            json={
                "client_assertion": assertion,
                "client_assertion_type": ASSERTION_TYPE,
            },
            headers={"Authorization": f"Bearer {token}"},
        )
        assert response.status == 200
        verdict: dict[str, Any] = await response.json()
        return verdict

    return verify


@pytest.fixture
def import_own_key(
    http: aiohttp.ClientSession, create_client: Callable[..., Awaitable[Any]]
) -> Callable[[str, str], Awaitable[tuple[str, str]]]:
    """Register an imported-keys client holding its own key: (kid, private PEM)."""

    async def make(client_id: str, alg: str) -> tuple[str, str]:
        created = await create_client(client_id, key_source="imported", alg=alg)
        key = JWK.generate(**KEY_FOR_ALG[alg])
        response = await http.post(
            f"/clients/{client_id}/keys",
            json={"jwk": key.export_public(as_dict=True)},
            headers={"Authorization": f"Bearer {created['client_token']}"},
        )
        body = await response.json()
        assert response.status == 201, body
        pem = key.export_to_pem(private_key=True, password=None).decode()

        return body["key"]["kid"], pem

    return make


@pytest.fixture
def claims_of() -> Callable[[str], dict[str, Any]]:
    """What a client puts in its assertion before its library adds iat and exp."""

    def claims(client_id: str) -> dict[str, Any]:
        return {
            "iss": client_id,
            "sub": client_id,
            "aud": TOKEN_ENDPOINT,
            "jti": secrets.token_urlsafe(16),
        }

    return claims
