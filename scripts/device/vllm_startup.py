"""Device check: start a real vLLM on the GPU and keep its start-up log, to score the fit-check against.

Needs a CUDA GPU and vLLM (with its dependencies); not part of the test suite. No weights are downloaded:
each run builds a model directory from a published config.json and starts vLLM's offline ``LLM`` with
``load_format="dummy"`` (random weights of the real shapes: the same memory as the real checkpoint) and no
tokenizer, which runs the whole start-up (weights, profiling, KV cache, CUDA graphs, sampler warm-up) and exits.

    python3 scripts/device/vllm_startup.py --config tests/data/model_configs/Qwen--Qwen3-8B.json --out OUTDIR

Each run is a fresh process with its own environment (``VLLM_USE_V2_MODEL_RUNNER`` for the runner); runs of one
model share vLLM's compile cache, so a run repeated after the first finds it warm. Per run the script writes
``OUTDIR/<name>.log`` (vLLM's output) and appends the figures it read from the log to ``OUTDIR/runs.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

# name, environment, LLM keyword arguments (besides model / load_format / skip_tokenizer_init)
# (the offline LLM class defaults to 16,384 batched tokens on an H100-class card where `vllm serve` takes 8,192: the
# server's figure is given; 256 sequences keep the sampler warm-up inside the card without FlashInfer's sampler)
_SERVE = {"max_num_batched_tokens": 8192, "max_num_seqs": 256}
RUNS: list[tuple[str, dict[str, str], dict[str, object]]] = [
    ("default", {}, _SERVE),
    ("v1-runner-64", {"VLLM_USE_V2_MODEL_RUNNER": "0"}, {**_SERVE, "max_num_seqs": 64}),
    ("default-warm", {}, _SERVE),
    ("eager", {}, {**_SERVE, "enforce_eager": True}),
]

# log lines worth keeping, as (key, pattern): the first group is the figure
_LINES = [
    ("weights_gib", r"Model loading took ([\d.]+) GiB"),
    ("torch_peak_gib", r"torch peak memory increase: ([\d.]+) ?GiB"),
    ("non_torch_gib", r"non-torch forward increase memory: ([\d.]+) ?GiB"),
    ("total_non_kv_gib", r"Total non KV cache memory: ([\d.]+) ?GiB"),
    ("available_kv_gib", r"Available KV cache memory: ([\d.]+) GiB"),
    ("kv_tokens", r"GPU KV cache size: ([\d,]+) tokens"),
    ("max_concurrency", r"Maximum concurrency for [\d,]+ tokens per request: ([\d.]+)x"),
    ("graph_gib", r"Graph capturing finished in \d+ secs?, took ([-\d.]+) GiB"),
    ("graph_estimate_gib", r"Estimated CUDA graph memory: ([\d.]+) GiB"),
    ("version", r"Initializing a V1 LLM engine \(v([^)]+)\)"),
    ("model_runner", r"(V2 model runner|GPUModelRunnerV2|model_runner_v2)"),
    ("max_num_seqs", r"max_num_seqs=(\d+)"),
    ("max_num_batched_tokens", r"max_num_batched_tokens=(\d+)"),
    ("free_on_device", r"Free memory on device \(([\d.]+/[\d.]+) GiB\)"),
]


def child(config: str, kwargs: dict[str, object]) -> None:
    import torch
    from vllm import LLM

    with open(config) as f:
        cfg = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    model = tempfile.mkdtemp(prefix="vllm-model-")
    with open(os.path.join(model, "config.json"), "w") as f:
        json.dump(cfg, f)
    free, total = torch.cuda.mem_get_info()
    print(f"DEVICE {torch.cuda.get_device_name()} free {free / 2**30:.2f} total {total / 2**30:.2f} GiB", flush=True)
    llm = LLM(model=model, load_format="dummy", skip_tokenizer_init=True, **kwargs)  # type: ignore[arg-type]
    free, total = torch.cuda.mem_get_info()
    print(f"STARTED free after start-up {free / 2**30:.2f} of {total / 2**30:.2f} GiB", flush=True)
    del llm


def figures(log: str) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, pat in _LINES:
        m = re.search(pat, log)
        if m:
            out[key] = m.group(1).replace(",", "")
    out["started"] = "STARTED free after start-up" in log
    err = [ln for ln in log.splitlines() if re.search(r"Error|error:|out of memory", ln)]
    out["errors"] = err[-3:]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="a published config.json")
    ap.add_argument("--out", required=True, help="folder for the logs and runs.jsonl")
    ap.add_argument("--only", nargs="*", help="run only these names")
    ap.add_argument("--timeout", type=float, default=240.0, help="seconds per run")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ns = ap.parse_args()
    if ns.child is not None:
        child(ns.config, json.loads(ns.child))
        return
    os.makedirs(ns.out, exist_ok=True)
    for name, env, kwargs in RUNS:
        if ns.only and name not in ns.only:
            continue
        t0 = time.monotonic()
        # without the flashinfer package 0.23 must be told to sample with PyTorch (flashinfer_sampler_supported
        # imports FlashInfer's attention backend unless VLLM_USE_FLASHINFER_SAMPLER=0)
        run_env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_LOGGING_LEVEL="DEBUG",
                       PYTHONUNBUFFERED="1", VLLM_USE_FLASHINFER_SAMPLER="0", **env)
        try:
            r = subprocess.run([sys.executable, __file__, "--config", ns.config, "--out", ns.out,
                                "--child", json.dumps(kwargs)], env=run_env, capture_output=True, text=True,
                               timeout=ns.timeout)
            log, rc = r.stdout + r.stderr, r.returncode
        except subprocess.TimeoutExpired as e:
            log = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            log += (e.stderr or b"").decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
            rc = -1
        with open(os.path.join(ns.out, f"{name}.log"), "w") as f:
            f.write(log)
        rec = {"name": name, "env": env, "kwargs": kwargs, "rc": rc, "wall_s": round(time.monotonic() - t0, 1),
               **figures(log)}
        print(json.dumps(rec), flush=True)
        with open(os.path.join(ns.out, "runs.jsonl"), "a") as f:
            f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
