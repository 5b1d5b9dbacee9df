"""Active health probes and load scraping.

Every ``probe_interval_s`` each backend gets ``GET /health`` (vLLM answers 200
while its engine lives, 503 once it died) and, for vLLM-like engines,
``GET /metrics`` for ``vllm:num_requests_waiting`` and
``vllm:kv_cache_usage_perc`` (older vLLM: ``vllm:gpu_cache_usage_perc``), which
the router uses to break ties. Backends that have not yet passed a first probe
are probed more often, so a server is routable as soon as it is ready. A failed
probe ejects a backend at once;
``readmit_after`` passing probes in a row bring it back. Passive ejection (a
refused connection during a request) happens in the transport.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

import httpx

from biofleet.proxy.discovery import Backend

log = logging.getLogger("biofleet.proxy")

_WAITING = "vllm:num_requests_waiting"
_KV = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")


def parse_vllm_load(text: str) -> tuple[float | None, float | None]:
    """(waiting requests, kv cache usage 0..1) from Prometheus text; summed/maxed over label sets."""
    waiting: float | None = None
    kv: float | None = None
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        name_end = min((i for i in (line.find("{"), line.find(" ")) if i >= 0), default=-1)
        if name_end < 0:
            continue
        name = line[:name_end]
        if name != _WAITING and name not in _KV:
            continue
        try:
            value = float(line.rsplit(" ", 1)[1] if "}" not in line else line[line.rindex("}") + 1:].split()[0])
        except (ValueError, IndexError):
            continue
        if name == _WAITING:
            waiting = (waiting or 0.0) + value
        else:
            kv = value if kv is None else max(kv, value)
    return waiting, kv


class HealthChecker:
    def __init__(
        self,
        client: httpx.AsyncClient,
        backends: Callable[[], Iterable[Backend]],
        *,
        interval_s: float,
        timeout_s: float,
        readmit_after: int,
        starting_interval_s: float = 0.5,
        scrape_metrics: bool = True,
        on_change: Callable[[Backend], None] | None = None,
    ):
        self.client = client
        self.backends = backends
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.readmit_after = readmit_after
        self.starting_interval_s = starting_interval_s
        self.scrape_metrics = scrape_metrics
        self.on_change = on_change

    async def probe(self, b: Backend) -> None:
        was = b.healthy
        try:
            r = await self.client.get(f"{b.url}/health", timeout=self.timeout_s)
            ok = r.status_code == 200
            reason = f"/health answered {r.status_code}"
        except httpx.HTTPError as exc:
            ok, reason = False, f"/health failed: {type(exc).__name__}"
        if ok:
            b.ok_streak += 1
            if not b.healthy and (b.ok_streak >= self.readmit_after or not b.ever_up):
                b.healthy = True
                b.last_error = None
                if b.ever_up:
                    log.info("backend %s re-admitted after %d passing probes", b.key, b.ok_streak)
            if b.healthy:
                b.ever_up = True
        else:
            b.mark_down(reason)
        if ok and self.scrape_metrics:
            await self._scrape(b)
        if self.on_change is not None and was != b.healthy:
            self.on_change(b)

    async def _scrape(self, b: Backend) -> None:
        try:
            r = await self.client.get(f"{b.url}/metrics", timeout=self.timeout_s)
        except httpx.HTTPError:
            return
        if r.status_code != 200:
            return
        waiting, kv = parse_vllm_load(r.text)
        b.waiting = waiting or 0.0
        b.kv_usage = kv or 0.0

    async def probe_all(self, backends: Iterable[Backend] | None = None) -> None:
        todo = list(self.backends() if backends is None else backends)
        if todo:
            await asyncio.gather(*(self.probe(b) for b in todo), return_exceptions=True)

    async def run(self) -> None:
        """Probe every backend each ``interval_s``; backends that have never passed a probe (a
        server still loading its model) every ``starting_interval_s``, so one that just became
        ready is routable within a fraction of a second instead of a whole probe interval."""
        tick = min(self.interval_s, self.starting_interval_s)
        last_full = time.monotonic()
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            if now - last_full >= self.interval_s - tick / 2:
                last_full = now
                todo = None
            else:
                todo = [b for b in self.backends() if not b.ever_up]
            try:
                await self.probe_all(todo)
            except Exception:  # never let the loop die
                log.exception("health probe round failed")
