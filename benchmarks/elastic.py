"""An elastic fleet against a fixed fleet at its max, on one compressed bursty day, in one run.

    python benchmarks/elastic.py [--scale 1.0] [--seed 1] [--json results.json]

Boots the throwaway test SLURM cluster and replays the same open-loop trace (Poisson arrivals,
seeded) against two fleets of one "coder" server on T4 nodes, one after the other:

* fixed: 4 replicas (a 4-task array job), up for the whole trace;
* elastic: ``replicas: {min: 0, max: 4}``, scaled by the controller in the proxy.

The trace: idle 60 s, burst 40 s at 20 req/s, trickle 60 s at 0.3 req/s, idle 60 s (``--scale``
stretches every phase). Each replica is the mock engine standing in for a model: 5 s of start-up
(``--startup-delay-s``, the weights loading), 500 ms per request, at most 4 requests generated at
once (a replica serves ~8 req/s, so the burst needs three). The proxy runs on this machine.

Reported per fleet: GPU time (replica-seconds that SLURM ran a replica job during the trace,
sampled from squeue every 0.5 s), requests answered / lost, held (released after a cold start),
latency p50/p99; for the elastic fleet, the cold-start overhead biofleet adds on top of the
engine's own start-up: from the moment the engine listened (its log) and from the proxy's first
passing probe (the journal's ``ready``) to the first held request answered, less the engine's
500 ms of service; and the time from each scale-up decision to ``sbatch`` returning.
Goals: elastic GPU time <= 40% of fixed, 0 lost, overhead <= 2 s, decision -> sbatch <= 1 poll.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

MAX = 4
LATENCY_S = 0.5
PHASES = [("idle", 60.0, 0.0), ("burst", 40.0, 20.0), ("trickle", 60.0, 0.3), ("idle", 60.0, 0.0)]
ENGINE = '[--startup-delay-s, "5", --latency-ms, "500", --max-num-seqs, "4"]'
SCALING = ("{target: 3, scale_up_after_s: 3, idle_s: 20, cold_start_s: 120, max_held: 1000, poll_s: 1, "
           "keepalive_s: 10}")

PROFILE = """\
name: {name}
cluster:
  partition: t4flex
  workdir: {workdir}
  setup: ["export PATH={bindir}:$PATH"]
  bind_host: 127.0.0.1
  advertise: loopback
  time: "01:00:00"
  cpus_per_task: 1
  mem: 200M
servers:
  coder:
    model: Qwen/Qwen2.5-Coder-7B-Instruct-AWQ
    engine: mock
    replicas: {replicas}
    extra_args: {engine}
{scaling}jobs:
  - name: coder
    gpu: T4
    nodes: {nodes}
proxy:
  run: local
  host: 127.0.0.1
  port: null
