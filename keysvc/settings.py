"""Configuration: every ``KEYSVC_*`` variable, read once into a frozen object."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from keysvc.errors import ConfigError
from keysvc.periods import parse_period
from keysvc.ratelimit import Rate, parse_rate
from keysvc.sealing import Kek, parse_keks
from keysvc.secret import Secret

T = TypeVar("T")

_ALGS = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
    "ES256", "ES384", "ES512", "EdDSA", "Ed25519",
)  # fmt: skip

# Per client and replica: enough for any honest client, too few for a loop.
_ROTATION_RATE = Rate(10, 60.0)
_ASSERTION_RATE = Rate(50, 1.0)


@dataclass(frozen=True, slots=True)
class Settings:
    """The whole configuration of one keysvc process."""

    host: str = "127.0.0.1"
    port: int = 8080
    database_url: Secret | None = None
    data_dir: Path = Path(".keysvc")
    admin_token: Secret | None = None
    keks: tuple[Kek, ...] = field(default=(), repr=False)
    scheduler: bool = True
    scheduler_interval_seconds: float = 30.0
    remote_allow: tuple[str, ...] = ()
    remote_allow_http: bool = False
    remote_timeout_seconds: float = 5.0
    remote_connect_timeout_seconds: float = 2.0
    remote_max_bytes: int = 256 * 1024
    remote_min_ttl_seconds: int = 60
    remote_max_ttl_seconds: int = 86400
    remote_max_stale_seconds: int = 86400
    remote_refetch_interval_seconds: float = 10.0
    metrics_port: int | None = None
    log_format: str = "json"
    log_level: str = "INFO"
    default_alg: str = "ES256"
    default_rsa_key_size: int = 2048
    default_rotation_period_seconds: int = 30 * 86400
    default_prepublish_period_seconds: int = 86400
    default_grace_period_seconds: int = 7 * 86400
    jwks_max_age_seconds: int = 600
    jwks_cache_ttl_seconds: float = 300.0
    jwks_cache_max_entries: int = 250_000
    jwks_stale_if_error_seconds: float = 3600.0
    rotation_rate: Rate = _ROTATION_RATE
    assertion_rate: Rate = _ASSERTION_RATE
    max_body_bytes: int = 64 * 1024
    max_assertion_lifetime_seconds: int = 600
    db_pool_min: int = 2
    db_pool_max: int = 10
    db_timeout_seconds: float = 5.0
    shutdown_timeout_seconds: float = 10.0
    shutdown_delay_seconds: float = 0.0
    keygen_workers: int = 0
    rotation_batch: int = 100
    rotation_concurrency: int = 1
    rotation_lease_seconds: int = 120
    expired_key_retention_seconds: int = 90 * 86400

    @property
    def embedded(self) -> bool:
        """True when no DSN is given and keysvc runs its own PostgreSQL."""
        return self.database_url is None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read ``KEYSVC_*`` variables; raise ConfigError naming a bad one."""
        d = cls()
        reader = _Reader(os.environ if env is None else env)
        settings = cls(
            host=reader.get("HOST", str, d.host),
            port=reader.get("PORT", _port, d.port),
            database_url=reader.get("DATABASE_URL", _secret, None),
            data_dir=reader.get("DATA_DIR", Path, d.data_dir),
            admin_token=reader.get("ADMIN_TOKEN", _token, None),
            keks=reader.get("KEKS", parse_keks, ()),
            scheduler=reader.get("SCHEDULER", _flag, d.scheduler),
            scheduler_interval_seconds=reader.get(
                "SCHEDULER_INTERVAL", _positive_float, d.scheduler_interval_seconds
            ),
            remote_allow=reader.get("REMOTE_ALLOW", _allow_list, ()),
            remote_allow_http=reader.get("REMOTE_ALLOW_HTTP", _flag, False),
            remote_timeout_seconds=reader.get(
                "REMOTE_TIMEOUT", _positive_float, d.remote_timeout_seconds
            ),
            remote_connect_timeout_seconds=reader.get(
                "REMOTE_CONNECT_TIMEOUT",
                _positive_float,
                d.remote_connect_timeout_seconds,
            ),
            remote_max_bytes=reader.get(
                "REMOTE_MAX_BYTES", _positive_int, d.remote_max_bytes
            ),
            remote_min_ttl_seconds=reader.get(
                "REMOTE_MIN_TTL", _period, d.remote_min_ttl_seconds
            ),
            remote_max_ttl_seconds=reader.get(
                "REMOTE_MAX_TTL", _period, d.remote_max_ttl_seconds
            ),
            remote_max_stale_seconds=reader.get(
                "REMOTE_MAX_STALE", _period, d.remote_max_stale_seconds
            ),
            remote_refetch_interval_seconds=reader.get(
                "REMOTE_REFETCH_INTERVAL",
                _positive_float,
                d.remote_refetch_interval_seconds,
            ),
            metrics_port=reader.get("METRICS_PORT", _port, None),
            log_format=reader.get("LOG_FORMAT", _choice("json", "text"), "json"),
            log_level=reader.get("LOG_LEVEL", _level, d.log_level),
            default_alg=reader.get("DEFAULT_ALG", _choice(*_ALGS), d.default_alg),
            default_rsa_key_size=reader.get(
                "DEFAULT_RSA_KEY_SIZE", _rsa_size, d.default_rsa_key_size
            ),
            default_rotation_period_seconds=reader.get(
                "ROTATION_PERIOD", _period, d.default_rotation_period_seconds
            ),
            default_prepublish_period_seconds=reader.get(
                "PREPUBLISH_PERIOD", _period, d.default_prepublish_period_seconds
            ),
            default_grace_period_seconds=reader.get(
                "GRACE_PERIOD", _period, d.default_grace_period_seconds
            ),
            jwks_max_age_seconds=reader.get(
                "JWKS_MAX_AGE", _period, d.jwks_max_age_seconds
            ),
            jwks_cache_ttl_seconds=reader.get(
                "JWKS_CACHE_TTL", _positive_float, d.jwks_cache_ttl_seconds
            ),
            rotation_rate=reader.get("ROTATION_RATE", parse_rate, d.rotation_rate),
            assertion_rate=reader.get("ASSERTION_RATE", parse_rate, d.assertion_rate),
            jwks_stale_if_error_seconds=reader.get(
                "JWKS_STALE_IF_ERROR",
                _non_negative_float,
                d.jwks_stale_if_error_seconds,
            ),
            jwks_cache_max_entries=reader.get(
                "JWKS_CACHE_MAX_ENTRIES", _positive_int, d.jwks_cache_max_entries
            ),
            max_body_bytes=reader.get("MAX_BODY_BYTES", _positive_int, 64 * 1024),
            max_assertion_lifetime_seconds=reader.get(
                "MAX_ASSERTION_LIFETIME", _period, d.max_assertion_lifetime_seconds
            ),
            db_pool_min=reader.get("DB_POOL_MIN", _positive_int, d.db_pool_min),
            db_pool_max=reader.get("DB_POOL_MAX", _positive_int, d.db_pool_max),
            db_timeout_seconds=reader.get(
                "DB_TIMEOUT", _positive_float, d.db_timeout_seconds
            ),
            shutdown_timeout_seconds=reader.get(
                "SHUTDOWN_TIMEOUT", _positive_float, d.shutdown_timeout_seconds
            ),
            keygen_workers=reader.get("KEYGEN_WORKERS", _positive_int, 0),
            shutdown_delay_seconds=reader.get(
                "SHUTDOWN_DELAY", _non_negative_float, d.shutdown_delay_seconds
            ),
            rotation_batch=reader.get(
                "ROTATION_BATCH", _positive_int, d.rotation_batch
            ),
            rotation_concurrency=reader.get(
                "ROTATION_CONCURRENCY", _positive_int, d.rotation_concurrency
            ),
            rotation_lease_seconds=reader.get(
                "ROTATION_LEASE", _period, d.rotation_lease_seconds
            ),
            expired_key_retention_seconds=reader.get(
                "EXPIRED_KEY_RETENTION", _period, d.expired_key_retention_seconds
            ),
        )
        settings.check()

        return settings

    def check(self) -> None:
        """Refuse combinations that parse but must not run."""
        if not self.embedded:
            missing = [
                name
                for name, value in (
                    ("KEYSVC_ADMIN_TOKEN", self.admin_token),
                    ("KEYSVC_KEKS", self.keks),
                )
                if not value
            ]
            if missing:
                raise ConfigError(
                    f"{' and '.join(missing)} must be set when KEYSVC_DATABASE_URL "
                    "is: production never runs on generated secrets"
                )
        for variable, value in (
            ("KEYSVC_ROTATION_BATCH", self.rotation_batch),
            ("KEYSVC_ROTATION_CONCURRENCY", self.rotation_concurrency),
            ("KEYSVC_ROTATION_LEASE", self.rotation_lease_seconds),
        ):
            if value < 1:
                raise ConfigError(f"{variable} must be at least 1")
        if self.db_pool_min > self.db_pool_max:
            raise ConfigError("KEYSVC_DB_POOL_MIN exceeds KEYSVC_DB_POOL_MAX")
        if self.remote_min_ttl_seconds > self.remote_max_ttl_seconds:
            raise ConfigError("KEYSVC_REMOTE_MIN_TTL exceeds KEYSVC_REMOTE_MAX_TTL")
        if self.remote_max_bytes < 1024:
            raise ConfigError("KEYSVC_REMOTE_MAX_BYTES must be at least 1024")


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def get(self, name: str, parse: Callable[[str], T], default: T) -> T:
        variable = f"KEYSVC_{name}"
        raw = self._env.get(variable)
        if raw is None or raw.strip() == "":
            return default
        try:
            return parse(raw.strip())
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{variable}: {exc}") from exc


