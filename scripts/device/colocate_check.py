"""Device check: what co-located vLLM servers really leave each other on one GPU.

Needs a CUDA GPU and PyTorch; not part of the test suite (CI has no GPU). Run it on a GPU node:

    python3 scripts/device/colocate_check.py --out colocate.json

The fit-check adds, per GPU, every server's budget (``gpu_memory_utilization`` x the total CUDA
reports) plus one CUDA context per process (``GpuSpec.cuda_context_gib``), and since vLLM 0.9.1
(V1) a server refuses to start when the free memory it sees is below its own budget. This script
measures the parts of that sum on the hardware at hand, each in fresh processes:

1. the total CUDA reports (``torch.cuda.mem_get_info``) and nvidia-smi's;
2. what one process holds after creating its context, and after a cuBLAS warm-up (the
   workspace vLLM's profiling pass counts as non-torch memory, inside the budget);
3. N processes with a context at once (does each one cost the same?);
4. the start-up check itself: process A takes a budget of ``u1 x total`` the way a vLLM server
   does (context first, then everything since that baseline is budget), then process B creates
   its context and reads the free memory vLLM compares with its own budget. The fit-check's
   prediction of B's margin is ``total - (u1 + u2) x total - 2 x context``; the script prints the
   measured margin beside it, and ``--context-gib`` is the figure under test.

Each child process prints one JSON line; the parent never touches CUDA, so it holds no context.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

GiB = 1024 ** 3


def _child(mode: str, arg: float, hold_s: float) -> None:
    import torch

    torch.cuda.init()
    torch.empty(1, device="cuda")  # the context exists from here
    torch.cuda.synchronize()
    free0, total = torch.cuda.mem_get_info()
    out: dict[str, float | str] = {"mode": mode, "total_gib": total / GiB, "free_after_ctx_gib": free0 / GiB}
    if mode in ("cublas", "budget"):
        a = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
        (a @ a).sum().item()
        del a
        torch.cuda.synchronize()
        free1, _ = torch.cuda.mem_get_info()
        out["cublas_gib"] = (free0 - free1 - torch.cuda.memory_reserved()) / GiB
        out["free_after_cublas_gib"] = free1 / GiB
    keep = None
    if mode == "budget":
        # everything this process holds beyond its baseline (free0) is budget, as in vLLM's profiler
        budget = arg * total
        free_now, _ = torch.cuda.mem_get_info()
        extra = int(budget - (free0 - free_now))
        keep = torch.empty(max(extra, 0), dtype=torch.uint8, device="cuda")
        torch.cuda.synchronize()
        free2, _ = torch.cuda.mem_get_info()
        out["budget_gib"] = budget / GiB
        out["held_since_baseline_gib"] = (free0 - free2) / GiB
    print(json.dumps(out), flush=True)
    time.sleep(hold_s)
    del keep


def _smi_used_mib() -> float:
    r = subprocess.run(["nvidia-smi", "--query-gpu=memory.used,memory.total", "--format=csv,noheader,nounits",
                        "-i", os.environ.get("CHECK_GPU_INDEX", "0")], capture_output=True, text=True, timeout=30)
    used, _total = (float(x) for x in r.stdout.strip().splitlines()[0].split(","))
    return used


def _smi_total_mib() -> float:
    r = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits",
                        "-i", os.environ.get("CHECK_GPU_INDEX", "0")], capture_output=True, text=True, timeout=30)
    return float(r.stdout.strip().splitlines()[0])


def _spawn(mode: str, arg: float, hold_s: float) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, __file__, "--child", mode, "--arg", str(arg), "--hold-s", str(hold_s)],
                            stdout=subprocess.PIPE, text=True)


def _first_line(p: subprocess.Popen[str]) -> dict[str, float]:
    assert p.stdout is not None
    line = p.stdout.readline()
    if not line:
        raise SystemExit(f"child exited without a result (rc {p.wait()})")
    return json.loads(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="write the results here as JSON")
    ap.add_argument("--context-gib", type=float, default=0.51, help="the fit-check's CUDA context figure under test")
    ap.add_argument("--u1", type=float, default=0.45, help="utilisation of the first server")
    ap.add_argument("--processes", type=int, default=4, help="processes with a context at once, step 3")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--arg", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--hold-s", type=float, default=0.0, help=argparse.SUPPRESS)
    ns = ap.parse_args()
    if ns.child:
        _child(ns.child, ns.arg, ns.hold_s)
        return

    res: dict[str, object] = {"smi_total_mib": _smi_total_mib(), "smi_used_idle_mib": _smi_used_mib()}
    idle = res["smi_used_idle_mib"]
    assert isinstance(idle, float)

    # 1 + 2: one process, context only, then with cuBLAS
    for mode in ("context", "cublas"):
        p = _spawn(mode, 0.0, 3.0)
        r = _first_line(p)
        r["smi_process_gib"] = (_smi_used_mib() - idle) / 1024
        p.wait()
        res[mode] = r
        print(mode, json.dumps(r), flush=True)

    # 3: N processes with a context at once
    ps = [_spawn("context", 0.0, 6.0) for _ in range(ns.processes)]
    rows = [_first_line(p) for p in ps]
    res["n_contexts"] = {"n": ns.processes, "smi_gib": (_smi_used_mib() - idle) / 1024,
                         "min_free_seen_gib": min(r["free_after_ctx_gib"] for r in rows)}
    for p in ps:
        p.wait()
    print("n_contexts", json.dumps(res["n_contexts"]), flush=True)

    # 4: the start-up check of a second server beside a first one holding its budget
    a = _spawn("budget", ns.u1, 8.0)
    ra = _first_line(a)
    b = _spawn("context", 0.0, 0.0)
    rb = _first_line(b)
    b.wait()
    a.wait()
    total = ra["total_gib"]
    predicted_free_for_b = total - ns.u1 * total - 2 * ns.context_gib
    res["startup_check"] = {
        "u1": ns.u1, "a": ra, "b_free_after_ctx_gib": rb["free_after_ctx_gib"],
        "predicted_b_free_gib": predicted_free_for_b,
        "error_gib": rb["free_after_ctx_gib"] - predicted_free_for_b,
        "largest_u2_that_starts": rb["free_after_ctx_gib"] / total,
        "largest_u2_predicted": predicted_free_for_b / total,
    }
    print("startup_check", json.dumps(res["startup_check"]), flush=True)
    if ns.out:
        with open(ns.out, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
