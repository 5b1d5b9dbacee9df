"""How many replicas an elastic server should have: the policy a profile writes, and the pure
decision it leads to.

Nothing here does I/O or reads a clock: :func:`decide` takes what the controller observed (its
replicas by phase, the requests held for it, the load now and over a window, the time) and returns
the actions to take. :class:`LoadWindow` keeps the load history the decision needs. Both are
unit-tested against hand-made situations; :mod:`biofleet.elastic.controller` feeds them and acts.

The rules, in the order :func:`decide` applies them:

1. a draining replica with nothing in flight is cancelled (its in-flight requests have finished);
2. the floor: never fewer than ``min`` replicas, and while requests are held, enough for them
   (``ceil(held / target)``, at least one) — a draining replica is taken back before a new one is
   submitted, and nothing new is submitted while a failed start backs off;
3. scale up: when the load per ready replica has stayed above ``target`` for ``scale_up_after_s``,
   as many replicas as the load needs now (``ceil(load / target)``), up to ``max``;
4. scale down: once the controller has watched the load for ``idle_s``, replicas beyond what the
   peak of the last ``idle_s`` needed are released — a replica still starting that was decided
   more than ``idle_s`` ago is cancelled, a ready one is drained (the router stops sending it new
   requests; rule 1 cancels it once its requests are done). Never below ``min``, never the last
   replica while requests are held for it.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ReplicaRange(_Frozen):
    """``replicas: {min: 0, max: 4}``: an elastic server, scaled between these by the controller."""

    min: int = Field(0, ge=0, le=256)
    max: int = Field(ge=1, le=256)

    @model_validator(mode="after")
    def _ordered(self) -> ReplicaRange:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max}); min <= max")
        return self


class ScalingPolicy(_Frozen):
    """``scaling:`` of an elastic server (every field has a default)."""

    # What "load" is: requests in flight through the proxy (plus those held), or requests waiting
    # in vLLM's own queue (vllm:num_requests_waiting, scraped by the proxy's probes).
    metric: Literal["inflight", "queue"] = "inflight"
    # The load one ready replica should carry; above it for scale_up_after_s, more are started.
    target: float = Field(4.0, gt=0, le=100_000)
    scale_up_after_s: float = Field(10.0, ge=0, le=3600)
    # A replica is released once the last idle_s could have been served by one replica fewer
    # (the last one: once no request came for idle_s).
    idle_s: float = Field(300.0, ge=1, le=86_400)
    # The longest a request waits for a replica to start (queue wait + start-up); then it gets a
    # 503 with Retry-After and the reason (e.g. PENDING (Resources)).
    cold_start_s: float = Field(600.0, gt=0, le=86_400)
    # Requests held per model while no replica is ready; more are answered 503 at once.
    max_held: int = Field(100, ge=1, le=100_000)
    # How often the controller asks the scheduler about its replicas (one squeue for all).
    poll_s: float = Field(5.0, ge=0.2, le=300)
    # A held streaming request gets an SSE comment this often, so proxies in between keep it open.
    keepalive_s: float = Field(10.0, ge=0.5, le=120)


# ---------------------------------------------------------------------------- what the controller sees


Phase = Literal["starting", "ready", "draining"]


@dataclass(frozen=True)
class ReplicaView:
    """One replica the controller owns, as the decision sees it."""

    id: str  # the intent id (stable from the decision on, before any job id exists)
    phase: Phase  # starting: decided, queued or loading; ready: routed to; draining: no new requests
    since: float  # when it was decided (starting), became ready (ready), began draining (draining)
    inflight: int = 0  # requests the proxy has in flight on it


@dataclass(frozen=True)
class Situation:
    """Everything :func:`decide` needs about one elastic server at one moment."""

    server: str
    policy: ScalingPolicy
    min: int
    max: int
    now: float
    replicas: tuple[ReplicaView, ...] = ()
    held: int = 0  # requests waiting because no replica is ready
    load: float = 0.0  # the policy's metric now: in flight (or queued) on ready replicas, plus held
    high_since: float | None = None  # since when load per ready replica has been above target
    peak: float = 0.0  # the highest concurrency (in flight + held) seen in the last idle_s
    watched_s: float = 0.0  # how long the load has been watched (a restarted controller knows no past)
    backoff_until: float = 0.0  # after failed starts: no new submission before this


@dataclass(frozen=True)
class Action:
    kind: Literal["submit", "drain", "undrain", "cancel"]
    server: str
    reason: str
    replica: str | None = None  # the replica it concerns (None for submit)
    count: int = 1  # submit: how many


def decide(s: Situation) -> list[Action]:
    """The actions that bring ``s.server`` to the replicas its load needs (see the module docstring)."""
    p = s.policy
    out: list[Action] = []
    starting = [r for r in s.replicas if r.phase == "starting"]
    ready = [r for r in s.replicas if r.phase == "ready"]
    draining = [r for r in s.replicas if r.phase == "draining"]
    active = len(starting) + len(ready)

    def grow(n: int, why: str) -> int:
        """Take back draining replicas first (busiest first: they are warm), then submit; returns how many."""
        nonlocal active
        got = 0
        for r in sorted(draining, key=lambda r: -r.inflight)[:n]:
            draining.remove(r)
            out.append(Action("undrain", s.server, why, r.id))
            got += 1
        if n - got > 0 and s.now >= s.backoff_until:
            out.append(Action("submit", s.server, why, count=n - got))
            got = n
        active += got
        return got

    # 2. the floor: min, and enough for what is held
    held_need = math.ceil(s.held / p.target) if s.held else 0
    floor = min(max(s.min, held_need, 1 if s.held else 0), s.max)
    if active < floor:
        if s.held and not active:
            why = f"{s.held} request(s) held and no replica"
        elif s.held:
            why = f"{s.held} request(s) held need {floor} replica(s), {active} on the way"
        else:
            why = f"below min ({active} < {s.min})"
        grow(floor - active, why)

    # 3. scale up on sustained load
    per_ready = s.load / len(ready) if ready else 0.0
    if ready and s.high_since is not None and s.now - s.high_since >= p.scale_up_after_s:
        want = min(math.ceil(s.load / p.target), s.max)
        if want > active:
            grow(want - active, f"load {per_ready:.1f} per ready replica above target {p.target:g} "
                                 f"for {s.now - s.high_since:.0f}s")

    # 1. draining replicas whose requests are done are cancelled (after 2 and 3 took back what they need)
    for r in draining:
        if r.inflight == 0:
            out.append(Action("cancel", s.server, "drained: no request in flight", r.id))

    # 4. scale down once the load has been watched for idle_s
    if s.watched_s >= p.idle_s and not any(a.kind in ("submit", "undrain") for a in out):
        need = max(s.min, math.ceil(s.peak / p.target) if s.peak > 0 else 0, 1 if s.held else 0)
        excess = active - need
        if excess > 0:
            stale = sorted((r for r in starting if s.now - r.since >= p.idle_s), key=lambda r: r.since)
            for r in stale[:excess]:
                out.append(Action("cancel", s.server, f"still not ready after {s.now - r.since:.0f}s and "
                                  f"the last {p.idle_s:g}s needed {need} replica(s)", r.id))
                excess -= 1
            # ready ones (never so many that only replicas still starting would be left): the least
            # busy first, the newest among equals
            for r in sorted(ready, key=lambda r: (r.inflight, -r.since))[:max(min(excess, len(ready) - need), 0)]:
                why = ("no request for " if s.peak == 0 else f"peak load {s.peak:g} over the last ") + \
                      f"{p.idle_s:g}s" + ("" if s.peak == 0 else f" needs {need} replica(s)")
                out.append(Action("drain", s.server, why, r.id))
    return out


# ---------------------------------------------------------------------------- the load history


class LoadWindow:
    """The load of one server over time: when it went above target, and its peak over ``idle_s``.

    Fed by the controller every fraction of a second (:meth:`observe`) and at every request
    arrival (:meth:`arrival`, so a request shorter than a sample still counts). Memory is bounded:
    one maximum per second, ``idle_s`` seconds long.
    """

    def __init__(self, started: float) -> None:
        self.started = started
        self.high_since: float | None = None
        self._buckets: deque[tuple[int, float]] = deque()  # (second, highest concurrency in it)

    def observe(self, now: float, concurrency: float, load: float, ready: int, target: float,
                idle_s: float) -> None:
        """One sample: ``concurrency`` (in flight + held) for the peak, ``load`` (the policy's metric)
        against ``target`` per ready replica for the scale-up clock."""
        self._record(now, concurrency, idle_s)
        high = ready > 0 and load > target * ready
        if not high:
            self.high_since = None
        elif self.high_since is None:
            self.high_since = now

    def arrival(self, now: float, idle_s: float) -> None:
        self._record(now, 1.0, idle_s)

    def _record(self, now: float, value: float, idle_s: float) -> None:
        sec = int(now)
        if self._buckets and self._buckets[-1][0] == sec:
            if value > self._buckets[-1][1]:
                self._buckets[-1] = (sec, value)
        else:
            self._buckets.append((sec, value))
        horizon = now - idle_s - 1
        while self._buckets and self._buckets[0][0] < horizon:
            self._buckets.popleft()

    def peak(self, now: float, idle_s: float) -> float:
        """The highest concurrency seen in the last ``idle_s`` seconds (whole seconds)."""
        start = now - idle_s
        return max((v for sec, v in self._buckets if sec + 1 > start), default=0.0)

    def watched(self, now: float) -> float:
        return now - self.started
