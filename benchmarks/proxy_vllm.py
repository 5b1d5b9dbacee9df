"""Proxy overhead in front of a real vLLM (CPU, tiny dummy-weight model), measured in one run.

    bash scripts/install-vllm.sh && python benchmarks/proxy_vllm.py [--duration 10]

Starts one vLLM server (the tiny Llama of `biofleet cpu-models`, --load-format dummy) and
`biofleet proxy` in front of it, then drives both with wrk at 1 connection (a chat completion
of 4 tokens) and reports requests/s, p50 and p99 and the proxy's added latency. Loopback only.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proxy import free_port, run_wrk, wait_port

BODY = '{"model":"tiny","messages":[{"role":"user","content":"hello"}],"max_tokens":4}'


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--python", default=str(Path.home() / ".cache/biofleet/vllm-venv/bin/python"))
    args = ap.parse_args()
    from biofleet.devtools.tinymodel import make_tiny_llama

    tmp = Path(tempfile.mkdtemp(prefix="bf-vllm-bench-"))
    model = make_tiny_llama(tmp / "tiny-llama")
    key = tmp / "key"
    key.write_text("bench-key\n")
    vport, pport = free_port(), free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_API_KEY": "bench-key",
           "OMP_NUM_THREADS": "1"}
    procs = []
    try:
        t0 = time.monotonic()
        procs.append(subprocess.Popen(
            [args.python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--served-model-name",
             "tiny", "--host", "127.0.0.1", "--port", str(vport), "--max-model-len", "1024", "--load-format", "dummy"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(vport, timeout=300)
        print(f"vLLM ready in {time.monotonic() - t0:.0f}s")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "biofleet.cli.main", "proxy", "--backend", f"tiny=http://127.0.0.1:{vport}",
             "--port", str(pport), "--backend-key-file", str(key), "--log-level", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(pport)
        time.sleep(4)  # first health probe admits the backend
        lua = tmp / "post.lua"
        lua.write_text(f"wrk.method = \"POST\"\nwrk.body = '{BODY}'\n"
                       f"wrk.headers[\"Content-Type\"] = \"application/json\"\n"
                       "wrk.headers[\"Authorization\"] = \"Bearer bench-key\"\n")
        path = "/v1/chat/completions"
        run_wrk(f"http://127.0.0.1:{vport}{path}", 1, 2, lua)  # warm up
        direct = run_wrk(f"http://127.0.0.1:{vport}{path}", 1, args.duration, lua)
        proxied = run_wrk(f"http://127.0.0.1:{pport}{path}", 1, args.duration, lua)
        print(f"{'target':10} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
        for name, r in (("direct", direct), ("biofleet", proxied)):
            print(f"{name:10} {r['rps']:8.1f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f}")
        print(f"added by the proxy: p50 {proxied['p50_ms'] - direct['p50_ms']:+.2f} ms, "
              f"p99 {proxied['p99_ms'] - direct['p99_ms']:+.2f} ms; "
              f"throughput ratio {proxied['rps'] / direct['rps']:.3f}")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
