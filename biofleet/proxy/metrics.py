"""Prometheus metrics of one proxy app, in its own registry (no global state).

Every label value comes from configuration or discovery, never from a client: a model name a
client sent that no route knows is counted as :data:`OTHER_MODEL`, and every series of a backend
is dropped when discovery removes it, so the size of ``/metrics`` is bounded by the fleet, not by
the traffic.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
OTHER_MODEL = "(other)"  # the label of every model name no route knows


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
        self.ejections = Counter("biofleet_proxy_ejections", "Replicas taken out of rotation, by reason.",
                                 ["backend", "reason"], registry=r)
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
        # (metric, label values) -> child, for the series keyed by a backend: labels() takes a lock
        # and normalises its arguments on every call, so the hot path looks its children up here;
        # and forget_backend finds here which series to drop.
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self._of_backend: dict[str, list[tuple[Any, tuple[str, ...]]]] = {}

    def _child(self, metric: Any, labels: tuple[str, ...], backend: str) -> Any:
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
            self._of_backend.setdefault(backend, []).append(key)
        return child

    def answered(self, model: str, backend: str, status: int, seconds: float) -> None:
        self._child(self.requests, (model, backend, str(status)), backend).inc()
        self._child(self.latency, (model, backend), backend).observe(seconds)

    def first_byte(self, model: str, backend: str, seconds: float) -> None:
        self._child(self.ttfb, (model, backend), backend).observe(seconds)

    def inflight_gauge(self, backend: str) -> Gauge:
        return self._child(self.inflight, (backend,), backend)

    def ejected(self, backend: str, reason: str) -> None:
        self._child(self.ejections, (backend, reason), backend).inc()

    def forget_backend(self, key: str) -> None:
        """Drop every series labelled with this backend (it left the registry)."""
        for g in (self.healthy, self.upstream_waiting):
            try:
                g.remove(key)
            except KeyError:
                pass
        for metric, labels in self._of_backend.pop(key, []):
            del self._children[(metric, labels)]
            try:
                metric.remove(*labels)
            except KeyError:
                pass

    def render(self) -> bytes:
        return generate_latest(self.registry)
