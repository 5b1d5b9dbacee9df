"""Fit-check: every finding code, the physics, and the seeds' plans that fail on real GPUs."""

from __future__ import annotations

import re
from typing import Any

import pytest

from biofleet.catalog.gpus import GpuSpec, custom_gpu, get_gpu
from biofleet.catalog.models import get_model
from biofleet.fitcheck import (
    FitReport,
    NodeInput,
    ServerInput,
    check,
    check_server_on_gpu,
    kv_bytes_per_token,
    rope_cache_gib,
    weights_gib,
)

T4, L4, A100, H100, P40, V100 = (get_gpu(n) for n in ("T4", "L4", "A100-80GB", "H100", "P40", "V100"))
FA = {"VLLM_ATTENTION_BACKEND": "FLASH_ATTN"}


def srv(model: str, name: str = "s", **kw: Any) -> ServerInput:
    return ServerInput(name=name, model=get_model(model), **kw)


def one(model: str, gpu: GpuSpec = T4, gpus_on_node: int = 1, **kw: Any) -> FitReport:
    return check_server_on_gpu(srv(model, **kw), gpu, gpus_on_node=gpus_on_node)


def node(label: str, gpu: GpuSpec, count: int, *servers: tuple[ServerInput, tuple[int, ...]]) -> NodeInput:
    return NodeInput(label=label, gpu=gpu, gpu_count=count, servers=tuple(servers))


CODER, CODER_AWQ = "Qwen/Qwen2.5-Coder-7B-Instruct", "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ"


# ---------------------------------------------------------------- a plan that fits

def test_awq_coder_fits_t4_with_numbers():
    r = one(CODER_AWQ, dtype="float16", quantization="awq", max_model_len=8192, gpu_memory_utilization=0.85)
    s = r.servers[0]
    assert r.ok and not [f for f in r.all_findings() if f.severity != "info"]
    assert 5.0 < s.weights_gib < 5.4  # 2.2 GB fp16 embeddings + 4.16-bit layers
    assert s.kv_bytes_per_token == 2 * 28 * 4 * 128 * 2  # 56 KiB
    assert s.kv_cache_tokens % 16 == 0 and (s.max_concurrency or 0) > 10
    assert s.overhead_gib == pytest.approx(s.activation_gib + s.non_torch_gib + s.cuda_graph_gib)


def test_json_shape():
    d = one(CODER_AWQ, dtype="float16", quantization="awq", max_model_len=8192,
            gpu_memory_utilization=0.9).to_json_dict()
    assert set(d) == {"ok", "servers", "gpus", "findings"}
    s = d["servers"][0]
    for k in ("name", "ok", "weights_gib", "overhead_gib", "kv_cache_gib", "kv_cache_tokens", "max_concurrency",
              "budget_gib", "findings"):
        assert k in s
    assert s["weights_gib"] == round(s["weights_gib"], 2)
    assert d["gpus"][0]["servers"] == ["s"] and d["gpus"][0]["util_sum"] == 0.9


# ---------------------------------------------------------------- capability codes

def test_bf16_on_t4_and_auto_dtype():
    r = one(CODER_AWQ, dtype="bfloat16")
    (f,) = [f for f in r.all_findings() if f.code == "bf16-unsupported"]
    assert f.severity == "error" and f.fix == "use dtype float16" and "7.5" in f.message
    # before 0.9, dtype auto took bf16 from config.json and the worker refused it on a T4
    r = one("meta-llama/Llama-3.2-3B-Instruct", max_model_len=4096, vllm_version="0.8.5")
    assert "bf16-unsupported" in r.codes() and "auto" in r.all_findings()[0].message and not r.ok
    # from 0.9 vLLM falls back to float16 and says so
    r = one("meta-llama/Llama-3.2-3B-Instruct", max_model_len=4096)
    assert "bf16-unsupported" not in r.codes() and "dtype-fallback" in r.codes() and r.servers[0].dtype == "float16"
    assert "bf16-unsupported" not in one("meta-llama/Llama-3.2-3B-Instruct", gpu=L4, max_model_len=4096).codes()


def test_flash_attn_env_on_t4():
    r = one(CODER_AWQ, dtype="float16", env=FA, max_model_len=4096)
    assert "attention-backend-unsupported" in r.codes() and not r.ok
    assert "attention-backend-unsupported" not in one(CODER_AWQ, gpu=L4, env=FA).codes()


