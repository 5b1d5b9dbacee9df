"""Active health probes and load scraping.

Every ``probe_interval_s`` each backend gets ``GET /health`` (vLLM answers 200
while its engine lives, 503 once it died) and, for vLLM-like engines,
``GET /metrics`` for ``vllm:num_requests_waiting`` and
``vllm:kv_cache_usage_perc`` (older vLLM: ``vllm:gpu_cache_usage_perc``), which
the router uses to break ties. Backends that have not yet passed a first probe
are probed more often, so a server is routable as soon as it is ready. A failed
probe ejects a backend at once;
``readmit_after`` passing probes in a row bring it back. Passive ejection (a
refused connection during a request) happens in the transport; :class:`Outliers` ejects a replica
whose answers fail (consecutive 5xx or timeouts) for a growing interval, as Envoy's outlier
detection does. The optional deep probe (a one-token completion) catches an engine that hangs
while its ``/health`` still answers 200.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

import httpx

from biofleet.proxy.discovery import Backend, BackendPool

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


class Outliers:
    """Passive ejection from what requests see (Envoy's outlier detection, consecutive-5xx flavour).

    ``eject_after`` failed answers in a row (5xx, timeouts, broken connections) take a replica out
    for ``eject_base_s``, doubling with each ejection in a row up to ``eject_max_s``; it is probed
    back in only after that interval. Never the last healthy replica of a model: with nothing to
    fail over to, the client is better served by the replica's own answer (Envoy's
    ``max_ejection_percent`` keeps hosts for the same reason). ``on_eject(b)`` is told (the upstream
    pool aborts requests still waiting there, so they are retried elsewhere).
    """

    def __init__(self, pool: BackendPool, *, eject_after: int, base_s: float, max_s: float,
                 on_eject: Callable[[Backend, str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.pool = pool
        self.eject_after = eject_after
        self.base_s = base_s
        self.max_s = max_s
        self.on_eject = on_eject
        self.clock = clock

    def success(self, b: Backend) -> None:
        b.fails = 0

    def failure(self, b: Backend, reason: str) -> None:
        b.fails += 1
        if b.fails >= self.eject_after and b.healthy and self.may_eject(b):
            self.eject(b, f"{b.fails} failed answers in a row, the last: {reason}")

    def may_eject(self, b: Backend) -> bool:
        """True when every model it serves keeps another healthy replica."""
        return all(any(o is not b and o.healthy and not o.removed for o in self.pool.replicas(name))
                   for name in b.spec.served_names)

    def eject(self, b: Backend, reason: str, *, deep: bool = False) -> None:
        now = self.clock()
        if now - b.last_ejected > self.max_s + self.interval(b):
            b.ejections = 0  # in rotation long enough since the last time: start again from base_s
        span = self.interval(b)
        b.ejections += 1
        b.last_ejected = now
        b.ejected_until = now + span
        b.needs_deep_pass = b.needs_deep_pass or deep
        b.fails = 0
        b.mark_down(f"{reason}; out for {span:g} s")
        if self.on_eject is not None:
            self.on_eject(b, "hung" if deep else "failing")

    def interval(self, b: Backend) -> float:
        return float(min(self.base_s * 2 ** min(b.ejections, 32), self.max_s))


class DeepProbe:
    """A one-token completion (or a one-word embedding) asked of one replica."""

    def __init__(self, client: httpx.AsyncClient, *, timeout_s: float, api_key: str | None = None):
        self.client = client
        self.timeout_s = timeout_s
        self.api_key = api_key
        self.odd: set[str] = set()  # backends whose odd answer was logged already

    async def __call__(self, b: Backend) -> bool | None:
        """True: it answered; False: it is broken (5xx, or no answer in time); None: no verdict."""
        name = b.spec.served_names[0]
        payload: dict[str, object]
        if b.spec.kind == "embed":
            path, payload = "/v1/embeddings", {"model": name, "input": "ping"}
        else:
            path, payload = "/v1/completions", {"model": name, "prompt": "ping", "max_tokens": 1, "temperature": 0}
        headers = {"authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            r = await self.client.post(b.url + path, json=payload, headers=headers, timeout=self.timeout_s)
        except httpx.TimeoutException:
            return False
        except httpx.HTTPError:
            return False
        if r.status_code == 200:
            return True
        if r.status_code >= 500:
            return False
        if b.key not in self.odd:  # 4xx: a model that takes no plain completions, a key we lack...
            self.odd.add(b.key)
            log.info("deep probe of %s answered %d; it says nothing about the engine", b.key, r.status_code)
        return None


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
        deep: DeepProbe | None = None,
        deep_interval_s: float = 15.0,
        outliers: Outliers | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.client = client
        self.backends = backends
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.readmit_after = readmit_after
        self.starting_interval_s = starting_interval_s
        self.scrape_metrics = scrape_metrics
        self.on_change = on_change
        self.deep = deep
        self.deep_interval_s = deep_interval_s
        self.outliers = outliers
        self.clock = clock
        self._readmitting: set[Backend] = set()
        self._tasks: set[asyncio.Future[None]] = set()

    async def probe(self, b: Backend) -> None:
        was = b.healthy
        try:
            r = await self.client.get(f"{b.url}/health", timeout=self.timeout_s)
            ok = r.status_code == 200
            reason = f"/health answered {r.status_code}"
        except httpx.HTTPError as exc:
            ok, reason = False, f"/health failed: {type(exc).__name__}"
        if ok:
            if not b.healthy and self.clock() < b.ejected_until:
                b.ok_streak = 0  # ejected for its answers: passing /health does not count before the interval
            else:
                b.ok_streak += 1
            if not b.healthy and b.ok_streak >= 1 and (b.ok_streak >= self.readmit_after or not b.ever_up):
                if b.needs_deep_pass and self.deep is not None:
                    self._deep_readmit(b)  # in the background: a deep probe may take long
                else:
                    self._readmit(b)
            if b.healthy:
                b.ever_up = True
        else:
            b.mark_down(reason)
        if ok and self.scrape_metrics:
            await self._scrape(b)
        if self.on_change is not None and was != b.healthy:
            self.on_change(b)

    def _readmit(self, b: Backend) -> None:
        b.healthy = True
        b.needs_deep_pass = False
        b.fails = 0
        b.last_error = None
        if b.ever_up:
            log.info("backend %s re-admitted after %d passing probes", b.key, b.ok_streak)

    def _deep_readmit(self, b: Backend) -> None:
        if b in self._readmitting:
            return
        self._readmitting.add(b)
        task = asyncio.ensure_future(self._deep_then_readmit(b))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deep_then_readmit(self, b: Backend) -> None:
        assert self.deep is not None
        try:
            verdict = await self.deep(b)
            if b.healthy or b.removed:
                return
            if verdict is False:
                b.ok_streak = 0
                if self.outliers is not None:
                    self.outliers.eject(b, "still fails the deep probe", deep=True)
                return
            self._readmit(b)
            if self.on_change is not None:
                self.on_change(b)
        finally:
            self._readmitting.discard(b)

    async def _scrape(self, b: Backend) -> None:
        try:
            r = await self.client.get(f"{b.url}/metrics", timeout=self.timeout_s)
        except httpx.HTTPError:
            return
        if r.status_code != 200:
            return
        waiting, kv = parse_vllm_load(r.text[:1 << 20])
        b.waiting = waiting or 0.0
        b.kv_usage = kv or 0.0

    async def probe_all(self, backends: Iterable[Backend] | None = None) -> None:
        todo = list(self.backends() if backends is None else backends)
        if todo:
            await asyncio.gather(*(self.probe(b) for b in todo), return_exceptions=True)

    async def deep_check(self, b: Backend) -> None:
        """Eject a replica that answers neither the deep probe nor anything else meanwhile."""
        assert self.deep is not None
        started = self.clock()
        verdict = await self.deep(b)
        if verdict is not False or not b.healthy or b.removed:
            return
        if b.last_progress >= started:
            return  # it answered other requests meanwhile: busy, not hung
        was = b.healthy
        if self.outliers is not None:
            self.outliers.eject(b, f"deep probe: no answer within {self.deep.timeout_s:g} s", deep=True)
        else:
            b.mark_down("deep probe failed")
        if self.on_change is not None and was != b.healthy:
            self.on_change(b)

    async def run_deep(self) -> None:
        """Every ``deep_interval_s``, a deep probe of each healthy replica that answered nothing
        in that time (one that did is evidently alive)."""
        while True:
            await asyncio.sleep(self.deep_interval_s)
            now = self.clock()
            todo = [b for b in self.backends()
                    if b.healthy and not b.removed and now - b.last_progress >= self.deep_interval_s]
            if todo:
                await asyncio.gather(*(self.deep_check(b) for b in todo), return_exceptions=True)

    async def run(self) -> None:
        """Probe every backend each ``interval_s``; backends that have never passed a probe (a
        server still loading its model) every ``starting_interval_s``, so one that just became
        ready is routable within a fraction of a second instead of a whole probe interval."""
        tick = min(self.interval_s, self.starting_interval_s)
        last_full = time.monotonic()
        try:
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
        finally:
            for t in list(self._tasks):
                t.cancel()
