"""The elastic controller: runs inside the proxy, decides how many replicas each elastic server
has, and holds requests for a server with none ready.

One :class:`ElasticRuntime` per proxy (``biofleet proxy --elastic <fleet>/elastic.json``). Its loop,
every fraction of a second:

1. every ``poll_s`` (or at once after a change), ONE scheduler query for all its replicas' jobs;
2. samples the load it sees in the proxy (requests in flight per replica, requests held) into
   each server's :class:`~biofleet.elastic.policy.LoadWindow`;
3. asks the pure :func:`~biofleet.elastic.policy.decide` what to do, and does it: ``submit``
   records an intent in the journal, *then* runs ``sbatch`` with the intent's tag, then records
   the job id; ``drain`` makes the router skip a replica; ``cancel`` runs ``scancel`` by job id;
4. releases held requests when a replica is routable (spread over replicas started together), or
   fails them with the reason when its start failed (the next start of that server then waits out
   a back-off: 5 s, doubling to 5 min).

On start it reads its journal back and, with one tagged query, adopts any submission whose job
id it had not recorded before it stopped (nothing is submitted twice for one decision). Replicas
the journal lists are followed again; its load history starts empty, so nothing is scaled down
before it has watched the load for ``idle_s``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from biofleet.backends.base import JobInfo, JobState, Scheduler
from biofleet.elastic.hold import ContinuedStream, HeldQueue, Refusal, keepalive, refuse, start_stream
from biofleet.elastic.policy import Action, LoadWindow, ReplicaView, Situation, decide
from biofleet.elastic.state import (
    ControllerInfo,
    DecisionRecord,
    ElasticPlan,
    ElasticServerPlan,
    ElasticState,
    ModelSnapshot,
    ReplicaRecord,
    load_elastic_state,
    new_intent_id,
    save_elastic_state,
)
from biofleet.errors import BiofleetError
from biofleet.registry import endpoint_key

if TYPE_CHECKING:
    from biofleet.proxy.discovery import Backend, BackendPool
    from biofleet.proxy.transport import Send
    from biofleet.remote.base import Runner

log = logging.getLogger("biofleet.elastic")

SAMPLE_S = 0.25  # load samples and decisions while nothing is held
HELD_SAMPLE_S = 0.05  # while requests are held: a replica that turns ready is used within this
SNAPSHOT_EVERY_S = 1.0  # the held/ready counts status shows are written at most this often
HEARTBEAT_EVERY_S = 30.0
# Held requests released when the first of several replicas started together is ready: its share
# at once, the others' when they are ready, all of them after this long at the latest.
RELEASE_SPREAD_S = 5.0
BACKOFF_BASE_S, BACKOFF_MAX_S = 5.0, 300.0
_LOG_TAIL_BYTES = 4096

_COLD_START_BUCKETS = (1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1200, 3600)


class ElasticMetrics:
    """The controller's Prometheus metrics, in the proxy's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.replicas = Gauge("biofleet_elastic_replicas", "Replicas of an elastic server, by phase.",
                              ["server", "phase"], registry=r)
        self.held = Gauge("biofleet_elastic_held_requests", "Requests held now, waiting for a replica.",
                          ["server"], registry=r)
        self.held_total = Counter("biofleet_elastic_held", "Held requests by how their wait ended "
                                  "(released, failed, timeout, full, backoff, gone).", ["server", "outcome"],
                                  registry=r)
        self.hold_seconds = Histogram("biofleet_elastic_hold_seconds", "Time a request was held.", ["server"],
                                      buckets=_COLD_START_BUCKETS, registry=r)
        self.cold_start = Histogram("biofleet_elastic_cold_start_seconds",
                                    "From the scale-up decision to the replica routed to.", ["server"],
                                    buckets=_COLD_START_BUCKETS, registry=r)
        self.decisions = Counter("biofleet_elastic_decisions", "Scaling decisions and events, by action.",
                                 ["server", "action"], registry=r)


@dataclass
class _Backoff:
    until: float = 0.0
    failures: int = 0
    reason: str = ""


def scrub_job_environment() -> None:
    """Inside a SLURM job (the proxy job), drop that job's SLURM_* variables: sbatch passes the
    environment on, and replicas must not inherit the proxy's allocation (SLURM_CONF stays)."""
    if "SLURM_JOB_ID" not in os.environ:
        return
    for k in list(os.environ):
        if (k.startswith(("SLURM_", "SLURMD_")) and k != "SLURM_CONF") or k.startswith("SBATCH_"):
            del os.environ[k]