def test_pascal_unsupported():
    r = one("microsoft/Phi-3.5-mini-instruct", gpu=P40, dtype="float16", max_model_len=4096)
    assert "gpu-unsupported" in r.codes() and not r.ok


def test_awq_on_non_awq_checkpoint_names_the_variant():
    r = one(CODER, dtype="float16", quantization="awq", max_model_len=8192)
    (f,) = [f for f in r.all_findings() if f.code == "awq-checkpoint-mismatch"]
    assert f.fix == "use Qwen/Qwen2.5-Coder-7B-Instruct-AWQ with quantization awq"
    r = one("Qwen/Qwen2.5-Math-7B-Instruct", dtype="float16", quantization="awq")
    (f,) = [f for f in r.all_findings() if f.code == "awq-checkpoint-mismatch"]
    assert "models:" in f.fix  # no AWQ checkpoint in the catalogue


def test_gptq_and_other_quant_mismatch():
    assert "gptq-checkpoint-mismatch" in one(CODER, dtype="float16", quantization="gptq").codes()
    assert "quant-checkpoint-mismatch" in one(CODER_AWQ, dtype="float16", quantization="fp8", gpu=H100).codes()
    r = one(CODER_AWQ, dtype="float16", max_model_len=8192)
    assert "quant-auto-detected" in r.codes() and r.ok


def test_awq_kernel_rules():
    assert "quant-dtype-mismatch" in one(CODER_AWQ, gpu=A100, dtype="bfloat16", quantization="awq").codes()
    assert one(CODER_AWQ, gpu=A100, dtype="bfloat16", quantization="awq_marlin").ok
    assert "quant-unsupported-on-gpu" in one(CODER_AWQ, gpu=V100, dtype="float16", quantization="awq").codes()
    # Marlin on Turing: refused before vLLM 0.14, run from it (PR #29901)
    old = one(CODER_AWQ, dtype="float16", quantization="awq_marlin", max_model_len=8192, vllm_version="0.13.0")
    assert "quant-unsupported-on-gpu" in old.codes()
    assert "quant-unsupported-on-gpu" not in one(CODER_AWQ, dtype="float16", quantization="awq_marlin",
                                                 max_model_len=8192).codes()


def test_fp8_rules():
    assert "fp8-unsupported" in one(CODER, dtype="float16", quantization="fp8").codes()
    r = one(CODER, gpu=get_gpu("A10G"), quantization="fp8", max_model_len=8192)
    assert "fp8-weight-only" in r.codes() and r.ok
    r = one(CODER, gpu=H100, quantization="fp8", max_model_len=8192)
    assert r.ok and not {"fp8-weight-only", "fp8-unsupported"} & r.codes()
    assert r.servers[0].weights_gib < 0.6 * one(CODER, gpu=H100).servers[0].weights_gib
    assert "fp8-kv-cache-old-gpu" in one(CODER_AWQ, dtype="float16", kv_cache_dtype="fp8").codes()


def test_gemma2_on_t4():
    # config says float32; vLLM 0.5 cast Gemma-2 to bf16, which a T4 cannot run (calibration #63)
    r = one("google/gemma-2-2b-it", max_model_len=4096, vllm_version="0.5.1")
    assert {"bf16-unsupported", "softcap-unsupported"} <= r.codes()
    # newer builds keep Gemma-2 out of float16 and have no bf16 on a T4: float32 it is
    assert one("google/gemma-2-2b-it", max_model_len=4096).servers[0].dtype == "float32"
    assert "float32" in next(f for f in r.all_findings() if f.code == "bf16-unsupported").fix
    assert "fp16-unstable" in one("google/gemma-2-2b-it", dtype="float16", max_model_len=4096).codes()
    assert one("google/gemma-2-2b-it", dtype="float32", max_model_len=4096).ok


def test_kind_mismatch_and_unsupported_arch():
    assert "kind-mismatch" in one("BAAI/bge-m3").codes()
    assert "architecture-unsupported" in one("microsoft/BioGPT-Large", dtype="float16").codes()


# ---------------------------------------------------------------- plan codes

def test_tp_three_on_four_heads():
    tiny = get_model("Qwen/Qwen2.5-0.5B-Instruct").model_copy(update={"num_attention_heads": 4, "num_kv_heads": 4})
    s = ServerInput(name="t", model=tiny, dtype="float16", tensor_parallel_size=3)
    r = check([node("n", T4, 4, (s, (0, 1, 2)))])
    f = [f for f in r.all_findings() if f.code == "tp-not-divisible"]
    assert f and "4 attention heads" in f[0].message and "2" in f[0].fix and not r.ok