"""


@dataclass
class Request:
    sent: float  # seconds from the trace start
    phase: str
    done: float | None = None
    status: int | str | None = None


@dataclass
class Run:
    name: str
    requests: list[Request] = field(default_factory=list)
    replica_seconds: float = 0.0
    trace_s: float = 0.0
    held: int = 0
    extra: dict[str, object] = field(default_factory=dict)


def schedule(scale: float, seed: int) -> list[tuple[float, str]]:
    rng = random.Random(seed)
    out, t0 = [], 0.0
    for phase, dur, rate in PHASES:
        dur *= scale
        t = t0
        while rate > 0:
            t += rng.expovariate(rate)
            if t >= t0 + dur:
                break
            out.append((t, phase))
        t0 += dur
    return out


class ReplicaClock:
    """Integrates the number of RUNNING jobs named ``job_name`` (one squeue every 0.5 s)."""

    def __init__(self, job_name: str) -> None:
        self.job_name = job_name
        self.total = 0.0
        self.most = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _count(self) -> int:
        out = subprocess.run(["squeue", "--noheader", "--me", "--states=RUNNING", "--format=%j"],
                             capture_output=True, text=True).stdout
        return sum(1 for line in out.splitlines() if line.strip() == self.job_name)

    def _run(self) -> None:
        last, n = time.monotonic(), self._count()
        while not self._stop.wait(0.5):
            now = time.monotonic()
            self.total += n * (now - last)
            last, n = now, self._count()
            self.most = max(self.most, n)

    def start(self) -> ReplicaClock:
        self._t.start()
        return self

    def stop(self) -> float:
        self._stop.set()
        self._t.join()
        return self.total


async def replay(url: str, token: str, plan: list[tuple[float, str]]) -> tuple[list[Request], float]:
    """The requests with their outcomes (times from the start), and the start as wall-clock time."""
    import httpx

    reqs = [Request(t, phase) for t, phase in plan]
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=200)
    async with httpx.AsyncClient(timeout=180, limits=limits) as client:
        start, wall = time.monotonic(), time.time()

        async def one(r: Request) -> None:
            await asyncio.sleep(max(0.0, r.sent - (time.monotonic() - start)))
            try:
                resp = await client.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {token}"},
                                         json={"model": "coder", "messages": [{"role": "user", "content": "x"}]})
                r.status = resp.status_code
            except httpx.HTTPError as exc:
                r.status = type(exc).__name__
            r.done = time.monotonic() - start

        await asyncio.gather(*(one(r) for r in reqs))
    return reqs, wall


def run_fleet(name: str, ref: Path, scale: float, plan: list[tuple[float, str]]) -> tuple[Run, float]:
    from biofleet.fleet import down, open_fleet, up
    from biofleet.profile import load_profile

    run = Run(name)
    with open_fleet(load_profile(ref), backend="slurm") as fleet:
        try:
            res = up(fleet, profile_ref=str(ref), timeout=180, poll=0.5)
            assert not res.timed_out, "the fleet did not come up"
            token = Path(fleet.paths.token).read_text().strip()
            url = res.state.proxy.url
            clock = ReplicaClock(f"biofleet-{fleet.profile.name}-coder").start()
            run.requests, t0 = asyncio.run(replay(url, token, plan))
            # the trace lasts its phases even when the last request came earlier
            rest = sum(d for _, d, _ in PHASES) * scale - (time.time() - t0)
            if rest > 0:
                time.sleep(rest)
            run.trace_s = time.time() - t0
            run.replica_seconds = clock.stop()
            run.extra["most_replicas"] = clock.most
            import httpx

            metrics = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {token}"}).text
            m = re.search(r'biofleet_elastic_held_total\{outcome="released",server="coder"\} ([0-9.]+)', metrics)
            run.held = int(float(m.group(1))) if m else 0
            if fleet.profile.elastic_servers():
                run.extra.update(cold_start(fleet, run, t0))
        finally:
            down(fleet)
    return run, t0


def cold_start(fleet, run: Run, t0: float) -> dict[str, object]:
    """Overheads from the journal and the engines' logs (see the module docstring)."""
    from biofleet.elastic.state import load_elastic_state

    j = load_elastic_state(fleet.runner, fleet.paths)
    assert j is not None
    submit_s = [r.submitted_at - r.decided_at for r in j.replicas if r.submitted_at]
    from_listen, from_probe = [], []
    for rec in j.replicas:
        if not rec.job_id or rec.ready_at is None or "held and no replica" not in rec.reason:
            continue
        log = Path(fleet.paths.server_log("coder", rec.job_id))
        m = re.search(r"listening on \S+ at ([0-9.]+)", log.read_text() if log.exists() else "")
        if not m:
            continue
        listen = float(m.group(1)) - t0
        ready = rec.ready_at - t0
        held_done = [r.done for r in run.requests if r.done is not None and r.sent < ready and r.done >= listen
                     and r.status == 200]
        if held_done:
            first = min(held_done)
            from_listen.append(first - listen - LATENCY_S)
            from_probe.append(first - ready - LATENCY_S)
    poll = 1.0
    return {"decision_to_sbatch_max_s": round(max(submit_s), 3) if submit_s else None, "poll_s": poll,
            "cold_starts": len(from_listen),
            "overhead_from_listen_s": [round(x, 3) for x in from_listen],
            "overhead_from_probe_s": [round(x, 3) for x in from_probe],
            "scale_ups": sum(1 for d in j.decisions if d.action == "scale-up")}


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))] if xs else float("nan")


