"""Typed application keys: each shared resource of the app, by its type."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import web
from aiohttp.abc import AbstractResolver

from keysvc.jwks_cache import JwksCache
from keysvc.keygen import KeyGenerator
from keysvc.lifecycle import Lifecycle
from keysvc.metrics import Metrics
from keysvc.ratelimit import RateLimiter
from keysvc.remote import RemoteJwks
from keysvc.scheduler import Scheduler
from keysvc.settings import Settings
from keysvc.signing import AssertionSigner
from keysvc.store import Store
from keysvc.tokens import TokenCache
from keysvc.verification import AssertionVerifier
from keysvc.verifiers import Verifiers

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
STORE = web.AppKey("store", Store)
GENERATOR = web.AppKey("generator", KeyGenerator)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
JWKS_CACHE = web.AppKey("jwks_cache", JwksCache)
SCHEDULER = web.AppKey("scheduler", Scheduler)
ADMIN_TOKEN_HASH = web.AppKey("admin_token_hash", bytes)
VERIFIER = web.AppKey("assertion_verifier", AssertionVerifier)
SIGNER = web.AppKey("assertion_signer", AssertionSigner)
VERIFIERS = web.AppKey("verifiers", Verifiers)
REMOTE_JWKS = web.AppKey("remote_jwks", RemoteJwks)
# Set before start to resolve jwks_uri hosts with another resolver (tests).
REMOTE_RESOLVER = web.AppKey("remote_resolver", AbstractResolver)


@dataclass(slots=True)
class Status:
    """What /readyz reports; flipped by the cleanup contexts and the listener."""

    database: bool = False
    listening: bool = False
    draining: bool = False

    @property
    def ready(self) -> bool:
        return self.database and self.listening and not self.draining


STATUS = web.AppKey("status", Status)


class ClientCache(Protocol):
    """An in-process cache of per-client data that a key change makes stale."""

    def invalidate(self, client_id: str) -> None: ...

    def clear(self) -> None: ...


@dataclass(slots=True)
class ClientCaches:
    """Every per-client cache of the process, dropped together.

    A committed change calls :meth:`invalidate` locally, the LISTEN loop calls
    it for changes made by other replicas, and a listener (re)connect calls
    :meth:`clear`, since notifications sent meanwhile are lost.
    """

    caches: list[ClientCache] = field(default_factory=list)

    def add(self, cache: ClientCache) -> None:
        self.caches.append(cache)

    def invalidate(self, client_id: str) -> None:
        for cache in self.caches:
            cache.invalidate(client_id)

    def clear(self) -> None:
        for cache in self.caches:
            cache.clear()


CLIENT_CACHES = web.AppKey("client_caches", ClientCaches)


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-client rate limits of this process."""

    rotations: RateLimiter
    assertions: RateLimiter


LIMITS = web.AppKey("limits", Limits)
TOKENS = web.AppKey("tokens", TokenCache)
