"""Prometheus metrics of one proxy app, in its own registry (no global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class ProxyMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("biofleet_proxy_requests", "Requests answered, by served model, backend and status.",
                                ["model", "backend", "status"], registry=r)
        self.errors = Counter("biofleet_proxy_errors", "Requests that ended in an error, by kind.",
                              ["model", "kind"], registry=r)
        self.retries = Counter("biofleet_proxy_retries", "Attempts repeated on another replica.",
                               ["model"], registry=r)
        self.fallbacks = Counter("biofleet_proxy_fallbacks", "Requests served by a fallback model or cloud.",
                                 ["model", "to"], registry=r)
        self.latency = Histogram("biofleet_proxy_request_seconds", "Time from request to last byte.",
                                 ["model", "backend"], buckets=_LATENCY_BUCKETS, registry=r)
        self.ttfb = Histogram("biofleet_proxy_first_byte_seconds", "Time from request to first upstream byte.",
                              ["model", "backend"], buckets=_LATENCY_BUCKETS, registry=r)
        self.inflight = Gauge("biofleet_proxy_inflight", "Requests in flight per backend.", ["backend"], registry=r)
        self.healthy = Gauge("biofleet_proxy_backend_healthy", "1 when the backend is in rotation.",
                             ["backend"], registry=r)
        self.upstream_waiting = Gauge("biofleet_proxy_backend_waiting",
                                      "vllm:num_requests_waiting last scraped from the backend.",
                                      ["backend"], registry=r)

    def forget_backend(self, key: str) -> None:
        for g in (self.inflight, self.healthy, self.upstream_waiting):
            try:
                g.remove(key)
            except KeyError:
                pass

    def render(self) -> bytes:
        return generate_latest(self.registry)
