"""Calibrate the fit-check against real vLLM start-ups (tests/data/vllm_memory_cases.jsonl).

For every case that states enough (GPU, utilisation, model), predict weights, KV tokens and
whether the server started; assert every verdict, weights within 5 % and KV within 15 %.
``pytest -s`` prints the per-case table that docs/fit-check.md reproduces.

How each case is read (interpretations are ours and are spelled out per case):
- ``visible`` overrides the catalogue's visible GiB when the log printed the total.
- V0 engines profiled a whole ``max_model_len`` batch (chunked prefill off), so those cases
  set ``max_num_batched_tokens``; V1 logs state it.
- vLLM before ~0.11 did not take CUDA graphs out of the KV budget (they sit on top), so for
  those logs the comparable prediction is KV + CUDA graphs (``graphs_outside``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from biofleet.catalog.gpus import GpuSpec, custom_gpu, get_gpu
from biofleet.catalog.models import get_model
from biofleet.fitcheck import GiB, NodeInput, ServerInput, check

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data" / "vllm_memory_cases.jsonl"
SHARED = REPO.parent / "shared" / "calibration" / "vllm_memory_cases.jsonl"

WEIGHTS_TOL, KV_TOL = 0.05, 0.15


@dataclass(frozen=True)
class Case:
    gpu: str | GpuSpec | None  # None: the log does not say -> no verdict / KV prediction
    model: str
    visible: float | None = None
    gpus: int = 1
    servers: int = 1  # identical-shape servers sharing the same GPUs (case #45)
    second_model: str | None = None
    kw: dict[str, Any] = field(default_factory=dict)
    graphs_outside: bool = True
    kv_tokens: bool = False  # compare KV tokens with the log
    kv_gib: bool = False  # compare KV GiB (hybrid models: tokens are not bytes / per-token)
    verdict: bool = True
    note: str = ""


# Per-case reading of the log. Reasons for every check left out are in ``note``.
CASES: dict[int, Case] = {
    3: Case("A100-40GB", "meta-llama/Meta-Llama-3-8B", visible=39.5,
            kw=dict(dtype="bfloat16", max_model_len=8192, max_num_batched_tokens=8192), kv_tokens=True,
            note="logged activation peak 9.37 GiB is the anomaly the issue reports (we model 0.97); "
                 "KV checked with the logged peak substituted"),
    6: Case("T4", "hiuman/Vistral-7B-Chat-quantize",
            kw=dict(dtype="float16", quantization="awq", gpu_memory_utilization=0.1, enforce_eager=True)),
    9: Case("L4", "meta-llama/Meta-Llama-3.1-8B-Instruct", kw=dict(max_model_len=1024),
            note="util not stated: default 0.9"),
    12: Case("T4", "mistralai/Mistral-7B-Instruct-v0.2", visible=14.57, kw=dict(dtype="half"),
             note="util not stated: default 0.9"),
    15: Case("T4", "Qwen/Qwen2.5-1.5B-Instruct", visible=14.56, kv_tokens=True,
             kw=dict(dtype="float16", max_model_len=32768, gpu_memory_utilization=0.5,
                     max_num_batched_tokens=32768)),
    18: Case(None, "neuralmagic/Meta-Llama-3.1-70B-Instruct-quantized.w8a8", kw=dict(max_model_len=2048),
             note="GPU not named: weights only"),
    21: Case("RTX-3090", "Qwen/Qwen1.5-7B-Chat-GPTQ-Int4", kv_tokens=True,
             kw=dict(max_model_len=32768, max_num_batched_tokens=32768),
             note="2024 V0 build assumed (no chunked prefill); util default 0.9"),
    24: Case(custom_gpu(16, "8.6", name="16GB-card"), "meta-llama/Llama-3.1-8B-Instruct", visible=15.59,
             kw=dict(dtype="float16"), note="card not named: 16 GB, CC 8.6 assumed (CC only matters for dtype)"),
    27: Case("A100-80GB", "Qwen/Qwen2-7B-Instruct", kv_tokens=True,
             kw=dict(max_model_len=16384, gpu_memory_utilization=0.25, max_num_batched_tokens=2048)),
    30: Case("A100-80GB", "openai/gpt-oss-120b", gpus=4, kv_gib=True,
             kw=dict(max_model_len=16384, gpu_memory_utilization=0.8, tensor_parallel_size=4,
                     max_num_batched_tokens=2048),
             note="ran TP4 across nodes with Ray; modelled as one 4-GPU node; hybrid attention: KV GiB compared"),
    33: Case(None, "Qwen/Qwen2.5-Coder-7B-Instruct", gpus=2,
             kw=dict(max_model_len=32768, tensor_parallel_size=2), note="GPU and util unknown: weights per rank only"),
    36: Case("RTX-2080Ti", "TheBloke/Mistral-7B-OpenOrca-AWQ",
             kw=dict(dtype="half", quantization="awq", max_model_len=4096, gpu_memory_utilization=0.7,
                     max_num_batched_tokens=4096)),
    39: Case("A100-80GB", "meta-llama/Llama-2-70b-hf", gpus=4,
             kw=dict(tensor_parallel_size=4, max_num_batched_tokens=4096),
             note="v0.2.x profiler (PR #2031) left 13.6 GiB/rank of non-KV memory; not a modern figure: "
                  "KV reported, not asserted"),
    42: Case("A100-80GB", "openai/gpt-oss-20b", kv_gib=True, graphs_outside=False,
             kw=dict(max_model_len=131072, gpu_memory_utilization=0.65),
             note="A100 80GB per the blog; v0.19 subtracts CUDA graphs; hybrid attention: KV GiB compared"),
    45: Case("A100-40GB", "meta-llama/Llama-3.1-70B-Instruct", gpus=8, servers=2,
             second_model="meta-llama/Llama-3.3-70B-Instruct",
             kw=dict(max_model_len=32768, tensor_parallel_size=8), note="two TP8 servers, default util 0.9 each"),
    48: Case(None, "Qwen/Qwen1.5-7B-Chat", verdict=False, note="GPU not stated: nothing to predict"),
    51: Case(None, "microsoft/Phi-3-vision-128k-instruct", verdict=False, note="GPU not stated: nothing to predict"),
    54: Case("T4", "baichuan-inc/Baichuan2-13B-Chat"),
    57: Case("P40", "mistralai/Mistral-7B-Instruct-v0.2", note="model not stated: stand-in (the GPU decides)"),
    60: Case("A10G", "Qwen/Qwen2.5-7B-Instruct", verdict=False, kw=dict(quantization="fp8", max_model_len=4096),
             note="historical (early-2024 FP8 needed CC 9.0); current vLLM runs FP8 weight-only on CC 8.6: "
                  "we expect a fp8-weight-only warning instead"),
    63: Case("T4", "google/gemma-2-2b-it"),
    66: Case("A100-80GB", "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ",
             kw=dict(quantization="awq", dtype="bfloat16"),
             note="GPU and model not stated: the AWQ kernel refuses bf16 on any GPU (stand-ins)"),
}


def _cases_file() -> Path:
    if SHARED.is_file():  # the team's shared copy, when this checkout sits beside it
        return SHARED
    if DATA.is_file():
        return DATA
    pytest.skip(f"calibration cases not found at {SHARED} or {DATA}")


def load_cases() -> list[dict[str, Any]]:
    return [json.loads(line) for line in _cases_file().read_text().splitlines() if line.strip()]


def _gpu(c: Case) -> GpuSpec:
    g = c.gpu if isinstance(c.gpu, GpuSpec) else get_gpu(c.gpu or "A100-80GB")  # weights need no real GPU
    return g.model_copy(update={"visible_gib": c.visible}) if c.visible else g


def predict(c: Case):
    gpu = _gpu(c)
    tp = c.kw.get("tensor_parallel_size", 1)
    servers = []
    for i in range(c.servers):
        model = get_model(c.second_model if i and c.second_model else c.model)
        servers.append((ServerInput(name=f"s{i}", model=model, **c.kw), tuple(range(tp))))
    report = check([NodeInput(label="case", gpu=gpu, gpu_count=c.gpus, servers=tuple(servers))])
    return report, report.servers[0], gpu


def _rel(pred: float, logged: float) -> float:
    return (pred - logged) / logged


def evaluate(row: dict[str, Any]) -> dict[str, Any]:
    c = CASES[row["id"]]
    report, s, gpu = predict(c)
    logged_started = str(row["outcome"]).startswith("started")
    out: dict[str, Any] = {"id": row["id"], "model": c.model.split("/")[-1][:34],
                           "gpu": gpu.name if c.gpu else "-", "logged": "started" if logged_started else "failed",
                           "predicted": "started" if report.ok else "failed", "codes": sorted({
                               f.code for f in report.all_findings() if f.severity != "info"}),
                           "report": report, "note": c.note, "verdict": c.verdict and c.gpu is not None}
    if row.get("weights_loaded_gib"):
        out["w_log"], out["w_pred"] = row["weights_loaded_gib"], s.weights_gib
        out["w_err"] = _rel(s.weights_gib, row["weights_loaded_gib"])
    kv_pred = s.kv_cache_gib + (s.cuda_graph_gib if c.graphs_outside else 0.0)
    if c.kv_tokens and row.get("kv_cache_tokens"):
        tokens = int(kv_pred * GiB // s.kv_bytes_per_token) // 16 * 16
        out["t_log"], out["t_pred"] = row["kv_cache_tokens"], tokens
        out["t_err"] = _rel(tokens, row["kv_cache_tokens"])
        if row.get("activation_peak_gib") and row["id"] == 3:  # the anomaly: substitute the logged peak
            kv_sub = s.budget_gib - s.weights_gib - row["non_torch_gib"] - row["activation_peak_gib"]
            out["t_sub"] = int(kv_sub * GiB // s.kv_bytes_per_token) // 16 * 16
            out["t_sub_err"] = _rel(out["t_sub"], row["kv_cache_tokens"])
    if c.kv_gib and row.get("kv_cache_gib"):
        out["kv_log"], out["kv_pred"] = row["kv_cache_gib"], kv_pred
        out["kv_err"] = _rel(kv_pred, row["kv_cache_gib"])
    if row["id"] == 39 and row.get("gpu_blocks"):
        tokens = int(kv_pred * GiB // s.kv_bytes_per_token) // 16 * 16
        out["t_log"], out["t_pred"] = row["gpu_blocks"] * 16, tokens
        out["t_err"] = _rel(tokens, row["gpu_blocks"] * 16)
    return out


def _pct(x: float | None) -> str:
    return "" if x is None else f"{x * 100:+.1f}%"


def table(results: list[dict[str, Any]]) -> str:
    head = ("| # | model | GPU | logged | predicted | weights log/pred GiB | err | KV log/pred | err | note |\n"
            "|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in results:
        w = f"{r['w_log']:.2f} / {r['w_pred']:.2f}" if "w_log" in r else ""
        if "t_log" in r:
            kv = f"{r['t_log']:,} / {r['t_pred']:,} tok"
            err = _pct(r["t_err"])
            if "t_sub" in r:
                err += f" ({_pct(r['t_sub_err'])} with logged activation)"
        elif "kv_log" in r:
            kv, err = f"{r['kv_log']:.2f} / {r['kv_pred']:.2f} GiB", _pct(r["kv_err"])
        else:
            kv, err = "", ""
        pred = r["predicted"] + (f" ({', '.join(r['codes'])})" if r["codes"] else "")
        if not r["verdict"]:
            pred = "(not asserted) " + pred
        lines.append(f"| {r['id']} | {r['model']} | {r['gpu']} | {r['logged']} | {pred} | {w} | "
                     f"{_pct(r.get('w_err'))} | {kv} | {err} | {r['note']} |")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def results() -> list[dict[str, Any]]:
    rows = load_cases()
    missing = [r["id"] for r in rows if r["id"] not in CASES]
    assert not missing, f"cases without a reading in CASES: {missing}"
    res = [evaluate(r) for r in rows]
    print("\n" + table(res))
    return res


def test_data_copy_matches_shared():
    if not SHARED.is_file():
        pytest.skip("no ../shared checkout beside the repo; tests use tests/data")
    assert DATA.read_text() == SHARED.read_text(), "tests/data copy is stale: copy the shared file again"


def test_every_stated_verdict(results):
    wrong = [(r["id"], r["logged"], r["predicted"], r["codes"]) for r in results
             if r["verdict"] and r["logged"] != r["predicted"]]
    assert not wrong, wrong


def test_weights_within_5_percent(results):
    checked = [r for r in results if "w_err" in r]
    assert len(checked) >= 7
    bad = [(r["id"], round(r["w_err"] * 100, 1)) for r in checked if abs(r["w_err"]) > WEIGHTS_TOL]
    assert not bad, bad


def test_kv_within_15_percent(results):
    checked = 0
    for r in results:
        if r["id"] == 39:
            continue  # historical profiler, see note
        if "t_sub_err" in r:
            assert abs(r["t_sub_err"]) <= KV_TOL, r
            checked += 1
        elif "t_err" in r:
            assert abs(r["t_err"]) <= KV_TOL, (r["id"], r["t_log"], r["t_pred"])
            checked += 1
        if "kv_err" in r:
            assert abs(r["kv_err"]) <= KV_TOL, (r["id"], r["kv_log"], r["kv_pred"])
            checked += 1
    assert checked >= 5


def test_failure_reasons(results):
    by = {r["id"]: r for r in results}
    assert "no-kv-memory" in by[6]["codes"]
    assert "no-kv-memory" in by[12]["codes"] and "no-kv-memory" in by[24]["codes"]
    assert "kv-cache-too-small" in by[21]["codes"]
    assert "util-sum-too-high" in by[45]["codes"]
    assert "bf16-unsupported" in by[54]["codes"] and "bf16-unsupported" in by[63]["codes"]
    assert "gpu-unsupported" in by[57]["codes"]
    assert "quant-dtype-mismatch" in by[66]["codes"]
    assert "fp8-weight-only" in by[60]["codes"] and by[60]["report"].ok  # current vLLM: warning only


def test_l4_llama_default_context_fails():
    # case #9's author had to cut max_model_len: at the default 131072 one sequence does not fit.
    report, s, _ = predict(Case("L4", "meta-llama/Llama-3.1-8B-Instruct"))
    assert not report.ok and "kv-cache-too-small" in report.codes()
    assert 1024 < s.kv_cache_tokens < 131072
