"""Device check: does a cold torch.compile raise the activation peak that vLLM's profile measures?

Needs a CUDA GPU, PyTorch and Triton; not part of the test suite. Run it on a GPU node:

    python3 scripts/device/compile_peak.py --out compile.json

vLLM profiles activations with one forward pass over ``max_num_batched_tokens`` dummy tokens. With CUDA
graphs on (no ``--enforce-eager``) that pass is also the first call of the torch.compile'd model, so
Inductor compiles (and, with the ``combo_kernels`` / ``benchmark_combo_kernel`` settings vLLM turns on
for torch >= 2.9, benchmarks kernel variants on the GPU) inside the profiling window. Logs of vLLM 0.29
with Qwen3-8B on one card show the same run profiled at 1.28 GiB with a cold compile and 0.44 GiB after an
"AOT compile cache hit" (cases 19210 / 19212); eager runs 0.40-0.41 GiB.

This script builds a decoder stack with Qwen3-8B's dimensions (random bf16 weights, attention replaced
by its projections, as vLLM's profile skips attention), and runs one forward pass per fresh process:
eager; compiled with a cold Inductor cache; compiled again in a new process over the now-warm cache;
and cold without the combo-kernel benchmarking. For each it reports what vLLM's memory profiler would
read: the peak allocation above what stays allocated (``transient_peak_headroom``), the peak above the
weights, and the device memory consumed (``mem_get_info``) after ``empty_cache``. It is this stack's
figure, not vLLM's own model code.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

GiB = 1024 ** 3


def child(mode: str, tokens: int, layers: int, combo: bool, device: str) -> dict[str, object]:
    import torch
    import torch.nn.functional as F
    from torch import nn

    if mode == "compile":
        import torch._inductor.config as icfg

        icfg.combo_kernels = combo
        icfg.benchmark_combo_kernel = combo
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    hidden, heads, kv_heads, hd, inter, vocab = 4096, 32, 8, 128, 12288, 151936
    dt = torch.bfloat16

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Linear(hidden, (heads + 2 * kv_heads) * hd, bias=False)
            self.o = nn.Linear(heads * hd, hidden, bias=False)
            self.gate_up = nn.Linear(hidden, 2 * inter, bias=False)
            self.down = nn.Linear(inter, hidden, bias=False)
            self.n1 = nn.RMSNorm(hidden, eps=1e-6)
            self.n2 = nn.RMSNorm(hidden, eps=1e-6)
            self.qn = nn.RMSNorm(hd, eps=1e-6)
            self.kn = nn.RMSNorm(hd, eps=1e-6)

        def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
            t = x.shape[0]
            q, k, v = self.qkv(self.n1(x)).split([heads * hd, kv_heads * hd, kv_heads * hd], dim=-1)
            q = self.qn(q.view(t, heads, hd))
            k = self.kn(k.view(t, kv_heads, hd))

            def rope(z: torch.Tensor) -> torch.Tensor:
                a, b = z.chunk(2, dim=-1)
                return torch.cat((a * cos - b * sin, b * cos + a * sin), dim=-1)

            q, k = rope(q), rope(k)
            # the profile skips attention: its output has q's shape; k and v reach it through a sum
            attn = q + (k.sum(dim=1, keepdim=True) + v.view(t, kv_heads, hd).sum(dim=1, keepdim=True)) * 1e-3
            x = x + self.o(attn.reshape(t, heads * hd))
            g, u = self.gate_up(self.n2(x)).chunk(2, dim=-1)
            return x + self.down(F.silu(g) * u)

    class Stack(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab, hidden)
            self.layers = nn.ModuleList(Layer() for _ in range(layers))
            self.norm = nn.RMSNorm(hidden, eps=1e-6)
            inv = 1.0 / (1e6 ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
            self.register_buffer("inv", inv)

        def forward(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
            ang = pos.float()[:, None] * self.inv[None, :]
            cos, sin = ang.cos()[:, None, :].to(dt), ang.sin()[:, None, :].to(dt)
            x = self.embed(ids)
            for layer in self.layers:
                x = layer(x, cos, sin)
            return self.norm(x)

    with torch.device(dev):
        model = Stack().to(dt).eval()
    lm_head = torch.randn(vocab, hidden, device=dev, dtype=dt) * 0.02
    fn = model
    if mode == "compile":
        fn = torch.compile(model)  # vLLM compiles the general shape: the token dim is marked dynamic below

    def measure() -> dict[str, float]:
        import gc

        ids = torch.randint(0, vocab, (tokens,), device=dev)
        pos = torch.arange(tokens, device=dev)
        if mode == "compile":
            torch._dynamo.mark_dynamic(ids, 0)
            torch._dynamo.mark_dynamic(pos, 0)
        gc.collect()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        a0 = torch.cuda.memory_allocated() if cuda else 0
        f0 = torch.cuda.mem_get_info()[0] if cuda else 0
        t0 = time.monotonic()
        with torch.inference_mode():
            h = fn(ids, pos)
            logits = h[-8:] @ lm_head.t()
            del h, logits
        if cuda:
            torch.cuda.synchronize()
        secs = time.monotonic() - t0
        del ids, pos
        gc.collect()
        peak = torch.cuda.max_memory_allocated() if cuda else 0
        a1 = torch.cuda.memory_allocated() if cuda else 0
        if cuda:
            torch.cuda.empty_cache()
        f1 = torch.cuda.mem_get_info()[0] if cuda else 0
        return {"seconds": round(secs, 2), "headroom_gib": (peak - a1) / GiB, "peak_increase_gib": (peak - a0) / GiB,
                "kept_gib": (a1 - a0) / GiB, "consumed_gib": (f0 - f1) / GiB}

    first = measure()
    second = measure()
    return {"mode": mode, "tokens": tokens, "layers": layers, "combo_bench": combo, "first": first, "second": second,
            "weights_gib": (torch.cuda.memory_allocated() / GiB) if cuda else 0.0,
            "device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__}


def _run(args: list[str], cache: str, timeout: float) -> dict[str, object]:
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache, TRITON_CACHE_DIR=os.path.join(cache, "triton"),
               PYTHONUNBUFFERED="1")
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, __file__, "--child", *args], env=env, capture_output=True, text=True,
                       timeout=timeout)
    if r.returncode != 0:
        return {"args": args, "error": r.stderr[-2000:], "wall_s": round(time.monotonic() - t0, 1)}
    res: dict[str, object] = json.loads(r.stdout.strip().splitlines()[-1])
    res["wall_s"] = round(time.monotonic() - t0, 1)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="append each result to this file as a JSON line")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--tokens", type=int, nargs="+", default=[4096, 512])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--timeout", type=float, default=240.0, help="seconds per child process")
    ap.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    ns = ap.parse_args()
    if ns.child is not None:
        mode, tokens, layers, combo, device = ns.child
        print(json.dumps(child(mode, int(tokens), int(layers), combo == "1", device)), flush=True)
        return
    plan: list[tuple[str, int, bool, str]] = []  # (mode, tokens, combo benchmarking, cache name)
    for t in ns.tokens:
        plan += [("eager", t, False, f"e{t}"), ("compile", t, True, f"c{t}"), ("compile", t, True, f"c{t}")]
    plan.append(("compile", ns.tokens[0], False, "nocombo"))
    root = tempfile.mkdtemp(prefix="compile-peak-")
    for mode, t, combo, cache in plan:
        res = _run([mode, str(t), str(ns.layers), "1" if combo else "0", ns.device], os.path.join(root, cache),
                   ns.timeout)
        res["cache"] = cache
        line = json.dumps(res)
        print(line, flush=True)
        if ns.out:
            with open(ns.out, "a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()