def test_tp_kv_heads_and_node_size():
    # Qwen2.5-7B: 28 heads, 4 KV heads. TP 7 divides 28 but neither divides nor is a multiple of 4.
    r = check([node("n", A100, 8, (srv(CODER, tensor_parallel_size=7), tuple(range(7))))])
    assert "tp-not-divisible" in r.codes()
    r = one(CODER, gpu=A100, tensor_parallel_size=2, gpus_on_node=1)
    assert "tp-exceeds-node" in r.codes()
    r = check([node("n", A100, 2, (srv(CODER, tensor_parallel_size=2), (0,)))])
    assert "tp-gpu-count-mismatch" in r.codes()
    r = check([node("n", A100, 2, (srv(CODER), (5,)))])
    assert "gpu-index-out-of-range" in r.codes()
    r = check([node("n", A100, 2, (srv(CODER), ()))])
    assert "no-gpu-assigned" in r.codes()


def test_tp_shards_weights_and_kv_heads():
    s1, s2 = srv(CODER), srv(CODER, tensor_parallel_size=2)
    rope = rope_cache_gib(s1.model, "bfloat16")  # the RoPE table: whole on every rank
    assert 0 < rope < 0.01 and weights_gib(s2) - rope == pytest.approx((weights_gib(s1) - rope) / 2)
    assert kv_bytes_per_token(s2) == kv_bytes_per_token(s1) // 2
    s8 = srv(CODER, tensor_parallel_size=28)  # more ranks than KV heads: one head per rank
    assert kv_bytes_per_token(s8) == 2 * 28 * 1 * 128 * 2


def test_max_len_exceeds_model():
    r = one("Qwen/Qwen2.5-Math-7B-Instruct", gpu=A100, max_model_len=8192)
    (f,) = [f for f in r.all_findings() if f.code == "max-len-exceeds-model"]
    assert "4096" in f.message and f.fix == "cut max_model_len to 4096"


# ---------------------------------------------------------------- memory codes

def test_no_kv_memory_and_fix():
    r = one(CODER, dtype="float16", max_model_len=8192)  # 14.2 GiB of fp16 weights on a T4
    (f,) = [f for f in r.all_findings() if f.code == "no-kv-memory"]
    assert "14.19" in f.message and "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ" in f.fix


def test_kv_cache_too_small_suggests_util_and_len():
    r = one(CODER_AWQ, gpu=L4, dtype="float16", max_model_len=32768, gpu_memory_utilization=0.35)
    (f,) = [f for f in r.all_findings() if f.code == "kv-cache-too-small"]
    s = r.servers[0]
    assert s.kv_cache_tokens < 32768 and f"cut max_model_len to {s.kv_cache_tokens}" in f.fix
    need = float(f.fix.split("raise gpu_memory_utilization to ")[1].split()[0])
    assert one(CODER_AWQ, gpu=L4, dtype="float16", max_model_len=32768, gpu_memory_utilization=need).ok


def test_low_concurrency_warning_and_fp8_kv_halves():
    r = one(CODER_AWQ, gpu=L4, max_model_len=32768, gpu_memory_utilization=0.4)
    assert "low-concurrency" in r.codes() and r.ok
    # its fixes are for LOW_CONCURRENCY requests, not one: taking either clears the warning
    (warn,) = [f for f in r.all_findings() if f.code == "low-concurrency"]
    util = float(re.search(r"gpu_memory_utilization to ([\d.]+)", warn.fix).group(1))
    cut = int(re.search(r"cut max_model_len to (\d+)", warn.fix).group(1))
    assert "low-concurrency" not in one(CODER_AWQ, gpu=L4, max_model_len=32768, gpu_memory_utilization=util).codes()
    assert "low-concurrency" not in one(CODER_AWQ, gpu=L4, max_model_len=cut, gpu_memory_utilization=0.4).codes()
    a = one(CODER_AWQ, gpu=L4, max_model_len=32768, gpu_memory_utilization=0.4, kv_cache_dtype="fp8").servers[0]
    assert a.kv_bytes_per_token * 2 == r.servers[0].kv_bytes_per_token
    assert a.kv_cache_tokens >= 2 * r.servers[0].kv_cache_tokens - 16


