"""How long `biofleet status` takes: a real 10-server fleet, and 100 registered servers.

    python benchmarks/status.py [--runs 10]

Boots the throwaway test SLURM cluster, brings up the shipped t4x10 profile with the
mock engine (10 array tasks, 11 servers, proxy as a SLURM job), and times
``collect_status`` (one squeue, the registry, concurrent HTTP probes) and the whole
``biofleet status`` command. Then it builds a 100-server fleet: one real 100-task
array job (sleeps; most tasks pend, as on a busy cluster), 100 registry records
whose URLs are 100 listening sockets of one mock-engine process, and times the
same call. Baselines measured in the same run: one bare ``squeue`` call and
``python -c pass``. Goals: under 1 s for the healthy 10-server fleet, under 2 s
with 100 servers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def timed(fn, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def serve_many(n: int) -> tuple[list[int], threading.Thread]:
    """One mock engine answering on n loopback sockets (a stand-in for n servers)."""
    import uvicorn

    from biofleet.devtools.mock_engine import build_app

    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen(128)
        socks.append(s)
        ports.append(s.getsockname()[1])
    app = build_app(["bench"], kind="generate")
    server = uvicorn.Server(uvicorn.Config(app, log_level="error", lifespan="on"))
    t = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=socks)), daemon=True)
    t.start()
    time.sleep(1.0)
    return ports, t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()

    from biofleet.backends.slurm import Slurm
    from biofleet.devtools.testcluster import TestCluster
    from biofleet.fleet import ServerState, collect_status, down, open_fleet, up
    from biofleet.fleet.state import FleetState, JobRecord
    from biofleet.profile import load_profile
    from biofleet.registry import Endpoint, write_record
    from biofleet.remote.local import LocalRunner

    tmp = Path(tempfile.mkdtemp(prefix="bf-bench-"))
    cluster = TestCluster(tmp / "slurm")
    cluster.start()
    os.environ.update(cluster.env())
    results: dict[str, list[float]] = {}
    try:
        bindir = Path(sys.executable).parent
        ref = tmp / "t4x10-bench.yaml"
        ref.write_text(
            "extends: t4x10\nname: t4x10-bench\ncluster:\n"
            f"  workdir: {tmp}/work\n  setup: ['export PATH={bindir}:$PATH']\n  hf_home: null\n"
            "  bind_host: 127.0.0.1\n  advertise: loopback\n  cpus_per_task: 1\n  mem: 200M\n"
            "proxy: {run: slurm, partition: cpuspot, host: 127.0.0.1, port: null}\n"
        )
        p = load_profile(ref)
        p = p.model_copy(update={"servers": {k: s.model_copy(update={"engine": "mock"}) for k, s in p.servers.items()}})
        with open_fleet(p, backend="slurm") as fleet:
            res = up(fleet, profile_ref=str(ref), timeout=120, poll=0.5)
            assert all(s.state == ServerState.READY for s in res.status.servers), "fleet did not come up"
            collect_status(fleet)  # warm
            results["collect_status, 11 servers"] = timed(lambda: collect_status(fleet), args.runs)
            cli = [sys.executable, "-m", "biofleet.cli.main", "status", "--profile", str(ref), "--json"]
            results["biofleet status (CLI), 11 servers"] = timed(
                lambda: subprocess.run(cli, capture_output=True, check=True), args.runs)
            down(fleet)

        # 100 servers
        n = 100
        ports, _ = serve_many(n)
        big = tmp / "big.yaml"
        big.write_text(
            "name: big\ncluster:\n"
            f"  workdir: {tmp}/work\n  partition: cpuspot\n  bind_host: 127.0.0.1\n  advertise: loopback\n"
            "  cpus_per_task: 1\n  mem: 10M\n"
            "servers:\n  s: {model: Qwen/Qwen2.5-0.5B-Instruct, engine: mock, served_name: bench}\n"
            f"jobs:\n  - name: cpu\n    nodes: [{', '.join(['s'] * n)}]\n"
        )
        bp = load_profile(big)
        slurm = Slurm(LocalRunner())
        script = tmp / "sleep.sbatch"
        script.write_text(f"#!/bin/bash\n#SBATCH --array=0-{n - 1}\n#SBATCH --partition=cpuspot\n"
                          "#SBATCH --mem=1M\n#SBATCH --cpus-per-task=1\n#SBATCH --output=/dev/null\nsleep 600\n")
        job_id = slurm.submit(str(script))
        with open_fleet(bp, backend="slurm") as fleet:
            fleet.runner.mkdir(fleet.paths.root)
            state = FleetState(fleet="big", profile=str(big), backend="slurm", fleet_dir=fleet.paths.root,
                               jobs=[JobRecord(job="cpu", job_id=job_id, tasks=list(range(n)), array=True)])
            fleet.runner.write_text(fleet.paths.state, state.dumps())
            for i, port in enumerate(ports):
                write_record(Path(fleet.paths.registry), Endpoint(
                    fleet="big", server=f"s-{i}", url=f"http://127.0.0.1:{port}", served_names=("bench",),
                    engine="mock", job_id=f"{job_id}_{i}"))
            time.sleep(3)
            st = collect_status(fleet)
            counts = {}
            for s in st.servers:
                counts[s.state] = counts.get(s.state, 0) + 1
            print(f"100-server fleet states: {json.dumps(counts)}")
            results["collect_status, 100 servers"] = timed(lambda: collect_status(fleet), args.runs)
            slurm.cancel([job_id])
        results["squeue alone (baseline)"] = timed(
            lambda: subprocess.run(["squeue", "--noheader"], capture_output=True), args.runs)
        results["python -c pass (baseline)"] = timed(
            lambda: subprocess.run([sys.executable, "-c", "pass"]), args.runs)
    finally:
        cluster.stop()

    base = statistics.median(results["squeue alone (baseline)"])
    print(f"\n{'measurement':42} {'median s':>9} {'max s':>7} {'x squeue':>9}")
    for name, times in results.items():
        med = statistics.median(times)
        print(f"{name:42} {med:9.3f} {max(times):7.3f} {med / base:9.1f}")


if __name__ == "__main__":
    main()
