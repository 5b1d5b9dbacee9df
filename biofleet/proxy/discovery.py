"""Where backends are: the registry directory or a static list.

A *source* answers "which backends exist now" (:class:`RegistrySource`,
:class:`StaticSource`); the :class:`BackendPool` keeps one live
:class:`Backend` per endpoint key with its health and load. The pool is
replaced piecewise: a request in flight keeps a reference to the ``Backend``
it was sent to, so a backend that moves or disappears mid-request still has
its counters decremented correctly and the request is not dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from biofleet.proxy.config import ProxyConfig
from biofleet.registry import problems_line, read_records

# A registry listing plus up to 10,000 small reads: well under a second even on a loaded NFS or
# Lustre; past this the last listing stays in use (and no second read starts) until it returns.
FETCH_TIMEOUT_S = 5.0

log = logging.getLogger("biofleet.proxy")


@dataclass(frozen=True)
class BackendSpec:
    """What discovery knows about one backend."""

    key: str
    url: str  # base URL, no trailing slash, no /v1
    served_names: tuple[str, ...]
    kind: Literal["generate", "embed"] = "generate"


@dataclass(eq=False)
class Backend:
    """A backend as the proxy sees it: spec plus health and load."""

    spec: BackendSpec
    inflight: int = 0
    healthy: bool = True  # optimistic until a probe or a request says otherwise
    ok_streak: int = 0
    waiting: float = 0.0  # vllm:num_requests_waiting
    kv_usage: float = 0.0  # vllm:kv_cache_usage_perc
    removed: bool = False
    ever_up: bool = False  # a first passing probe admits at once; re-admission needs a streak
    draining: bool = False  # an elastic replica being released: in-flight requests finish, no new ones
    last_error: str | None = field(default=None, repr=False)
    # passive outlier detection (biofleet.proxy.health.Outliers)
    fails: int = 0  # consecutive failed answers: 5xx, timeouts, broken connections
    ejections: int = 0  # how many times in a row it was ejected; sets the next interval
    ejected_until: float = 0.0  # time.monotonic(): passing probes do not re-admit it before this
    last_ejected: float = 0.0
    needs_deep_pass: bool = False  # re-admission waits for a passing deep probe too
    last_progress: float = 0.0  # time.monotonic() of the last answer that came from it

    @property
    def key(self) -> str:
        return self.spec.key

    @property
    def url(self) -> str:
        return self.spec.url

    def mark_down(self, reason: str) -> None:
        if self.healthy:
            log.warning("backend %s ejected: %s", self.key, reason)
        self.healthy = False
        self.ok_streak = 0
        self.last_error = reason


class Source(Protocol):
    async def fetch(self) -> list[BackendSpec]: ...


class StaticSource:
    def __init__(self, specs: Iterable[BackendSpec]):
        self._specs = list(specs)

    async def fetch(self) -> list[BackendSpec]:
        return list(self._specs)


class DiscoveryStalled(Exception):
    """Reading the registry did not finish within :data:`FETCH_TIMEOUT_S`."""


class RegistrySource:
    """Backends from ``<fleet>/registry/*.json`` (see :mod:`biofleet.registry`).

    Read off the event loop (a slow shared filesystem never stalls requests), one read at a
    time (a read that hangs is waited for, not piled up), within :data:`FETCH_TIMEOUT_S`. A bad
    record is skipped and logged once, when the set of bad records changes, not on every poll.
    """

    def __init__(self, registry_dir: Path, timeout_s: float = FETCH_TIMEOUT_S):
        self.registry_dir = registry_dir
        self.timeout_s = timeout_s
        self._pending: asyncio.Future[list[BackendSpec]] | None = None
        self._bad: list[str] = []

    def fetch_sync(self) -> list[BackendSpec]:
        problems: list[str] = []
        specs = [
            BackendSpec(key=ep.key, url=ep.url.rstrip("/"), served_names=tuple(ep.served_names), kind=ep.kind)
            for ep in read_records(self.registry_dir, problems)
        ]
        problems.sort()
        if problems != self._bad:
            self._bad = problems
            if problems:
                log.warning("registry %s: %d record(s) skipped: %s", self.registry_dir, len(problems),
                            problems_line(problems))
            else:
                log.info("registry %s: no bad records any more", self.registry_dir)
        return specs

    async def fetch(self) -> list[BackendSpec]:
        if self._pending is None or self._pending.done():
            self._pending = asyncio.ensure_future(asyncio.to_thread(self.fetch_sync))
        try:
            return await asyncio.wait_for(asyncio.shield(self._pending), self.timeout_s)
        except asyncio.TimeoutError:
            raise DiscoveryStalled(f"reading {self.registry_dir} took longer than {self.timeout_s:g} s") from None


class CombinedSource:
    def __init__(self, sources: Iterable[Source]):
        self.sources = list(sources)

    async def fetch(self) -> list[BackendSpec]:
        out: list[BackendSpec] = []
        for s in self.sources:
            out.extend(await s.fetch())
        return out


def source_from_config(config: ProxyConfig) -> Source:
    sources: list[Source] = []
    if config.backends:
        sources.append(StaticSource(
            BackendSpec(key=name, url=b.url.rstrip("/"), served_names=b.served_names, kind=b.kind)
            for name, b in config.backends.items()
        ))
    if config.registry_dir is not None:
        sources.append(RegistrySource(config.registry_dir))
    return sources[0] if len(sources) == 1 else CombinedSource(sources)


class BackendPool:
    """The current backends, indexed by served name."""

    def __init__(self) -> None:
        self.backends: dict[str, Backend] = {}
        self.by_model: dict[str, list[Backend]] = {}
        self.version = 0

    def update(self, specs: Iterable[BackendSpec]) -> tuple[list[Backend], list[Backend]]:
        """Apply a fresh listing; returns (added, removed). Unchanged backends keep their state."""
        new: dict[str, Backend] = {}
        added: list[Backend] = []
        for spec in specs:
            if spec.key in new:
                continue  # duplicate key in the listing: first wins
            cur = self.backends.get(spec.key)
            if cur is not None and cur.spec == spec:
                new[spec.key] = cur
            else:
                b = Backend(spec)
                new[spec.key] = b
                added.append(b)
        removed = [b for k, b in self.backends.items() if new.get(k) is not b]
        for b in removed:
            b.removed = True
        if added or removed:
            for b in added:
                log.info("backend %s at %s serves %s", b.key, b.url, ",".join(b.spec.served_names))
            for b in removed:
                log.info("backend %s at %s removed", b.key, b.url)
            self.backends = new
            by_model: dict[str, list[Backend]] = {}
            for b in new.values():
                for name in b.spec.served_names:
                    by_model.setdefault(name, []).append(b)
            self.by_model = by_model
            self.version += 1
        return added, removed

    def replicas(self, served: str) -> list[Backend]:
        return self.by_model.get(served, [])

    def served_names(self) -> list[str]:
        return list(self.by_model)