def test_enforce_eager_frees_graph_memory():
    a, b = (one(CODER_AWQ, dtype="float16", enforce_eager=e).servers[0] for e in (False, True))
    assert b.cuda_graph_gib == 0 and b.kv_cache_gib == pytest.approx(a.kv_cache_gib + a.cuda_graph_gib)


def test_encoder_embedder_needs_no_kv():
    r = one("BAAI/bge-m3", kind="embed", gpu_memory_utilization=0.2)
    s = r.servers[0]
    assert r.ok and s.kv_bytes_per_token == 0 and s.kv_cache_tokens == 0 and s.max_concurrency is None
    assert "weights-exceed-budget" in one("BAAI/bge-m3", kind="embed", gpu_memory_utilization=0.05).codes()


def test_util_sum_over_one_and_headroom():
    a = srv(CODER_AWQ, "a", dtype="float16", gpu_memory_utilization=0.6)
    b = srv("BAAI/bge-m3", "b", kind="embed", gpu_memory_utilization=0.45)
    r = check([node("t4[0]", T4, 1, (a, (0,)), (b, (0,)))])
    (f,) = r.gpus[0].findings
    assert f.code == "util-sum-too-high" and "a 0.60 + b 0.45" in f.message and not r.ok
    # 0.97 of a T4 leaves 0.44 GiB, less than the two CUDA contexts (2 x 0.29 GiB) need: refused
    b2 = b.model_copy(update={"gpu_memory_utilization": 0.37})
    r = check([node("t4[0]", T4, 1, (a, (0,)), (b2, (0,)))])
    assert "util-sum-too-high" in r.codes() and not r.ok and "CUDA context" in r.gpus[0].findings[0].message
    b3 = b.model_copy(update={"gpu_memory_utilization": 0.355})  # 0.955: 0.07 GiB to spare
    r = check([node("t4[0]", T4, 1, (a, (0,)), (b3, (0,)))])
    assert r.codes() & {"util-sum-high", "util-sum-too-high"} == {"util-sum-high"} and r.ok
    assert r.gpus[0].util_sum == pytest.approx(0.955)


def test_mock_engine_uses_no_memory():
    m = srv(CODER, "m", engine="mock", gpu_memory_utilization=0.9)
    real = srv(CODER_AWQ, "real", dtype="float16", gpu_memory_utilization=0.9)
    r = check([node("n", T4, 1, (m, (0,)), (real, (0,)))])
    assert r.ok and r.server("m").weights_gib == 0 and r.gpus[0].util_sum == pytest.approx(0.9)
    assert "bf16-unsupported" not in r.codes()  # a mock does not run on the GPU


def test_custom_gpu_is_checked():
    g = custom_gpu(48, "8.6", name="A6000")
    r = one(CODER, gpu=g, max_model_len=32768, gpu_memory_utilization=0.9)
    assert r.ok and r.servers[0].budget_gib == pytest.approx(0.9 * 44.64)
    # what CUDA reports can be given instead of the marketing size
    g = custom_gpu(None, "8.6", name="A6000", visible_gib=47.53)
    assert one(CODER, gpu=g, gpu_memory_utilization=0.9).servers[0].budget_gib == pytest.approx(0.9 * 47.53)


def test_input_validation():
    with pytest.raises(ValueError):
        srv(CODER, dtype="int8")
    with pytest.raises(ValueError):
        srv(CODER, gpu_memory_utilization=1.5)
    assert srv(CODER, quantization="none").quantization is None


# ---------------------------------------------------------------- the seeds' plans

def _h100_path_a():
    """The original Path A plan (profiles/h100-t4x2.yaml): four vLLM servers on one H100, bf16, utils 0.20/0.21/0.19/0.19."""
    plan = [("coder", CODER, 8192, 0.20), ("orchestrator", "nvidia/Llama-3.1-Nemotron-8B-Orchestrator", 4096, 0.21),
            ("math", "Qwen/Qwen2.5-Math-7B-Instruct", 4096, 0.19), ("bio", "BioMistral/BioMistral-7B", 4096, 0.19)]
    servers = [(srv(m, n, dtype="bfloat16", max_model_len=L, gpu_memory_utilization=u, env=FA), (0,))
               for n, m, L, u in plan]
    return check([node("h100", H100, 1, *servers)])