def _port(raw: str) -> int:
    port = int(raw)
    if not 0 <= port <= 65535:
        raise ValueError(f"{port} is not a TCP port")

    return port


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("must not be negative")

    return value


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise ValueError("must be a positive number")

    return value


def _non_negative_float(raw: str) -> float:
    value = float(raw)
    if not value >= 0:
        raise ValueError("must be zero or a positive number")

    return value


def _flag(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{raw!r} is not 1 or 0")


def _period(raw: str) -> int:
    return parse_period(int(raw) if raw.isdigit() else raw)


def _secret(raw: str) -> Secret:
    return Secret(raw)


def _token(raw: str) -> Secret:
    # At least 256 bits of randomness, written in any printable form.
    if len(raw) < 32:
        raise ValueError("must be at least 32 characters (256 bits of randomness)")

    return Secret(raw)


def _rsa_size(raw: str) -> int:
    size = int(raw)
    if size not in (2048, 3072, 4096):
        raise ValueError("must be 2048, 3072 or 4096")

    return size


def _level(raw: str) -> str:
    level = raw.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError(f"{raw!r} is not DEBUG, INFO, WARNING or ERROR")

    return level


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw not in choices:
            raise ValueError(f"{raw!r} is not one of {', '.join(choices)}")
        return raw

    return parse


def _allow_list(raw: str) -> tuple[str, ...]:
    """Host names or CIDRs, comma-separated; CIDRs must parse."""
    entries = tuple(e.strip() for e in raw.split(",") if e.strip())
    for entry in entries:
        if "/" in entry or entry.replace(".", "").isdigit() or ":" in entry:
            ipaddress.ip_network(entry, strict=False)

    return entries
