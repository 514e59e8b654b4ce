"""Typed application keys: each shared resource of the app, by its type."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from keysvc.jwks_cache import JwksCache
from keysvc.keygen import KeyGenerator
from keysvc.lifecycle import Lifecycle
from keysvc.metrics import Metrics
from keysvc.settings import Settings
from keysvc.store import Store

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
STORE = web.AppKey("store", Store)
GENERATOR = web.AppKey("generator", KeyGenerator)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
JWKS_CACHE = web.AppKey("jwks_cache", JwksCache)
ADMIN_TOKEN_HASH = web.AppKey("admin_token_hash", bytes)


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