def test_seed_path_a_h100_plan_cannot_start():
    r = _h100_path_a()
    assert r.gpus[0].util_sum == pytest.approx(0.79) and not r.gpus[0].findings  # the sum is not the problem
    for name in ("coder", "orchestrator", "math"):
        s = r.server(name)
        assert not s.ok and s.kv_cache_gib < 0 and s.kv_cache_tokens == 0, name
        assert "no-kv-memory" in {f.code for f in s.findings}
    bio = r.server("bio")  # 13.5 GiB of weights in a 15.0 GiB budget: at best a sliver of KV
    assert bio.kv_cache_gib < 1.0 and (bio.max_concurrency or 0) < 2
    assert "attention-backend-unsupported" not in r.codes()  # FLASH_ATTN is fine on an H100


def test_seed_path_a_h100_with_8192_batch_is_worse_than_2048():
    # our default profiling batch on H100-class cards is vLLM's 8192; with 2048 bio would start barely
    s = srv("BioMistral/BioMistral-7B", "bio", dtype="bfloat16", max_model_len=4096, gpu_memory_utilization=0.19,
            max_num_batched_tokens=2048, max_num_seqs=256)
    b = check_server_on_gpu(s, H100).servers[0]
    assert b.kv_cache_tokens >= 4096 and b.max_concurrency is not None and b.max_concurrency < 2


def test_seed_path_a2_t4_array():
    """The original Path A2 plan (profiles/t4x10.yaml): ten T4 nodes, FLASH_ATTN exported, --quantization awq on base repos."""
    coder = srv(CODER, "coder", dtype="float16", quantization="awq", max_model_len=8192, gpu_memory_utilization=0.85,
                env=FA)
    r = check_server_on_gpu(coder, T4)
    assert {"attention-backend-unsupported", "awq-checkpoint-mismatch", "no-kv-memory"} <= r.codes()
    fixed = coder.model_copy(update={"model": get_model(CODER_AWQ), "env": {}})
    assert check_server_on_gpu(fixed, T4).ok
    for model in ("BioMistral/BioMistral-7B", "Qwen/Qwen2.5-Math-7B-Instruct",
                  "nvidia/Llama-3.1-Nemotron-Safety-8B-V3", "nvidia/Llama-3.1-Nemotron-8B-Orchestrator"):
        assert "awq-checkpoint-mismatch" in one(model, dtype="float16", quantization="awq").codes(), model
    phi = one("microsoft/Phi-3.5-mini-instruct", dtype="float16", max_model_len=4096, gpu_memory_utilization=0.55)
    assert {"kv-cache-too-small", "no-kv-memory"} & phi.codes() and not phi.ok  # 7.1 GiB of weights in 8.0 GiB


def test_seed_path_a_t4_nodes():
    """The original Path A plan's T4-0 (Llama-3B at 0.45) and T4-1 (Safety-8B 'awq' at 0.55 + Phi-3.5 at 0.25)."""
    r = one("meta-llama/Llama-3.2-3B-Instruct", dtype="float16", max_model_len=4096, gpu_memory_utilization=0.45)
    assert "no-kv-memory" in r.codes()
    safety = srv("nvidia/Llama-3.1-Nemotron-Safety-8B-V3", "safety", dtype="float16", quantization="awq",
                 max_model_len=2048, gpu_memory_utilization=0.55)
    phi = srv("microsoft/Phi-3.5-mini-instruct", "analysis", dtype="float16", max_model_len=4096,
              gpu_memory_utilization=0.25)
    r = check([node("t4-1", T4, 1, (safety, (0,)), (phi, (0,)))])
    assert not r.server("safety").ok and not r.server("analysis").ok
    assert "no-kv-memory" in {f.code for f in r.server("analysis").findings}


def test_seed_003_p40_tensor_parallel():
    """A plan of 33B/34B models at TP 3 on P40s (and 70B at TP 6)."""
    for model, tp in (("deepseek-ai/deepseek-coder-33b-instruct", 3), ("codellama/CodeLlama-34b-Instruct-hf", 3),
                      ("meta-llama/Llama-3.1-70B-Instruct", 6)):
        s = srv(model, dtype="float16", tensor_parallel_size=tp)
        r = check([node("p40", P40, 6, (s, tuple(range(tp))))])
        assert {"gpu-unsupported", "tp-not-divisible"} <= r.codes(), model
