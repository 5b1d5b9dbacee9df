"""Pure routing decisions: which served model, which replica, in what order.

Nothing here does I/O; :mod:`biofleet.proxy.app` feeds it the request and the
pool and acts on the answer.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from biofleet.names import shown
from biofleet.proxy.config import CloudFallback, RoutingConfig, Rule
from biofleet.proxy.discovery import Backend

AUTO = "auto"


class RouteError(Exception):
    """A request that cannot be routed; carries the HTTP status to answer with."""

    def __init__(self, status: int, message: str, code: str):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


def resolve_alias(name: str, routing: RoutingConfig) -> str:
    return routing.aliases.get(name, name)


def model_for_task(task_type: str, routing: RoutingConfig) -> str:
    try:
        return routing.tasks[task_type]
    except KeyError:
        known = ", ".join(sorted(routing.tasks)) or "(none configured)"
        raise RouteError(400, f"unknown task_type {shown(task_type)}; known task types: {known}",
                         "unknown_task_type") from None


@lru_cache(maxsize=64)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


def classify_by_rules(text: str, rules: Sequence[Rule]) -> str | None:
    """The task of the first rule whose regex matches the text."""
    for rule in rules:
        if _compiled(rule.pattern).search(text):
            return rule.task
    return None


def intent_prompt(text: str, tasks: Iterable[str]) -> str:
    names = "\n".join(f"- {t}" for t in sorted(tasks))
    return (
        "Classify the request into exactly one of these categories:\n"
        f"{names}\n\nRequest: {text[:2000]}\n\nAnswer with the category name only."
    )


def parse_intent_reply(reply: str, tasks: Iterable[str]) -> str | None:
    """The task named in a classifier's reply: exact match first, then the longest name it contains."""
    words = reply.strip().lower()
    table = {t.lower(): t for t in tasks}
    first = words.split()[0].strip(" .:,'\"`") if words.split() else ""
    if first in table:
        return table[first]
    for low in sorted(table, key=len, reverse=True):
        if low in words:
            return table[low]
    return None


@dataclass(frozen=True)
class SafetyVerdict:
    safe: bool
    categories: tuple[str, ...] = ()


def parse_safety_reply(reply: str) -> SafetyVerdict:
    """Llama Guard answers ``safe``, or ``unsafe`` and a line of categories (``S1,S10``)."""
    lines = [ln.strip() for ln in reply.strip().splitlines() if ln.strip()]
    if not lines or not lines[0].lower().startswith("unsafe"):
        return SafetyVerdict(True)
    rest = lines[1] if len(lines) > 1 else lines[0][len("unsafe"):]
    cats = tuple(c.strip() for c in re.split(r"[,\s]+", rest) if c.strip())
    return SafetyVerdict(False, cats)


def fallback_chain(served: str, routing: RoutingConfig) -> list[str]:
    """``served`` followed by its fallbacks, transitively, each once."""
    out = [served]
    i = 0
    while i < len(out):
        for nxt in routing.fallbacks.get(out[i], ()):
            if nxt not in out:
                out.append(nxt)
        i += 1
    return out


def cloud_targets(chain: Sequence[str], routing: RoutingConfig) -> list[tuple[CloudFallback, str]]:
    """(cloud, cloud model) for each cloud fallback that maps a model of the chain."""
    out: list[tuple[CloudFallback, str]] = []
    for cloud in routing.cloud_fallbacks:
        for local in chain:
            if local in cloud.models:
                out.append((cloud, cloud.models[local]))
                break
    return out


KV_NEARLY_FULL = 0.9


def _load(b: Backend) -> tuple[int, float, bool]:
    # Our own in-flight count first (exact, instantaneous); the engine's queue (scraped, a few
    # seconds old) only breaks ties between equally busy replicas, and then a KV cache nearly full
    # (preemptions ahead). Below that, KV usage is no tie-breaker: a scrape that happened to land
    # during a request leaves a small value for seconds, and every request would go to the other
    # replica meanwhile. Replicas that tie take turns (the caller's cursor), as nginx's least_conn.
    return (b.inflight, b.waiting, b.kv_usage >= KV_NEARLY_FULL)


Policy = Callable[[Sequence[Backend], int], Backend]
"""A routing policy: one replica among the usable ones (never empty). ``cursor`` is a per-model
counter the caller increments on every request, for rotating among equals."""


def least_outstanding(usable: Sequence[Backend], cursor: int) -> Backend:
    best = min(_load(b) for b in usable)
    ties = [b for b in usable if _load(b) == best]
    return ties[cursor % len(ties)]


def round_robin(usable: Sequence[Backend], cursor: int) -> Backend:
    return usable[cursor % len(usable)]


#: policy name (``--strategy``, ``ProxyConfig.strategy``) -> policy. A new policy is a function and a line here.
POLICIES: dict[str, Policy] = {
    "least-outstanding": least_outstanding,
    "round-robin": round_robin,
}


def pick_backend(
    candidates: Sequence[Backend],
    strategy: str,
    cursor: int,
    max_inflight: int | None = None,
) -> Backend | None:
    """One replica among healthy, unsaturated candidates, or None."""
    usable = [b for b in candidates if b.healthy and not b.removed and not b.draining
              and (max_inflight is None or b.inflight < max_inflight)]
    if not usable:
        return None
    return usable[0] if len(usable) == 1 else POLICIES[strategy](usable, cursor)


class RetryBudget:
    """Retries allowed over a sliding window: ``ratio`` of the requests in the last ``window_s``
    plus ``min_per_s`` per second (Linkerd's retry budget). When every replica fails, requests are
    retried only within the budget, so the fleet sees at most (1 + ratio) times the load plus a
    trickle, instead of every request multiplied by the replica count."""

    def __init__(self, ratio: float, min_per_s: float, window_s: int = 10,
                 clock: Callable[[], float] = time.monotonic):
        self.ratio = ratio
        self.floor = min_per_s * window_s
        self.window = window_s
        self.clock = clock
        self._requests = [0] * window_s  # per second of the window, indexed by second % window
        self._retries = [0] * window_s
        self.requests = 0  # totals over the window
        self.retries = 0
        self._second = int(clock())

    def _advance(self) -> int:
        now = int(self.clock())
        if now != self._second:
            # clear the seconds that passed since the last call (all of them after a long pause)
            for sec in range(max(self._second + 1, now - self.window + 1), now + 1):
                i = sec % self.window
                self.requests -= self._requests[i]
                self.retries -= self._retries[i]
                self._requests[i] = self._retries[i] = 0
            self._second = now
        return now % self.window

    def request(self) -> None:
        self._requests[self._advance()] += 1
        self.requests += 1

    def can_retry(self) -> bool:
        self._advance()
        return self.retries < self.ratio * self.requests + self.floor

    def spend(self) -> bool:
        """Take one retry from the budget; False (and nothing taken) when it is used up."""
        i = self._advance()
        if self.retries >= self.ratio * self.requests + self.floor:
            return False
        self._retries[i] += 1
        self.retries += 1
        return True