def summary(run: Run) -> dict[str, object]:
    lat = [r.done - r.sent for r in run.requests if r.done is not None and r.status == 200]
    lost = [r for r in run.requests if r.status != 200]
    return {"fleet": run.name, "requests": len(run.requests), "answered": len(lat), "lost": len(lost),
            "lost_kinds": sorted({str(r.status) for r in lost}), "held": run.held,
            "replica_seconds": round(run.replica_seconds, 1), "gpu_hours": round(run.replica_seconds / 3600, 4),
            "trace_s": round(run.trace_s, 1), "p50_s": round(pct(lat, 0.5), 3), "p99_s": round(pct(lat, 0.99), 3),
            "burst_p99_s": round(pct([r.done - r.sent for r in run.requests if r.phase == "burst" and r.done
                                      and r.status == 200], 0.99), 3),
            **run.extra}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="stretch every phase of the trace")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()

    from biofleet.devtools.testcluster import TestCluster

    tmp = Path(tempfile.mkdtemp(prefix="bf-elastic-"))
    cluster = TestCluster(tmp / "slurm")
    cluster.start()
    os.environ.update(cluster.env())
    plan = schedule(args.scale, args.seed)
    results = []
    try:
        bindir = Path(sys.executable).parent
        profiles = {
            "fixed": ("[" + ", ".join(["coder"] * MAX) + "]", str(MAX), ""),
            "elastic": ("[coder]", f"{{min: 0, max: {MAX}}}", f"    scaling: {SCALING}\n"),
        }
        for name, (nodes, replicas, scaling) in profiles.items():
            ref = tmp / f"{name}.yaml"
            ref.write_text(PROFILE.format(name=f"bench-{name}", workdir=tmp / "work", bindir=bindir,
                                          replicas=replicas, engine=ENGINE, scaling=scaling, nodes=nodes))
            run, _ = run_fleet(name, ref, args.scale, plan)
            results.append(summary(run))
            print(json.dumps(results[-1]), flush=True)
    finally:
        cluster.stop()

    fixed, elastic = results
    share = elastic["replica_seconds"] / fixed["replica_seconds"]  # type: ignore[operator]
    print(f"\ntrace: {', '.join(f'{p} {d * args.scale:g}s@{r:g}/s' for p, d, r in PHASES)}; "
          f"{len(plan)} requests, seed {args.seed}")
    print(f"{'fleet':8} {'replica-s':>9} {'GPU-h':>7} {'answered':>8} {'lost':>4} {'held':>5} {'p50 s':>6} "
          f"{'p99 s':>6} {'burst p99':>9}")
    for r in results:
        print(f"{r['fleet']:8} {r['replica_seconds']:9.1f} {r['gpu_hours']:7.4f} {r['answered']:8} {r['lost']:4} "
              f"{r['held']:5} {r['p50_s']:6.3f} {r['p99_s']:6.3f} {r['burst_p99_s']:9.3f}")
    print(f"elastic GPU time = {share:.1%} of fixed (goal <= 40%)")
    print(f"cold starts from zero: {elastic['cold_starts']}; biofleet overhead after the engine listened: "
          f"{elastic['overhead_from_listen_s']} s; after the proxy's first passing probe: "
          f"{elastic['overhead_from_probe_s']} s (goal <= 2 s)")
    print(f"decision -> sbatch returned, max: {elastic['decision_to_sbatch_max_s']} s (one scheduler poll: "
          f"{elastic['poll_s']} s)")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "elastic_share": share, "scale": args.scale,
                                         "seed": args.seed, "requests": len(plan)}, indent=2))


if __name__ == "__main__":
    main()
