"""The proxy's CPU work per request, counted in instructions: this checkout against an earlier one.

    python benchmarks/proxy_cost.py --baseline-root ../biofleet-before [--requests 3000] [--rounds 3]

Wall-clock throughput on a shared machine swings by 15% between runs of the same code, which
hides a change of a few percent. Instructions are another matter: each proxy runs under
valgrind's callgrind with counting switched on only while a fixed number of requests goes
through it (after a warm-up), so the count per request repeats to within half a percent. It is
user-space work only (the kernel's share of each request, the same for both, is not in it).
Both proxies run in turns (order alternating every round) in front of the fake upstream of
``benchmarks/proxy.py``, at 64 and at 1 concurrent connection(s). Needs valgrind.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.proxy import BODY, ROOT, free_port, stop, wait_port

REQUEST = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
           + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)
REPLY_END = b'"total_tokens":2}}'  # the fake upstream's reply ends so, and has a Content-Length


async def _client(port: int, total: int, sent: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while sent[0] < total:
            sent[0] += 1
            writer.write(REQUEST)
            buf = b""
            while not buf.endswith(REPLY_END):
                chunk = await asyncio.wait_for(reader.read(65536), 120)
                if not chunk:
                    raise RuntimeError(f"the proxy closed the connection: {buf[:200]!r}")
                buf += chunk
            if not buf.startswith(b"HTTP/1.1 200 "):
                raise RuntimeError(f"not a 200: {buf[:200]!r}")
    finally:
        writer.close()


def drive(port: int, total: int, connections: int) -> None:
    async def go() -> None:
        sent = [0]
        await asyncio.gather(*(_client(port, total, sent) for _ in range(connections)))

    asyncio.run(go())


def instructions_per_request(root: Path, upstream: int, requests: int, connections: int, tmp: Path) -> float:
    port = free_port()
    out = tmp / f"callgrind.{port}"
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
         sys.executable, "-m", "biofleet.cli.main", "proxy", "--backend", f"bench=http://127.0.0.1:{upstream}",
         "--port", str(port), "--log-level", "warning"],
        env={**os.environ, "PYTHONPATH": str(root)}, cwd=str(root),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, timeout=300)
        time.sleep(3)  # first health probe
        drive(port, 300, connections)  # warm up: imports, pools, caches
        subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True, capture_output=True)
        drive(port, requests, connections)
        subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], check=True, capture_output=True)
    finally:
        stop(proc)
    counts = [int(m.group(1)) for f in tmp.glob(f"callgrind.{port}*")
              for m in re.finditer(r"^totals: (\d+)$", f.read_text(errors="replace"), re.M)]
    if not counts or max(counts) == 0:
        raise RuntimeError(f"callgrind counted nothing for {root}")
    return sum(counts) / requests


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline-root", type=Path, required=True, help="a checkout of the earlier commit")
    ap.add_argument("--requests", type=int, default=3000, help="requests counted per run at 64 connections")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind is not installed", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="biofleet-cost-"))
    up = free_port()
    upstream = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "proxy.py"), "--serve-upstream", str(up)],
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
    roots = {"before": a.baseline_root.resolve(), "after": ROOT}
    res: dict[tuple[str, int], list[float]] = {}
    try:
        wait_port(up)
        for connections, requests in ((64, a.requests), (1, max(200, a.requests // 4))):
            for r in range(a.rounds):
                for name in (("before", "after") if r % 2 == 0 else ("after", "before")):
                    n = instructions_per_request(roots[name], up, requests, connections, tmp)
                    res.setdefault((name, connections), []).append(n)
                    print(f"{name} at {connections}: {n:,.0f} instructions per request", file=sys.stderr)
    finally:
        stop(upstream)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"| connections | {a.baseline_root.name} (before) | this checkout (after) | change |")
    print("|---|---|---|---|")
    for c in (64, 1):
        b, f = statistics.median(res[("before", c)]), statistics.median(res[("after", c)])
        spread = max(max(v) / min(v) - 1 for k, v in res.items() if k[1] == c)
        print(f"| {c} | {b:,.0f} | {f:,.0f} | {f - b:+,.0f} ({f / b - 1:+.1%}; runs within {spread:.1%}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
