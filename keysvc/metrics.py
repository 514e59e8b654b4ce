"""Every Prometheus family keysvc exports, on one registry a process.

Labels never carry a client id or a kid: their number is unbounded, and a
kid in a time series database is a needless disclosure.
"""

from __future__ import annotations

import functools
from typing import TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
)

from keysvc import __version__

_Family = TypeVar("_Family", Counter, Gauge, Histogram)

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0
)  # fmt: skip
_KEYGEN_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_JOB_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0)


class Metrics:
    """The families of one process, registered on their own registry."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)

        self.http_requests = Counter(
            "keysvc_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            "keysvc_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template and method.",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.jwks_cache_hits = Counter(
            "keysvc_jwks_cache_hits", "JWKS documents served from memory.", registry=r
        )
        self.jwks_cache_misses = Counter(
            "keysvc_jwks_cache_misses",
            "JWKS documents built from the database.",
            registry=r,
        )
        self.jwks_stale_served = Counter(
            "keysvc_jwks_stale_served",
            "JWKS documents served past their cache lifetime because the "
            "database could not answer.",
            registry=r,
        )
        self.rotations = Counter(
            "keysvc_rotations",
            "Key rotations, by trigger (scheduled, manual, forced).",
            ["trigger"],
            registry=r,
        )
        self.revocations = Counter("keysvc_revocations", "Keys revoked.", registry=r)
        self.keys = Gauge(
            "keysvc_keys", "Keys in the database, by state.", ["state"], registry=r
        )
        self.oldest_active_key_age = Gauge(
            "keysvc_oldest_active_key_age_seconds",
            "Age of the oldest active key of any client.",
            registry=r,
        )
        self.clients_rotation_overdue = Gauge(
            "keysvc_clients_rotation_overdue",
            "Clients whose active key is older than their rotation period.",
            registry=r,
        )
        self.verifications = Counter(
            "keysvc_verifications",
            "Client assertions verified, by outcome (valid or the refusal reason).",
            ["outcome"],
            registry=r,
        )
        self.assertions_signed = Counter(
            "keysvc_assertions_signed",
            "Client assertions signed, by algorithm.",
            ["alg"],
            registry=r,
        )
        self.remote_fetches = Counter(
            "keysvc_remote_fetches",
            "Fetches of client-hosted JWKS, by outcome.",
            ["outcome"],
            registry=r,
        )
        self.remote_sets_stale = Gauge(
            "keysvc_remote_sets_stale",
            "Client-hosted JWKS currently served past their freshness.",
            registry=r,
        )
        self.remote_stale_served = Counter(
            "keysvc_remote_stale_served",
            "Responses that served a client-hosted JWKS past its freshness.",
            registry=r,
        )
        self.scheduler_runs = Counter(
            "keysvc_scheduler_runs",
            "Scheduler job runs, by task and outcome.",
            # Not "job": Prometheus owns that label for the scrape target.
            ["task", "outcome"],
            registry=r,
        )
        self.scheduler_duration = Histogram(
            "keysvc_scheduler_run_duration_seconds",
            "Duration of scheduler job runs, by task.",
            ["task"],
            buckets=_JOB_BUCKETS,
            registry=r,
        )
        self.scheduler_last_success = Gauge(
            "keysvc_scheduler_last_success_timestamp_seconds",
            "Unix time of the last successful run of each scheduler task.",
            ["task"],
            registry=r,
        )
        self.key_generation = Histogram(
            "keysvc_key_generation_duration_seconds",
            "Time to generate one key pair, by algorithm.",
            ["alg"],
            buckets=_KEYGEN_BUCKETS,
            registry=r,
        )
        self.ready = Gauge(
            "keysvc_ready", "1 while the process is ready for traffic.", registry=r
        )
        self.build = Info("keysvc_build", "The running keysvc version.", registry=r)
        self.build.info({"version": __version__})


@functools.lru_cache(maxsize=4096)
def child(family: _Family, *labels: str) -> _Family:
    """``family.labels(*labels)``, looked up once: on a hot path ``labels()``
    costs more than the increment it leads to. Label values are bounded sets
    (routes, algorithms, reasons), so the cache stays small."""
    return family.labels(*labels)