class ElasticRuntime:
    """Holds requests for elastic servers and runs their controller; see the module docstring."""

    def __init__(self, plan: ElasticPlan, pool: BackendPool, registry: CollectorRegistry, *,
                 runner: Runner | None = None, scheduler: Scheduler | None = None,
                 plan_file: str | None = None) -> None:
        from biofleet.backends import make_scheduler
        from biofleet.remote.local import LocalRunner

        self.plan = plan
        self.plan_file = plan_file
        self.pool = pool
        self.metrics = ElasticMetrics(registry)
        self.runner: Runner = runner or LocalRunner()
        if scheduler is None:
            scrub_job_environment()
            scheduler = make_scheduler(plan.backend, self.runner, state_dir=plan.local_state_dir or
                                       plan.fleet_dir + "/local-jobs", env=plan.scheduler_env or None)
        self.scheduler = scheduler
        self.paths = plan.paths
        self.state = ElasticState(fleet=plan.fleet)
        self.holds: dict[str, HeldQueue] = {}
        self.windows: dict[str, LoadWindow] = {}
        self.backoff: dict[str, _Backoff] = {}
        self.infos: dict[str, JobInfo] = {}
        self.started = time.time()
        self.recovered = asyncio.Event()
        self._wake: asyncio.Event | None = None
        self._poll_now = True
        self._dirty = False
        self._last_snapshot = 0.0
        self._last_saved = 0.0
        self._plan_mtime = _mtime(plan_file)
        self._sync_servers()

    @classmethod
    def from_file(cls, path: str | Path, pool: BackendPool, registry: CollectorRegistry) -> ElasticRuntime:
        import json

        plan = ElasticPlan.model_validate(json.loads(Path(path).read_text()))
        return cls(plan, pool, registry, plan_file=str(path))

    # -- what the proxy asks ---------------------------------------------------------

    def names(self) -> list[str]:
        """Every served name and alias of an elastic server (known even with no replica)."""
        return [n for s in self.plan.servers.values() for n in s.served_names]

    def serves(self, name: str) -> bool:
        return self.plan.server_for(name) is not None

    async def admit(self, served: str, stream: bool, send: Send) -> Send | None:
        """The ``send`` to forward this request with, once a replica of ``served`` is routable;
        None when the client was answered here (a 503 with the reason). Not elastic: ``send``."""
        sp = self.plan.server_for(served)
        if sp is None:
            return send
        now = time.time()
        self.windows[sp.server].arrival(now, sp.policy.idle_s)
        q = self.holds[sp.server]
        if not q.waiters and self._routable(sp):
            return send
        self.kick()
        refusal = self._refuse_now(sp, q)
        if refusal is not None:
            self.metrics.held_total.labels(sp.server, refusal.code.split("_")[-1]).inc()
            await refuse(send, served, refusal, headers_sent=False)
            return None
        return await self._hold(sp, q, served, stream, send)

    def kick(self) -> None:
        if self._wake is not None:
            self._wake.set()

    # -- holding -------------------------------------------------------------------------

    def _refuse_now(self, sp: ElasticServerPlan, q: HeldQueue) -> Refusal | None:
        if len(q) >= sp.policy.max_held:
            return Refusal(f"{len(q)} requests are already waiting for it to start (max_held)", "held_queue_full",
                           retry_after=max(1, int(sp.policy.poll_s)))
        bo = self.backoff.get(sp.server)
        now = time.time()
        if bo and now < bo.until and not self.state.live(sp.server):
            return Refusal(f"its last start failed ({bo.reason}); the next try is in {bo.until - now:.0f}s",
                           "replica_start_failed", retry_after=max(1, int(bo.until - now + 0.999)))
        return None

    async def _hold(self, sp: ElasticServerPlan, q: HeldQueue, served: str, stream: bool, send: Send) -> Send | None:
        w = q.add(stream)
        self.metrics.held.labels(sp.server).set(len(q))
        p = sp.policy
        deadline = w.since + p.cold_start_s
        headers_sent = False
        outcome = "gone"
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                step = min(left, p.keepalive_s) if stream else left
                try:
                    await asyncio.wait_for(asyncio.shield(w.fut), step)
                    break
                except asyncio.TimeoutError:
                    pass
                if stream and time.monotonic() < deadline:
                    if not headers_sent:
                        await start_stream(send)
                        headers_sent = True
                    await keepalive(send, f"waiting for a replica of {served}: {self.waiting_for(sp.server)}")
            if w.fut.done():
                refusal = w.fut.result()
            else:
                refusal = Refusal(f"none became ready within cold_start_s={p.cold_start_s:g}s "
                                  f"({self.waiting_for(sp.server)})", "cold_start_timeout",
                                  retry_after=max(1, int(p.poll_s)))
            outcome = "released" if refusal is None else ("timeout" if refusal.code == "cold_start_timeout"
                                                           else "failed")
            if refusal is not None:
                await refuse(send, served, refusal, headers_sent=headers_sent)
                return None
            return ContinuedStream(send) if headers_sent else send
        finally:
            q.discard(w)
            if not w.fut.done():
                w.fut.cancel()
            self.metrics.held.labels(sp.server).set(len(q))
            self.metrics.held_total.labels(sp.server, outcome).inc()
            self.metrics.hold_seconds.labels(sp.server).observe(time.monotonic() - w.since)

    def waiting_for(self, server: str) -> str:
        """What a held request of ``server`` waits for, in a few words (the scheduler's reason)."""
        live = [r for r in self.state.live(server) if r.state in ("intent", "submitted")]
        if not live:
            bo = self.backoff.get(server)
            if bo and bo.reason:
                return f"no replica is starting; the last start failed: {bo.reason}"
            return "no replica is starting"
        parts = []
        for r in live[:3]:
            if r.state == "intent" or not r.job_id:
                parts.append("a replica is being submitted")
                continue
            info = self.infos.get(r.job_id)
            if info is None:
                parts.append(f"job {r.job_id} submitted")
            elif info.state in (JobState.PENDING, JobState.REQUEUED, JobState.SUSPENDED):
                parts.append(f"job {r.job_id} {info.state.value} ({info.reason or 'no reason given'})")
            elif info.state == JobState.RUNNING:
                b = self._backend(r)
                parts.append(f"job {r.job_id} RUNNING, the server "
                             + ("is not answering its probe yet" if b is not None else "has not registered yet"))
            else:
                parts.append(f"job {r.job_id} {info.state.value}")
        return "; ".join(parts)

    # -- the loop ----------------------------------------------------------------------

    async def run(self) -> None:
        self._wake = asyncio.Event()
        try:
            await self.recover()
        except Exception:
            log.exception("elastic: recovering the journal failed; starting with what is known")
        finally:
            self.recovered.set()
        next_poll = 0.0
        while True:
            try:
                now = time.time()
                if self._poll_now or now >= next_poll:
                    self._poll_now = False
                    next_poll = now + self._poll_s()  # also when the query fails: no hammering
                    await self._maybe_reload_plan()
                    await self.refresh()
                await self.step(time.time())
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must not die: held requests depend on it
                log.exception("elastic controller step failed")
            held = any(q.waiters for q in self.holds.values())
            try:
                await asyncio.wait_for(self._wake.wait(), HELD_SAMPLE_S if held else SAMPLE_S)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

    def _poll_s(self) -> float:
        return min((s.policy.poll_s for s in self.plan.servers.values()), default=5.0)

    async def recover(self) -> None:
        """Read the journal back; adopt submissions whose id it never recorded (one tagged query)."""
        try:
            loaded = await asyncio.to_thread(load_elastic_state, self.runner, self.paths)
        except BiofleetError as exc:
            aside = f"{self.paths.elastic_state}.unreadable-{int(time.time())}"
            log.error("%s; moved it to %s and rebuilding from the queue", exc, aside)
            await asyncio.to_thread(_move, self.paths.elastic_state, aside)
            loaded = None
        if loaded is not None:
            self.state = loaded
        tagged = await asyncio.to_thread(self.scheduler.find_tagged, self.plan.tag)
        found: dict[str, tuple[str, str]] = {}  # intent id -> (server, job id)
        for tag, job_id in tagged.items():
            server, _, intent = tag[len(self.plan.tag):].rpartition(":")
            if server and intent:
                found[intent] = (server, job_id)
        known = {r.id for r in self.state.replicas}
        now = time.time()
        for rec in self.state.replicas:
            if rec.state != "intent":
                continue
            if rec.id in found:
                rec.job_id = found[rec.id][1]
                rec.state, rec.submitted_at = "submitted", rec.submitted_at or now
                self._decision(rec.server, "adopt", "submitted just before the controller stopped; found in the "
                               "queue by its tag, not submitted again", rec)
            else:
                self._end(rec, "lost: not in the queue (the controller stopped before sbatch answered)", now,
                          failed=False)
                self._decision(rec.server, "lost", rec.end or "", rec)
        for intent, (server, job_id) in found.items():
            if intent not in known and server in self.plan.servers:
                rec = ReplicaRecord(id=intent, server=server, state="submitted", job_id=job_id, submitted_at=now,
                                    reason="adopted: a job of this fleet found in the queue by its tag")
                self.state.replicas.append(rec)
                self._decision(server, "adopt", rec.reason, rec)
        self.state.controller = None
        await self._save(force=True)

    async def refresh(self) -> None:
        """One scheduler query for every live replica's job; ended jobs end their replicas."""
        ids = self.state.job_ids()
        self.infos = await asyncio.to_thread(self.scheduler.states, ids) if ids else {}
        now = time.time()
        for rec in self.state.live():
            if not rec.job_id:
                continue
            info = self.infos.get(rec.job_id)
            if info is None:
                if now - (rec.submitted_at or rec.decided_at) > 3 * self._poll_s() + 5:
                    await self._ended(rec, "left the queue (no accounting record)", now)
                continue
            if info.state.is_done:
                how = info.state.value + (f" exit {info.exit_code}" if info.exit_code else "")
                await self._ended(rec, how, now)
            elif info.state == JobState.RUNNING and rec.running_at is None:
                rec.running_at = now
                self._dirty = True

    async def _ended(self, rec: ReplicaRecord, how: str, now: float) -> None:
        if rec.state == "cancelled":
            self._end(rec, rec.end or "cancelled", now, failed=False)
            return
        failed = rec.ready_at is None and rec.state != "draining"
        if not failed:
            self._end(rec, how, now, failed=False)
            self._decision(rec.server, "ended", how, rec)
            return
        # Clients read "job 12 FAILED"; the journal (status) also the last line of the server's log.
        told = f"job {rec.job_id} {how}"
        tail = await asyncio.to_thread(_last_line, self.paths.server_log(rec.server, rec.job_id or ""))
        logged = told + (f" (log: {tail})" if tail else "")
        self._end(rec, logged, now, failed=True)
        self._decision(rec.server, "failed", logged, rec)
        self._failed_start(rec.server, told, now)

    def _end(self, rec: ReplicaRecord, how: str, now: float, *, failed: bool) -> None:
        rec.state, rec.end, rec.ended_at, rec.failed = "ended", how, now, failed
        self._dirty = True

    def _failed_start(self, server: str, reason: str, now: float) -> None:
        bo = self.backoff.setdefault(server, _Backoff())
        bo.failures += 1
        bo.until = now + min(BACKOFF_BASE_S * 2 ** (bo.failures - 1), BACKOFF_MAX_S)
        bo.reason = reason
        if not any(r.state in ("intent", "submitted") for r in self.state.live(server)):
            q = self.holds.get(server)
            if q is not None and q.waiters:
                q.fail_all(Refusal(reason, "replica_start_failed", retry_after=max(1, int(bo.until - now + 0.999))))

    async def step(self, now: float) -> None:
        """Sample the load, decide, act, release or fail held requests, write what changed."""
        for server, sp in self.plan.servers.items():
            views, load = self._observe(sp, now)
            bo = self.backoff.get(server, _Backoff())
            w = self.windows[server]
            q = self.holds[server]
            sit = Situation(
                server=server, policy=sp.policy, min=sp.min, max=sp.max, now=now, replicas=tuple(views),
                held=len(q), load=load, high_since=w.high_since,
                peak=w.peak(now, sp.policy.idle_s), watched_s=w.watched(now), backoff_until=bo.until,
            )
            for action in decide(sit):
                await self._do(sp, action, now)
            if q.waiters:
                ready = sum(1 for b in self._replicas_of(sp) if _routable(b))
                q.spread(time.monotonic(), ready, self._coming(server), RELEASE_SPREAD_S)
        self._apply_draining()
        self._snapshot(now)
        await self._save()

    def _observe(self, sp: ElasticServerPlan, now: float) -> tuple[list[ReplicaView], float]:
        """The replicas as the decision sees them and the load (also into the window); ready times noted."""
        views: list[ReplicaView] = []
        for rec in self.state.live(sp.server):
            if rec.state == "cancelled":
                continue
            b = self._backend(rec)
            inflight = b.inflight if b is not None else 0
            if rec.state == "draining":
                views.append(ReplicaView(rec.id, "draining", rec.drain_at or now, inflight))
                continue
            if rec.ready_at is None and b is not None and b.healthy and not b.removed:
                rec.ready_at = now
                self._dirty = True
                cold = now - rec.decided_at
                self.metrics.cold_start.labels(sp.server).observe(cold)
                self.state.models.setdefault(sp.server, ModelSnapshot()).last_cold_start_s = round(cold, 2)
                self._decision(sp.server, "ready", f"routed to {cold:.1f}s after the decision", rec)
                self.backoff.pop(sp.server, None)
            if rec.ready_at is not None:
                views.append(ReplicaView(rec.id, "ready", rec.ready_at, inflight))
            else:
                views.append(ReplicaView(rec.id, "starting", rec.decided_at, inflight))
        reps = self._replicas_of(sp)
        ready = [b for b in reps if _routable(b)]
        held = len(self.holds[sp.server])
        concurrency = sum(b.inflight for b in reps) + held
        load = self._load(sp, held)
        self.windows[sp.server].observe(now, concurrency, load, len(ready), sp.policy.target, sp.policy.idle_s)
        return views, load

    def _load(self, sp: ElasticServerPlan, held: int) -> float:
        reps = [b for b in self._replicas_of(sp) if _routable(b)]
        if sp.policy.metric == "queue":
            return sum(b.waiting for b in reps) + held
        return sum(b.inflight for b in reps) + held

    async def _do(self, sp: ElasticServerPlan, a: Action, now: float) -> None:
        if a.kind == "submit":
            for _ in range(a.count):
                await self._submit(sp, a.reason)
            return
        rec = next((r for r in self.state.replicas if r.id == a.replica), None)
        if rec is None:
            return
        if a.kind == "drain":
            rec.state, rec.drain_at = "draining", now
            self._decision(sp.server, "drain", a.reason, rec)
        elif a.kind == "undrain":
            rec.state, rec.drain_at = "submitted", None
            self._decision(sp.server, "undrain", a.reason, rec)
        elif a.kind == "cancel":
            if rec.job_id:
                await asyncio.to_thread(self.scheduler.cancel, [rec.job_id])
                rec.state, rec.end = "cancelled", f"cancelled: {a.reason}"  # ended once the job left the queue
            else:
                self._end(rec, f"cancelled before submission: {a.reason}", now, failed=False)
            self._decision(sp.server, "cancel", a.reason, rec)
            self._poll_now = True
        self._apply_draining()
        await self._save(force=True)

    async def _submit(self, sp: ElasticServerPlan, reason: str) -> None:
        rec = ReplicaRecord(id=new_intent_id(), server=sp.server, reason=reason)
        self.state.replicas.append(rec)
        decision = self._decision(sp.server, "scale-up", reason, rec)
        await self._save(force=True)  # the intent is on disk before sbatch runs
        try:
            job_id = await asyncio.to_thread(self.scheduler.submit, sp.script,
                                             tag=f"{self.plan.tag}{sp.server}:{rec.id}")
        except (BiofleetError, OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()
            why = "sbatch failed: " + " ".join(first[-2:])[:300] if first else "sbatch failed"
            now = time.time()
            self._end(rec, why, now, failed=True)
            self._decision(sp.server, "failed", why, rec)
            self._failed_start(sp.server, why, now)
            log.error("elastic %s: %s", sp.server, why)
        else:
            rec.state, rec.job_id, rec.submitted_at = "submitted", job_id, time.time()
            decision.job_id = job_id
            log.info("elastic %s: submitted job %s (%s)", sp.server, job_id, reason)
            self._poll_now = True
        await self._save(force=True)

    # -- bookkeeping ---------------------------------------------------------------------

    def _decision(self, server: str, action: str, reason: str, rec: ReplicaRecord | None = None) -> DecisionRecord:
        d = DecisionRecord(at=time.time(), server=server, action=action, reason=reason,
                           replica=rec.id if rec else None, job_id=rec.job_id if rec else None)
        self.state.decisions.append(d)
        self.metrics.decisions.labels(server, action).inc()
        self._dirty = True
        log.info("elastic %s: %s (%s)", server, action, reason)
        return d

    def _coming(self, server: str) -> int:
        """Replicas whose job runs but whose server is not routed to yet (ready within moments)."""
        n = 0
        for r in self.state.live(server):
            if r.state != "submitted" or r.ready_at is not None or not r.job_id:
                continue
            info = self.infos.get(r.job_id)
            if info is not None and info.state == JobState.RUNNING:
                n += 1
        return n

    def _replicas_of(self, sp: ElasticServerPlan) -> list[Backend]:
        seen: dict[str, Backend] = {}
        for name in sp.served_names:
            for b in self.pool.replicas(name):
                seen[b.key] = b
        return list(seen.values())

    def _routable(self, sp: ElasticServerPlan) -> bool:
        return any(_routable(b) for b in self._replicas_of(sp))

    def _backend(self, rec: ReplicaRecord) -> Backend | None:
        return self.pool.backends.get(endpoint_key(rec.server, rec.job_id)) if rec.job_id else None

    def _apply_draining(self) -> None:
        """The router skips draining replicas (the flag lives on the pool's Backend, which discovery may
        replace: set it again every step)."""
        for rec in self.state.replicas:
            b = self._backend(rec)
            if b is not None:
                b.draining = rec.state in ("draining", "cancelled")

    def _snapshot(self, now: float) -> None:
        for server in self.plan.servers:
            live = [r for r in self.state.live(server) if r.state != "cancelled"]
            pending = sum(1 for r in live if r.state == "submitted" and r.job_id
                          and (i := self.infos.get(r.job_id)) is not None and i.state == JobState.PENDING)
            ready = sum(1 for r in live if r.state == "submitted" and r.ready_at is not None)
            draining = sum(1 for r in live if r.state == "draining")
            starting = len(live) - ready - draining - pending
            held = len(self.holds[server])
            bo = self.backoff.get(server)
            old = self.state.models.get(server, ModelSnapshot())
            snap = ModelSnapshot(held=held, ready=ready, starting=starting, pending=pending, draining=draining,
                                 waiting_for=self.waiting_for(server) if held or starting or pending else None,
                                 backoff_until=bo.until if bo and bo.until > now else None,
                                 last_cold_start_s=old.last_cold_start_s)
            for phase, n in (("ready", ready), ("starting", starting), ("pending", pending), ("draining", draining)):
                self.metrics.replicas.labels(server, phase).set(n)
            known = server in self.state.models  # written once at start, so status reads 0 held, not "unknown"
            if (not known or snap != old) and now - self._last_snapshot >= SNAPSHOT_EVERY_S:
                self.state.models[server] = snap
                self._dirty = True
        if self._dirty:
            self._last_snapshot = now

    async def _save(self, force: bool = False) -> None:
        now = time.time()
        if not (force or self._dirty or now - self._last_saved >= HEARTBEAT_EVERY_S):
            return
        started = self.state.controller.started_at if self.state.controller else self.started
        self.state.controller = ControllerInfo(pid=os.getpid(), host=socket.gethostname(), started_at=started,
                                               heartbeat=now)
        text_state = self.state.model_copy(deep=True)
        await asyncio.to_thread(save_elastic_state, self.runner, self.paths, text_state)
        self._dirty = False
        self._last_saved = now

    def _sync_servers(self) -> None:
        for server in self.plan.servers:
            self.holds.setdefault(server, HeldQueue(server))
            self.windows.setdefault(server, LoadWindow(self.started))

    async def _maybe_reload_plan(self) -> None:
        """``up`` rewrites the plan when the profile changes: take new policies and ranges."""
        if not self.plan_file:
            return
        mtime = _mtime(self.plan_file)
        if mtime == self._plan_mtime:
            return
        self._plan_mtime = mtime
        try:
            import json

            text = await asyncio.to_thread(Path(self.plan_file).read_text)
            plan = ElasticPlan.model_validate(json.loads(text))
        except (OSError, ValueError) as exc:
            log.error("elastic plan %s unreadable (%s); keeping the one loaded", self.plan_file, exc)
            return
        self.plan = plan
        self._sync_servers()
        log.info("elastic plan reloaded: %s", ", ".join(f"{s.server} {s.min}..{s.max}" for s in plan.servers.values()))


def _routable(b: Backend) -> bool:
    return b.healthy and not b.removed and not b.draining


def _mtime(path: str | None) -> float | None:
    if not path:
        return None
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def _move(src: str, dst: str) -> None:
    try:
        os.replace(src, dst)
    except OSError:
        pass


def _last_line(path: str) -> str:
    """The last non-empty line of a server's log (why its start failed), bounded."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - _LOG_TAIL_BYTES))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:200] if lines else ""
