"""Concurrent HTTP readiness probes of fleet servers.

Readiness is HTTP, not a log regex: ``/health`` answers 200 and ``/v1/models``
lists the served name. For vLLM we also read queue and KV-cache figures from
``/metrics``. All probes of one ``status`` run share one client and run at once.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import httpx

_METRIC = re.compile(
    r"^(vllm:num_requests_running|vllm:num_requests_waiting|vllm:kv_cache_usage_perc|vllm:gpu_cache_usage_perc)"
    r"(\{[^}]*\})?\s+([0-9.eE+-]+|NaN)\s*$",
    re.M,
)


@dataclass
class ProbeResult:
    url: str
    healthy: bool = False
    models: list[str] = field(default_factory=list)
    status: int | None = None
    error: str | None = None
    running: float | None = None
    waiting: float | None = None
    kv_cache_usage: float | None = None  # 0..1
    latency_ms: float | None = None
    health_json: dict[str, Any] | None = None  # the body of /health when it is a JSON object (the proxy's is)


def parse_vllm_metrics(text: str) -> dict[str, float]:
    """Sum each vLLM gauge over its label sets (one per model on a server)."""
    out: dict[str, float] = {}
    for name, _labels, value in _METRIC.findall(text):
        if value == "NaN":
            continue
        key = "vllm:kv_cache_usage_perc" if name == "vllm:gpu_cache_usage_perc" else name
        out[key] = out.get(key, 0.0) + float(value)
    return out


class _Getter(Protocol):
    """What _probe_one needs of a client: an httpx.AsyncClient, or _SyncAdapter over a sync one."""

    async def get(self, url: str, *, headers: dict[str, str] | None = None) -> httpx.Response: ...


async def _probe_one(client: _Getter, url: str, api_key: str | None, metrics: bool) -> ProbeResult:
    import httpx

    res = ProbeResult(url)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    t0 = time.perf_counter()
    try:
        # With the key: a proxy with a token details /health (the backends it routes to) only for it.
        r = await client.get(f"{url}/health", headers=headers)
        res.status = r.status_code
        res.latency_ms = (time.perf_counter() - t0) * 1000
        if r.headers.get("content-type", "").startswith("application/json"):
            try:
                body = r.json()
            except ValueError:  # an empty or odd body says nothing more than the status does
                body = None
            res.health_json = body if isinstance(body, dict) else None
        if r.status_code != 200:
            res.error = f"/health answered {r.status_code}"
            return res
        r = await client.get(f"{url}/v1/models", headers=headers)
        if r.status_code != 200:
            res.error = f"/v1/models answered {r.status_code}"
            return res
        res.models = [m.get("id", "") for m in r.json().get("data", [])]
        res.healthy = True
        if metrics:
            try:
                m = await client.get(f"{url}/metrics", headers=headers)
                if m.status_code == 200:
                    vals = parse_vllm_metrics(m.text)
                    res.running = vals.get("vllm:num_requests_running")
                    res.waiting = vals.get("vllm:num_requests_waiting")
                    res.kv_cache_usage = vals.get("vllm:kv_cache_usage_perc")
            except httpx.HTTPError:
                pass
    except httpx.HTTPError as exc:
        res.error = _short(exc)
    except ValueError as exc:
        res.error = f"bad response: {exc}"
    return res


def _short(exc: Exception) -> str:
    name = type(exc).__name__
    msg = str(exc) or name
    return msg if len(msg) < 120 else msg[:117] + "..."


async def probe_all(
    urls: Sequence[str],
    *,
    api_key: str | None = None,
    metrics: bool = True,
    timeout: float = 2.0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> dict[str, ProbeResult]:
    import httpx

    if not urls:
        return {}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=timeout, limits=limits, transport=transport, trust_env=False) as client:
        results = await asyncio.gather(*(_probe_one(client, u, api_key, metrics) for u in urls))
    return {r.url: r for r in results}


def probe_all_any(
    urls: Sequence[str],
    *,
    transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None = None,
    api_key: str | None = None,
    metrics: bool = True,
    timeout: float = 2.0,
) -> dict[str, ProbeResult]:
    """Probe from synchronous code. A synchronous transport (the SSH tunnel) is driven from
    a thread pool, since each tunnelled connection is a blocking channel."""
    import httpx

    if transport is None or isinstance(transport, httpx.AsyncBaseTransport):
        return asyncio.run(probe_all(urls, transport=transport, api_key=api_key, metrics=metrics, timeout=timeout))
    return asyncio.run(_probe_threaded(urls, transport, api_key=api_key, metrics=metrics, timeout=timeout))


async def _probe_threaded(urls: Sequence[str], transport: httpx.BaseTransport, *, api_key: str | None = None,
                          metrics: bool = True, timeout: float = 2.0) -> dict[str, ProbeResult]:
    import httpx

    with httpx.Client(timeout=timeout, transport=transport, trust_env=False) as sync_client:
        adapter = _SyncAdapter(sync_client)
        results = await asyncio.gather(*(_probe_one(adapter, u, api_key, metrics) for u in urls))
    return {r.url: r for r in results}


class _SyncAdapter:
    """The one method _probe_one needs, run in a worker thread."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client

    async def get(self, url: str, *, headers: dict[str, str] | None = None) -> httpx.Response:
        return await asyncio.to_thread(self.client.get, url, headers=headers)
