"""Fit-check v2: version-aware memory rules, inputs as users have them, dtype resolution,
checkpoint sizes, vision-language and sliding-window models (issue 12)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
from calibration import load
from fake_hub import FakeHub
from typer.testing import CliRunner

from biofleet.catalog.checkpoint import checkpoint_from_dir
from biofleet.catalog.gpus import GpuSpec, custom_gpu, get_gpu
from biofleet.catalog.models import get_model, model_from_config
from biofleet.catalog.vllm_rules import (
    hybrid_kv_group_slots,
    mxfp4_expert_bytes,
    mxfp4_moe_backend,
    parse_vllm_version,
    rules_for,
)
from biofleet.cli.main import app
from biofleet.errors import BiofleetError, ProfileError
from biofleet.fitcheck import FitReport, NodeInput, ServerInput, check, check_server_on_gpu, rope_cache_gib
from biofleet.profile import load_profile
from biofleet.render import render_fleet

T4, L4, A100, H100, RTX3090 = (get_gpu(n) for n in ("T4", "L4", "A100-80GB", "H100", "RTX-3090"))
LLAMA8 = "meta-llama/Llama-3.1-8B-Instruct"


def srv(model: str, name: str = "s", **kw: Any) -> ServerInput:
    return ServerInput(name=name, model=get_model(model), **kw)


def fit(model: str, gpu: GpuSpec = H100, **kw: Any) -> FitReport:
    return check_server_on_gpu(srv(model, **kw), gpu)


def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, Any]:
    r = CliRunner().invoke(app, ["fit-check", *args], env=env)
    assert r.exit_code in (0, 1), r.output
    return r.exit_code, (json.loads(r.stdout) if "--json" in args else r.output)


# ---------------------------------------------------------------- version rules

def test_bitsandbytes_absmax_is_loaded_as_fp32_from_0_9_2(tmp_path: Path):
    """vLLM 0.9.2's loader (`dequantize_dq` in bitsandbytes_loader.py; not in 0.9.1's) expands a double-quantised
    absmax (8 bits a block of 64 weights) back to fp32 as it loads: 4.5 bits a 4-bit weight instead of 4.13. Case
    19109 (DeepSeek-R1-0528-Qwen3-8B in bitsandbytes on 0.9.2) logged 5.85 GiB: 5.66 counted before, 5.96 now."""
    qwen8 = get_model("Qwen/Qwen3-8B")
    linear = (qwen8.params_b - qwen8.embedding_params_b) * 1e9
    old, new = (fit("Qwen/Qwen3-8B", quantization="bitsandbytes", vllm_version=v).servers[0].weights_gib
                for v in ("0.9.1", "0.9.2"))
    assert new - old == pytest.approx(linear * (4.5 - 4.13) / 8 / 2**30, abs=0.01)
    assert new == pytest.approx(5.96, abs=0.01)
    # a checkpoint quantised without double quantisation stored fp32 absmax all along: 4.5 bits in every release
    cfg = json.loads((Path(__file__).parent / "data" / "model_configs" / "QwQ-32B-unsloth-bnb-4bit.json").read_text())
    for double, want in ((True, 4.13), (False, 4.5)):
        cfg["quantization_config"]["bnb_4bit_use_double_quant"] = double
        assert model_from_config(cfg, "q").quant_bits == want


def test_quantising_at_load_time_takes_the_vision_tower_too():
    """`--quantization bitsandbytes` / `fp8` on a 16-bit checkpoint quantises every linear layer vLLM built with the
    quant config, and the VL families (Qwen2/2.5-VL, Gemma-3, LLaVA, InternVL, ... in 0.9.2's models/) build their
    vision tower with it; a pre-quantised checkpoint keeps the tower its quantiser skipped. Case 6002
    (Qwen2.5-VL-3B, bitsandbytes FP4 at load time, 0.9.2) logged 2.60 GiB: 3.28 counted with a 16-bit tower, 2.41 now."""
    vl = get_model("Qwen/Qwen2.5-VL-3B-Instruct")
    assert vl.vision is not None and vl.vision.params_b > 0.5
    emb, rest = vl.embedding_params_b * 1e9, (vl.params_b - vl.embedding_params_b) * 1e9
    rope = rope_cache_gib(vl, "bfloat16")
    bnb = fit("Qwen/Qwen2.5-VL-3B-Instruct", quantization="bitsandbytes", vllm_version="0.9.2").servers[0]
    assert bnb.weights_gib == pytest.approx((rest * 4.5 / 8 + emb * 2) / 2**30 + rope, abs=0.006)
    fp8 = fit("Qwen/Qwen2.5-VL-3B-Instruct", quantization="fp8", vllm_version="0.9.2").servers[0]
    assert fp8.weights_gib == pytest.approx((rest + emb * 2) / 2**30 + rope, abs=0.006)


def test_rope_tables_are_counted_with_the_weights():
    """vLLM registers each RoPE cos/sin table as a buffer while the model loads ("Model loading took" counts it), in
    the model's dtype and whole on every rank: rows x rotated width. The rows follow get_rope (0.8.5 and 0.23.0
    sources): max_position for default / llama3, x factor for linear, original x factor for yarn, original +
    max_position for longrope; Gemma-3's sliding layers build a second table."""
    gib = 2**30
    # Gemma-3-12B: 131,072 x 8 (global, linear x8) + 131,072 (local) rows of 256: case 7005 logged 4.81 GiB of
    # weights for the QAT AWQ copy, 4.23 counted without the tables, 4.79 with them
    assert rope_cache_gib(get_model("google/gemma-3-12b-it"), "bfloat16") == pytest.approx(9 * 131072 * 256 * 2 / gib)
    # Llama-4-Scout's 10,485,760 positions (llama3 rope): 2.5 GiB, case 1009 -4.8 % -> -0.1 %
    assert rope_cache_gib(get_model("meta-llama/Llama-4-Scout-17B-16E-Instruct"), "bfloat16") == pytest.approx(2.5)
    assert rope_cache_gib(get_model("meta-llama/Llama-3.1-8B-Instruct"), "bfloat16") == pytest.approx(1 / 32)
    # a table of a GiB or more is named (info), so a config with an inflated max_position_embeddings is explained
    (note,) = {f.message for f in fit("meta-llama/Llama-4-Scout-17B-16E-Instruct", tensor_parallel_size=4,
                                          max_model_len=8192).all_findings() if f.code == "rope-table"}
    assert "2.50 GiB" in note and "10,485,760 positions" in note
    assert "rope-table" not in fit("meta-llama/Llama-3.1-8B-Instruct", max_model_len=8192).codes()
    assert rope_cache_gib(get_model("facebook/opt-125m"), "float16") == 0  # learned positions
    base = {"model_type": "qwen2", "hidden_size": 4096, "num_hidden_layers": 2, "num_attention_heads": 32,
            "max_position_embeddings": 131072}
    yarn = model_from_config({**base, "rope_scaling": {"rope_type": "yarn", "factor": 4.0,
                                                       "original_max_position_embeddings": 32768}}, "y")
    longrope = model_from_config({**base, "model_type": "phi3", "original_max_position_embeddings": 4096,
                                  "rope_scaling": {"type": "longrope", "short_factor": [1.0], "long_factor": [2.0],
                                                   "original_max_position_embeddings": 4096}}, "l")
    partial = model_from_config({**base, "partial_rotary_factor": 0.5}, "p")
    assert (yarn.rope_cache_positions, longrope.rope_cache_positions) == (131072, 4096 + 131072)
    assert partial.rotary_dim == 64 and model_from_config(base, "d").rotary_dim is None
    # the weights carry it: the same model at TP 2 holds the whole table on each rank
    one, two = (fit("google/gemma-3-12b-it", tensor_parallel_size=tp).servers[0].weights_gib for tp in (1, 2))
    assert one - 2 * (two - 0.5625) == pytest.approx(0.5625, abs=0.01)


def test_the_vision_towers_mlp_is_split_over_tensor_parallel_ranks():
    """vLLM builds SigLIP's and Qwen-VL's vision MLP from column- / row-parallel layers, so each rank holds inter / TP
    of the encoder's widest activation. Case 16117 (Gemma-3-27B at TP 4, V1 0.8.0, 64 dummy images of 4,096
    patches): 3.73 GiB of activations logged; 7.58 counted with the whole MLP on every rank, 4.43 with it split
    (KV -28.5 % -> -11 %). mllama's V0 encoder stays whole (17008 peaked above even that)."""
    from biofleet.fitcheck import VISION_BYTES_PER_INTER

    kw = {"vllm_version": "0.8.0", "max_model_len": 65536, "max_num_batched_tokens": 16384, "max_num_seqs": 64}
    a100 = get_gpu("A100-40GB")
    tp1, tp4 = (check_server_on_gpu(srv("google/gemma-3-27b-it", tensor_parallel_size=tp, **kw), a100, tp)
                .servers[0] for tp in (1, 4))
    assert tp4.inputs["vision_profile"]["items"] == 64 and tp4.inputs["vision_profile"]["patches_per_item"] == 4096
    saved = 64 * 4096 * VISION_BYTES_PER_INTER * 4304 * (1 - 1 / 4) * 2 / 2 / 2**30
    assert tp1.activation_gib - tp4.activation_gib == pytest.approx(saved, abs=0.02)
    mllama = "meta-llama/Llama-3.2-11B-Vision-Instruct"
    m1, m2 = (check_server_on_gpu(srv(mllama, tensor_parallel_size=tp, vllm_version="0.6.3", max_model_len=8192),
                                  get_gpu("H100"), tp).servers[0] for tp in (1, 2))
    assert m1.activation_gib == pytest.approx(m2.activation_gib, abs=0.3)


def test_text_only_mode_leaves_the_vision_tower_out_from_0_15():
    from biofleet.fitcheck import language_model_only_override as lmo

    assert lmo(["--language-model-only"]) and lmo(["--limit-mm-per-prompt", '{"image": 0, "video": 0}'])
    assert lmo(["--limit-mm-per-prompt.image", "0", "--limit-mm-per-prompt.video=0"])
    assert not lmo(["--limit-mm-per-prompt", '{"image": 1, "video": 0}']) and not lmo([])
    assert not lmo(["--limit-mm-per-prompt", "{'image': 0}"])  # not JSON: vLLM refuses it, so no text-only
    assert not lmo(["--limit-mm-per-prompt.image", "0", "--limit-mm-per-prompt.video", "2"])
    assert not lmo(["--limit-mm-per-prompt", '{"image": 0}', "--limit-mm-per-prompt.video", "1"])
    from biofleet.fitcheck import video_off_override as vo

    assert vo(["--limit-mm-per-prompt", '{"image": 1, "video": 0}']) and vo(["--limit-mm-per-prompt.video=0"])
    assert not lmo(["--limit-mm-per-prompt", '{"video": 0}'])  # images keep vLLM's default limit
    assert not vo(["--limit-mm-per-prompt", '{"image": 0}']) and not vo(["--limit-mm-per-prompt", "{video: 0}"])
    vl = "Qwen/Qwen2.5-VL-7B-Instruct"
    full = fit(vl, L4, vllm_version="0.15.0", max_model_len=8192).servers[0]
    text = fit(vl, L4, vllm_version="0.15.0", max_model_len=8192, language_model_only=True).servers[0]
    tower = get_model(vl).vision.params_b
    assert full.weights_gib - text.weights_gib == pytest.approx(tower * 2e9 / 2**30, rel=0.02)
    assert text.kv_cache_gib > full.kv_cache_gib and "language-model-only" in {f.code for f in text.findings}
    assert "vision-not-modelled" not in {f.code for f in text.findings}
    early = fit(vl, L4, vllm_version="0.14.0", max_model_len=8192, language_model_only=True).servers[0]
    assert early.weights_gib == fit(vl, L4, vllm_version="0.14.0", max_model_len=8192).servers[0].weights_gib
    assert "language-model-only-unsure" in {f.code for f in early.findings}
    _, out = cli("--model", vl, "--gpu", "L4", "--vllm-version", "0.15", "--max-model-len", "8192",
                 "--limit-mm-per-prompt", '{"image": 0, "video": 0}', "--json")
    assert "language-model-only" in {f["code"] for f in out["servers"][0]["findings"]}
    for bad in ("{image: 0}", "[0]", '{"image": ' + "0" * 5000 + "}"):  # not JSON, not an object, too long
        r = CliRunner().invoke(app, ["fit-check", "--model", vl, "--gpu", "L4", "--limit-mm-per-prompt", bad])
        assert r.exit_code != 0 and "--limit-mm-per-prompt" in str(r.exception) + r.output, r.output


def test_max_model_len_auto_fits_the_context_as_vllm_does(tmp_path: Path):
    """--max-model-len auto (vLLM >= 0.14, PR #29431): the model's context when one request of it fits, else the
    longest whole-block length that does; refused before 0.14."""
    r = fit(LLAMA8, L4, max_model_len_auto=True).servers[0]
    auto = next(f for f in r.findings if f.code == "max-model-len-auto")
    assert r.ok and r.max_model_len < 131072 and r.max_model_len % 16 == 0
    assert r.max_model_len <= r.kv_cache_tokens < r.max_model_len + 16 and "131,072" in auto.message
    assert "low-concurrency" not in {f.code for f in r.findings}  # one request at the fitted length, by design
    whole = fit("Qwen/Qwen2.5-7B-Instruct", L4, max_model_len_auto=True).servers[0]
    assert whole.ok and whole.max_model_len == 32768
    old = fit(LLAMA8, L4, max_model_len_auto=True, vllm_version="0.13.0").servers[0]
    assert "max-model-len-auto-unsupported" in {f.code for f in old.findings} and not old.ok
    code, out = cli("--model", LLAMA8, "--gpu", "L4", "--max-model-len", "-1", "--json")
    assert code == 0 and out["servers"][0]["max_model_len"] == r.max_model_len
    bad = CliRunner().invoke(app, ["fit-check", "--model", LLAMA8, "--gpu", "L4", "--max-model-len", "lots"])
    assert bad.exit_code == 2 and "--max-model-len" in bad.output
    # in a profile: checked the same way, and passed to vLLM as it is (the mock engine keeps its own length)
    p = tmp_path / "p.yaml"
    p.write_text(f"name: a\nservers:\n  s: {{model: {LLAMA8}, max_model_len: auto}}\n"
                 "jobs:\n  - {name: j, gpu: L4, nodes: [s]}\n")
    code, rep = cli("--profile", str(p), "--json")
    fitted = rep["servers"][0]["max_model_len"]  # a profile's utilisation default is 0.9, the one-server form's 0.92
    assert code == 0 and 16 <= fitted < r.max_model_len and fitted % 16 == 0
    scripts = render_fleet(load_profile(str(p)), "/tmp/fleet")
    assert "--max-model-len auto" in str(scripts)


def test_a_big_card_without_a_name_says_which_scheduler_defaults_it_assumed():
    """vLLM's defaults for a >= 70 GiB card depend on whether its name says A100 (held-out 21021: an unnamed
    79.25 GiB card; as an A100, 256 sequences, it starts; with the other defaults it is refused)."""
    args = ("--model", "Qwen/Qwen3.6-27B", "--gpu-visible-gib", "79.25", "--compute-capability", "8.0",
            "--tensor-parallel-size", "2", "--max-model-len", "65536", "--json")
    _, unnamed = cli(*args)
    hint = next(f for f in unnamed["servers"][0]["findings"] if f["code"] == "scheduler-defaults-by-name")
    assert "--gpu-name" in hint["fix"] and unnamed["servers"][0]["inputs"]["max_num_seqs"] == 1024
    code, named = cli(*args, "--gpu-name", "NVIDIA A100-SXM4-80GB")
    assert code == 0 and named["servers"][0]["inputs"]["max_num_seqs"] == 256
    assert "scheduler-defaults-by-name" not in {f["code"] for f in named["servers"][0]["findings"]}


def test_marlin_runs_on_turing_from_0_14():
    """Marlin (awq_marlin / gptq_marlin / compressed-tensors WNA16) on CC 7.5 from vLLM 0.14 (PRs #29901, #31000):
    before it, the fit-check refuses it on a T4 with the plain kernel as the fix; a V100 never runs it."""
    def codes(gpu: GpuSpec, version: str) -> list[str]:
        r = fit("Qwen/Qwen2.5-7B-Instruct-AWQ", gpu, quantization="awq_marlin", dtype="float16",
                vllm_version=version, max_model_len=2048)
        return [f.code for s in r.servers for f in s.findings if f.severity == "error"]

    old = fit("Qwen/Qwen2.5-7B-Instruct-AWQ", T4, quantization="awq_marlin", dtype="float16", vllm_version="0.13.0",
              max_model_len=2048)
    refusal = next(f for s in old.servers for f in s.findings if f.code == "quant-unsupported-on-gpu")
    assert "compute capability >= 8.0 in vLLM 0.13.0" in refusal.message and "vLLM >= 0.14" in refusal.fix
    assert codes(T4, "0.14.0") == [] and codes(T4, "0.17.1") == []
    assert "quant-unsupported-on-gpu" in codes(get_gpu("V100-32GB"), "0.17.1")
    assert rules_for("0.13.0").marlin_min_cc == (8, 0) and rules_for("0.14.0").marlin_min_cc == (7, 5)


def test_version_parsing_and_eras():
    assert parse_vllm_version("v0.6.4.post1") == (0, 6, 4)
    assert parse_vllm_version("0.11.0+cu118") == (0, 11, 0)
    with pytest.raises(ValueError):
        parse_vllm_version("latest")
    assert rules_for("0.6.3").engine == "V0" and rules_for("0.19").engine == "V1"
    assert rules_for("0.9.2", (7, 5)).engine == "V0"  # V1 refused CC < 8.0 until 0.10.2
    assert rules_for("0.10.2", (7, 5)).engine == "V1"
    # both in the 0.20.0 source archive (envs.py, config/cache.py), though its log line says "default since v0.21.0"
    assert not rules_for("0.19.1").graphs_in_budget and rules_for("0.20.0").graphs_in_budget
    assert rules_for("0.19").default_utilization == 0.9 and rules_for("0.20").default_utilization == 0.92
    # kv_cache_utils.get_kv_cache_config: the window-aware check from 0.8.3, the hybrid KV manager from 0.9.1
    assert [rules_for(v).sliding_window_check for v in ("0.8.2", "0.8.3")] == [False, True]
    assert [rules_for(v).hybrid_kv for v in ("0.9.0", "0.9.1")] == [False, True]
    # profile_run's padded encoder outputs: to the budget in 0.11.x, to the item in 0.12.0, not at all before or after
    assert [rules_for(v).mm_profile_pad for v in ("0.10.2", "0.11.2", "0.12.0", "0.13.0")] == \
        ["none", "budget", "item", "none"]
    assert [rules_for(v).qwen3_vl_video_profile for v in ("0.10.2", "0.11.0", "0.12.0", "0.13.0")] == \
        [False, True, True, False]
    with pytest.raises(ValueError):
        srv(LLAMA8, vllm_version="next")


def test_v0_profiles_the_whole_sequence_v1_a_chunk():
    # V0 without chunked prefill runs max_model_len tokens through the profiling pass; V1 a chunk
    short, long = (fit(LLAMA8, gpu=A100, vllm_version="0.6.3", max_model_len=n).servers[0] for n in (8192, 30000))
    assert long.activation_gib > 2 * short.activation_gib and long.max_num_batched_tokens == 30000
    v1_short, v1_long = (fit(LLAMA8, gpu=A100, vllm_version="0.19", max_model_len=n).servers[0]
                         for n in (8192, 30000))
    assert v1_short.activation_gib == v1_long.activation_gib and v1_long.max_num_batched_tokens == 2048
    # beyond 32K the V0 OpenAI server chunks by itself (512 tokens) from 0.5.4 on
    assert fit(LLAMA8, gpu=A100, vllm_version="0.6.3", max_model_len=65536).servers[0].max_num_batched_tokens == 512
    assert fit(LLAMA8, gpu=A100, vllm_version="0.5.3", max_model_len=65536).servers[0].max_num_batched_tokens == 65536


def test_an_old_build_fails_where_a_new_one_starts():
    # Llama-3.1-8B, 29000 tokens, 0.9 of a 3090: V0 profiles 29000 tokens at once and keeps too little KV
    old = fit(LLAMA8, gpu=RTX3090, vllm_version="0.6.3", max_model_len=29000, gpu_memory_utilization=0.9)
    new = fit(LLAMA8, gpu=RTX3090, vllm_version="0.19", max_model_len=29000, gpu_memory_utilization=0.9)
    assert not old.ok and "kv-cache-too-small" in old.codes()
    assert new.ok and new.servers[0].kv_cache_tokens > old.servers[0].kv_cache_tokens


def test_cuda_graphs_move_into_the_budget_at_0_20():
    a, b = (fit(LLAMA8, vllm_version=v, max_model_len=8192).servers[0] for v in ("0.19.1", "0.20.0"))
    assert not a.graphs_in_budget and b.graphs_in_budget and a.cuda_graph_gib == b.cuda_graph_gib > 0
    assert a.inputs["cuda_graphs"].startswith("outside") and b.inputs["cuda_graphs"] == "inside the budget"
    budget_a = a.kv_cache_gib + a.overhead_gib + a.weights_gib
    assert budget_a == pytest.approx(a.budget_gib) and b.overhead_gib > a.overhead_gib  # the default util differs


# ---------------------------------------------------------------- the GPU as a whole

def test_free_memory_below_the_budget_is_refused():
    s = srv(LLAMA8, max_model_len=8192, gpu_memory_utilization=0.9, gpu_free_gib=40.0)
    r = check_server_on_gpu(s, H100)
    (f,) = [f for f in r.all_findings() if f.code == "gpu-free-memory-too-low"]
    assert not r.ok and "refuses to start" in f.message and "lower gpu_memory_utilization to" in f.fix
    assert check_server_on_gpu(s.model_copy(update={"gpu_free_gib": 79.0}), H100).ok
    # more free memory than the card has is a mistake in the input, not room to spare
    bad = check_server_on_gpu(s.model_copy(update={"gpu_free_gib": 500.0}), H100)
    (f,) = [f for f in bad.all_findings() if f.code == "gpu-free-above-visible"]
    assert not bad.ok and "500.00" in f.message and "--gpu-visible-gib" in f.fix
    # a V0 build does not check, but runs out of memory when it allocates the KV cache
    old = check_server_on_gpu(s.model_copy(update={"vllm_version": "0.6.3"}), H100)
    assert "gpu-free-memory-too-low" in old.codes() and "runs out of memory" in old.all_findings()[0].message


def test_a_server_can_ask_for_v0_on_the_builds_that_kept_it():
    """VLLM_USE_V1=0 (profile env:, or --env) runs V0 on 0.8-0.10; 0.11 removed it."""
    assert rules_for("0.8.3", v0_requested=True).engine == "V0"
    assert rules_for("0.10.2", v0_requested=True).engine == "V0"
    assert rules_for("0.11.0", v0_requested=True).engine == "V1" and rules_for("0.8.3").engine == "V1"
    r = fit(LLAMA8, gpu=L4, vllm_version="0.8.3", max_model_len=8192, env={"VLLM_USE_V1": "0"})
    (info,) = [f for f in r.all_findings() if f.code == "v1-falls-back-to-v0"]
    assert "VLLM_USE_V1=0" in info.message
    # V0 profiles the whole 8192-token sequence, V1 a 2048-token chunk
    v1 = fit(LLAMA8, gpu=L4, vllm_version="0.8.3", max_model_len=8192)
    assert (r.servers[0].max_num_batched_tokens, v1.servers[0].max_num_batched_tokens) == (8192, 2048)


def test_cpu_offload_keeps_decoder_weights_in_host_memory():
    """--cpu-offload-gb: vLLM offloads the decoder layers' parameters until that many GiB per GPU are off the
    card; embeddings and lm_head stay (case 16002: Llama-3-70B with 70 offloaded, 61.29 GiB logged)."""
    def run(gb: float, tp: int = 1):
        return fit("meta-llama/Meta-Llama-3-70B-Instruct", gpu=get_gpu("GH200"), vllm_version="0.5.2",
                   gpu_memory_utilization=0.95, cpu_offload_gb=gb, tensor_parallel_size=tp, max_model_len=8192)
    full, off = run(0), run(70)
    assert not full.ok and "no-kv-memory" in full.codes()
    assert off.ok and off.servers[0].weights_gib == pytest.approx(61.29, rel=0.01)
    assert off.servers[0].weights_gib == pytest.approx(full.servers[0].weights_gib - 70)
    (info,) = [f for f in off.all_findings() if f.code == "cpu-offload"]
    assert "70.00 of 131.42 GiB" in info.message and not info.fix  # 131.41 of parameters + the RoPE table
    # more than the layers hold: the embeddings and lm_head (2 x 128,256 x 8,192 x 2 B) stay on the GPU
    most = run(500)
    assert most.servers[0].weights_gib == pytest.approx(2 * 128256 * 8192 * 2 / 2**30, rel=0.01)
    assert "all it can offload" in next(f for f in most.all_findings() if f.code == "cpu-offload").fix
    # a profile sets it through extra_args, which render passes to vLLM as they are
    from biofleet.fitcheck import cpu_offload_override
    assert cpu_offload_override(["--cpu-offload-gb", "12"]) == 12 and cpu_offload_override(["--cpu-offload-gb=4.5"])
    assert cpu_offload_override(["--cpu-offload-gb", "-1"]) == 0 and cpu_offload_override(["--cpu-offload-gb"]) == 0
    _, d = cli("--model", "meta-llama/Meta-Llama-3-70B-Instruct", "--gpu", "GH200", "--cpu-offload-gb", "70",
               "--gpu-memory-utilization", "0.95", "--max-model-len", "8192", "--json")
    assert d["ok"] and d["servers"][0]["inputs"]["cpu_offload_gb"] == 70


def _profile_without_and_with(tmp_path: Path, body: str, extra: str) -> tuple[tuple[int, Any], tuple[int, Any]]:
    """fit-check --profile --json of a one-server profile (``body`` with an ``{extra}`` slot in its server) without,
    then with ``extra``."""
    p = tmp_path / "p.yaml"
    out = []
    for text in ("", extra):
        p.write_text(body.format(extra=text))
        out.append(cli("--profile", str(p), "--json"))
    return out[0], out[1]


def test_cpu_offload_in_a_profile_is_read_from_extra_args(tmp_path: Path):
    body = ("name: o\nservers:\n  s: {{model: meta-llama/Meta-Llama-3-70B-Instruct, max_model_len: 8192, "
            "gpu_memory_utilization: 0.95{extra}}}\njobs:\n  - {{name: j, gpu: GH200, nodes: [s]}}\n")
    (code, rep), (code2, rep2) = _profile_without_and_with(tmp_path, body, ", extra_args: ['--cpu-offload-gb', '70']")
    assert code == 1 and rep["servers"][0]["weights_gib"] > 130
    assert code2 == 0 and rep2["servers"][0]["weights_gib"] == pytest.approx(61.4, abs=0.1)


def test_text_only_mode_in_a_profile_is_read_from_extra_args(tmp_path: Path):
    body = ("name: t\nvllm_version: '0.15'\nservers:\n  s: {{model: Qwen/Qwen2.5-VL-7B-Instruct, max_model_len: 8192"
            "{extra}}}\njobs:\n  - {{name: j, gpu: L4, nodes: [s]}}\n")
    (_, full), (_, text) = _profile_without_and_with(
        tmp_path, body, ", extra_args: ['--limit-mm-per-prompt.image', '0', '--limit-mm-per-prompt.video', '0']")
    assert text["servers"][0]["weights_gib"] < full["servers"][0]["weights_gib"] - 1
    assert "language-model-only" in {f["code"] for f in text["servers"][0]["findings"]}
    # videos off in a Qwen3-VL profile on 0.11: the image is profiled instead of the padded video
    body = ("name: t\nvllm_version: '0.11.0'\nservers:\n  s: {{model: Qwen/Qwen3-VL-8B-Instruct, max_model_len: 32768"
            "{extra}}}\njobs:\n  - {{name: j, gpu: H100-80GB, nodes: [s]}}\n")
    (_, video), (_, image) = _profile_without_and_with(
        tmp_path, body, ", extra_args: ['--limit-mm-per-prompt', '{\"video\":0}']")
    assert video["servers"][0]["inputs"]["vision_profile"]["modality"] == "video"
    assert image["servers"][0]["inputs"]["vision_profile"]["modality"] == "image"
    assert image["servers"][0]["kv_cache_gib"] > video["servers"][0]["kv_cache_gib"] + 3


def test_graph_pool_shrinks_with_max_num_seqs():
    """vLLM captures batch sizes up to max_num_seqs only; logged pools: 0.04-0.14 GiB at one sequence (28-36
    layers), 0.10-0.11 at 16 (32-48 layers), 0.22-0.29 at 64 (48-62 layers)."""
    from biofleet.fitcheck import cuda_graph_gib

    s = srv("Qwen/Qwen3-8B")  # 36 layers
    full = cuda_graph_gib(s, 256)
    assert cuda_graph_gib(s, 128) == full and cuda_graph_gib(s, 1024) == pytest.approx(full * 1.7)
    assert 0.04 <= cuda_graph_gib(s, 1) <= 0.14 and cuda_graph_gib(s, 16) < cuda_graph_gib(s, 64) < full
    # a single-sequence server at 0.97 of a 4090 pair starts (case 17222: Llama-3.1-70B AWQ, 0.19)
    r = fit("hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4", gpu=get_gpu("RTX-4090"), vllm_version="0.19",
            max_model_len=36000, gpu_memory_utilization=0.97, tensor_parallel_size=2, kv_cache_dtype="fp8",
            dtype="float16", quantization="awq_marlin", max_num_seqs=1)
    assert r.ok, r.all_findings()



def test_model_runner_v2_profiles_without_graphs_and_top_k_on_0_22_to_0_24():
    """vLLM's model runner V2 is the default for these architectures from 0.22 (``VllmConfig.use_v2_model_runner`` in
    the PyPI source archives). Its profile estimates no CUDA graphs inside the budget before 0.29 and samples without
    top-k / top-p / logprobs. Cases 20005 / 19004: Qwen3-8B on an RTX 4090, 0.24.0 at the default 0.92 and 32,768
    tokens, 43,888 tokens logged (V1's accounting gave 37,328)."""
    from biofleet.catalog.vllm_rules import model_runner_v2 as mrv2

    assert mrv2("0.22", "Qwen3ForCausalLM", False, False, False)
    assert not mrv2("0.22", "LlamaForCausalLM", False, False, False) and mrv2("0.23", "LlamaForCausalLM", False, False, False)
    assert not mrv2("0.23", "LlamaForCausalLM", False, True, False)  # 0.22 / 0.23: unquantised only
    assert mrv2("0.24", "LlamaForCausalLM", False, True, False) and not mrv2("0.24", "Qwen2ForCausalLM", False, False, False)
    assert mrv2("0.25", "Qwen2ForCausalLM", False, False, False) and not mrv2("0.25", "Qwen3MoeForCausalLM", True, False, False)
    assert not mrv2("0.24", "Qwen3ForCausalLM", False, False, True)  # hybrids stay on V1
    assert not mrv2("0.21", "Qwen3ForCausalLM", False, False, False)
    assert mrv2("0.21", "Qwen3ForCausalLM", False, False, False, env="1")
    assert not mrv2("0.24", "Qwen3ForCausalLM", False, False, False, env="0")
    kw: dict[str, Any] = {"gpu": get_gpu("RTX-4090"), "vllm_version": "0.24.0", "max_model_len": 32768}
    v2 = fit("Qwen/Qwen3-8B", **kw).servers[0]
    assert v2.inputs["model_runner"] == "V2" and not v2.graphs_in_budget
    assert v2.kv_cache_tokens == pytest.approx(43_888, rel=0.02)
    v1 = fit("Qwen/Qwen3-8B", env={"VLLM_USE_V2_MODEL_RUNNER": "0"}, **kw).servers[0]
    assert v1.inputs["model_runner"] == "V1" and v1.graphs_in_budget and v1.kv_cache_tokens < v2.kv_cache_tokens
    # the warm-up after the graphs runs every sampling feature: it is V1's sampler pass, not the profile's
    assert v2.sampler_warmup_gib == pytest.approx(v1.sampler_warmup_gib) and v2.sampler_warmup_gib > v2.activation_gib / 2


def test_environment_switches_are_read_as_vllm_reads_them():
    # envs.py parses VLLM_USE_V1 (0.7 - 0.11.0) and VLLM_USE_V2_MODEL_RUNNER (0.12 on) with int(): any non-zero
    # integer is on, a word stops vLLM at start-up; in a release that does not read the variable it is ignored
    kw: dict[str, Any] = {"gpu": get_gpu("RTX-4090"), "vllm_version": "0.24.0", "max_model_len": 32768}
    assert fit("Qwen/Qwen3-8B", env={"VLLM_USE_V2_MODEL_RUNNER": "00"}, **kw).servers[0].inputs["model_runner"] == "V1"
    on = fit("Qwen/Qwen3-8B", env={"VLLM_USE_V2_MODEL_RUNNER": "2"}, **{**kw, "vllm_version": "0.21.0"})
    assert on.servers[0].inputs["model_runner"] == "V2" and on.ok
    bad = fit("Qwen/Qwen3-8B", env={"VLLM_USE_V2_MODEL_RUNNER": "yes"}, **kw)
    assert not bad.ok and "env-flag-invalid" in bad.codes()
    assert "VLLM_USE_V2_MODEL_RUNNER='yes'" in next(f.message for f in bad.all_findings() if f.code == "env-flag-invalid")
    v0 = {"gpu": get_gpu("L4"), "max_model_len": 4096}
    assert "env-flag-invalid" in fit("Qwen/Qwen2.5-7B-Instruct", env={"VLLM_USE_V1": "maybe"}, vllm_version="0.8.5",
                                     **v0).codes()
    assert fit("Qwen/Qwen2.5-7B-Instruct", env={"VLLM_USE_V1": "0"}, vllm_version="0.8.5",
               **v0).servers[0].inputs["engine"] == "V0 (VLLM_USE_V1=0)"
    for version in ("0.6.3", "0.11.2"):  # not read before V1 existed, nor once it was removed
        assert "env-flag-invalid" not in fit("Qwen/Qwen2.5-7B-Instruct", env={"VLLM_USE_V1": "maybe"},
                                             vllm_version=version, **v0).codes()

def test_hybrid_state_blocks_cap_max_num_seqs():
    """V1 >= 0.20 keeps one recurrent-state block per decode sequence and refuses CUDA-graph capture for more
    sequences than the KV cache has blocks ("max_num_seqs (256) exceeds available Mamba cache blocks (95)", case
    18202: Qwen3.6-35B-A3B FP8, 0.25.2, at 1.44x concurrency for 131,072 tokens)."""
    from biofleet.fitcheck import resolve, state_blocks, state_page_bytes

    def run(**kw: Any):
        base = dict(gpu=H100, vllm_version="0.25", max_model_len=32768, kv_cache_dtype="fp8",
                    gpu_memory_utilization=0.6)
        return fit("Qwen/Qwen3.6-35B-A3B-FP8", **{**base, **kw})
    s = srv("Qwen/Qwen3.6-35B-A3B-FP8", kv_cache_dtype="fp8", vllm_version="0.25")
    # a GDN layer's state: conv 3 x (2 x 16 x 128 + 32 x 128) in 16 bits + recurrent 32 x 128 x 128 in the config's
    # mamba_ssm_dtype, float32 from 0.17 (Qwen3_5ForConditionalGenerationConfig); a whole number of 16-token fp8
    # attention blocks (2 x 2 heads x 256 B per token): 131 blocks, the attention block size vLLM sets is 2,096
    conv, recurrent = 3 * (2 * 16 * 128 + 32 * 128), 32 * 128 * 128
    assert state_page_bytes(s, "bfloat16") == conv * 2 + recurrent * 4 == 131 * 16 * 1024
    assert state_page_bytes(s.model_copy(update={"vllm_version": "0.16"}), "bfloat16") == (conv + recurrent) * 2
    # 18202's log: 95 blocks; a request needs 131,072 / 2,096 -> 63 attention blocks + one per state group (3), and
    # 95 / 66 = 1.44 is the concurrency it printed. The cache is 10 pools (the group size) of num_blocks pages
    server = s.model_copy(update={"max_model_len": 131072})
    kv_gib = 95 * 10 * state_page_bytes(s, "bfloat16") / 2**30
    assert state_blocks(server, resolve(server, H100), kv_gib) == 95
    blocks = state_blocks(server, resolve(server, H100), run().servers[0].kv_cache_gib)
    assert blocks is not None and 0 < blocks < 1024  # at 0.6 of an H100; its defaults: 1,024 sequences
    (e,) = [f for f in run().all_findings() if f.code == "state-blocks-below-max-num-seqs"]
    assert "exceeds available Mamba cache blocks" in e.message and "max_num_seqs to at most" in e.fix
    assert run(max_num_seqs=max(1, blocks // 2)).ok
    # no check before 0.20, nor without CUDA graphs, nor for models without a recurrent state
    assert "state-blocks-below-max-num-seqs" not in run(vllm_version="0.19").codes()
    assert "state-blocks-below-max-num-seqs" not in run(enforce_eager=True).codes()
    assert state_page_bytes(srv("Qwen/Qwen3-8B"), "bfloat16") == 0


def test_v1_on_request_before_it_was_the_default():
    assert rules_for("0.7.3", v1_requested=True).engine == "V1" and rules_for("0.7.3").engine == "V0"
    assert rules_for("0.7.3", (7, 5), v1_requested=True).engine == "V0"  # V1 needed CC >= 8.0 then
    assert rules_for("0.6.6", v1_requested=True).engine == "V0"  # no V1 before 0.7
    # V1 0.7 read other processes' memory as its own, as 0.8 did (case 16131: a second 0.2 instance)
    assert rules_for("0.7.3", v1_requested=True).others_count_as_own


def test_env_on_the_command_line():
    _, d = cli("--model", LLAMA8, "--gpu", "L4", "--vllm-version", "0.9.2", "--env", "VLLM_USE_V1=0",
               "--max-model-len", "4096", "--json")
    assert "v1-falls-back-to-v0" in {f["code"] for f in d["servers"][0]["findings"]}
    for bad in ("VLLM_USE_V1", "BAD NAME=1", "X=a\nb"):
        r = CliRunner().invoke(app, ["fit-check", "--model", LLAMA8, "--gpu", "L4", "--env", bad])
        assert isinstance(r.exception, ProfileError) and "--env" in str(r.exception), r.output
        assert "NAME=VALUE" in str(r.exception)


def test_builds_that_read_other_processes_memory_as_their_own():
    # V1 until 0.9.0 (and 0.2.5-0.3.0) took total - free as memory in use: 20 GiB held by another process comes
    # out of the KV cache instead of failing the allocation
    assert [rules_for(v).others_count_as_own for v in ("0.2.4", "0.2.7", "0.3.1", "0.6.3", "0.6.4", "0.6.5",
                                                       "0.8.4", "0.9.0", "0.9.1", "0.19")] == \
        [False, True, False, False, True, False, True, True, False, False]
    assert not rules_for("0.8.4", (7, 5)).others_count_as_own  # a T4 ran V0 there
    alone, shared = (fit(LLAMA8, vllm_version="0.8.4", max_model_len=8192, gpu_memory_utilization=0.9,
                         gpu_free_gib=free).servers[0] for free in (None, H100.visible_gib - 20))
    assert shared.kv_cache_gib == pytest.approx(alone.kv_cache_gib - 20, abs=0.01)
    assert shared.non_torch_gib == pytest.approx(alone.non_torch_gib + 20, abs=0.01)
    r = fit(LLAMA8, vllm_version="0.8.4", max_model_len=8192, gpu_memory_utilization=0.9,
            gpu_free_gib=H100.visible_gib - 20)
    assert r.ok and "others-memory-counted" in r.codes() and "gpu-free-memory-too-low" not in r.codes()
    # 0.9.1 measures from what was in use at start-up, and refuses a budget above the free memory
    later = fit(LLAMA8, vllm_version="0.9.1", max_model_len=8192, gpu_memory_utilization=0.9,
                gpu_free_gib=H100.visible_gib - 20)
    assert not later.ok and "gpu-free-memory-too-low" in later.codes()
    assert later.servers[0].kv_cache_gib == pytest.approx(alone.kv_cache_gib, abs=0.3)


def test_colocated_servers_on_builds_that_count_each_other():
    # two 0.25 servers on one card (vllm#29481 on 0.8.4): the one started second reads the first as its own
    def node(version: str) -> FitReport:
        a, b = (srv("Qwen/Qwen3-0.6B", name=n, max_model_len=2048, gpu_memory_utilization=0.25,
                    vllm_version=version) for n in ("a", "b"))
        return check([NodeInput(label="n", gpu=get_gpu("RTX-4090"), gpu_count=1, servers=((a, (0,)), (b, (0,))))])
    old, new = node("0.8.4"), node("0.9.2")
    assert not old.ok and "colocated-memory-counted" in old.codes()
    assert new.ok and "colocated-memory-counted" not in new.codes()


def test_single_server_util_near_one_leaves_no_room_for_its_context():
    r = fit(LLAMA8, max_model_len=8192, gpu_memory_utilization=0.999)
    assert "util-too-high" in r.codes() and not r.ok  # V1 >= 0.9.1: the free memory is below the budget
    assert fit(LLAMA8, max_model_len=8192, gpu_memory_utilization=0.99).ok


def test_a_build_without_the_free_memory_check_starts_in_its_profiled_activations():
    # V0 0.7.3, 0.99 of an L4 at 24,576 tokens (case 12000): budget + context + graphs exceed the card, but the
    # profile's activations are free again while the KV cache is allocated and the graphs captured
    r = fit("meta-llama/Llama-3.1-8B", gpu=L4, vllm_version="0.7.3", max_model_len=24576,
            gpu_memory_utilization=0.99, dtype="float16")
    (w,) = [f for f in r.all_findings() if f.code == "util-too-high-for-peak"]
    assert r.ok and w.severity == "warning" and "a batch as large as the profiling one" in w.message
    assert r.servers[0].activation_gib > 2
    # without that room (a short context, 16 sequences: small activations) it runs out of memory capturing graphs
    short = fit("meta-llama/Llama-3.1-8B", gpu=L4, vllm_version="0.7.3", max_model_len=2048, max_num_seqs=16,
                gpu_memory_utilization=0.999, dtype="float16")
    assert not short.ok and "util-too-high" in short.codes()
    # two servers on one GPU serve side by side: each is held to its whole budget
    a, b = (srv("Qwen/Qwen3-0.6B", name=n, max_model_len=2048, gpu_memory_utilization=u, vllm_version="0.7.3")
            for n, u in (("a", 0.5), ("b", 0.49)))
    two = check([NodeInput(label="n", gpu=L4, gpu_count=1, servers=((a, (0,)), (b, (0,))))])
    assert not two.ok and "util-sum-too-high" in two.codes()


def test_v1_needs_the_sampler_warm_up_back_after_graph_capture():
    """V1 warms the sampler up again after capturing the graphs, with the profile's rows (GPUWorker.
    compile_or_warm_up_model): a single server can start in its freed activations only if, after the graphs, they
    still hold the sampler's pass. gemma-3-1b's 262,144-token vocabulary x 1,024 sequences: 3.75 GiB."""
    def run(util: float, version: str = "0.19"):
        return fit("google/gemma-3-1b-it", gpu=L4, vllm_version=version, max_model_len=2048, max_num_seqs=1024,
                   gpu_memory_utilization=util)
    big = run(0.975)
    (e,) = [f for f in big.all_findings() if f.code == "sampler-warmup-oom"]
    assert not big.ok and e.severity == "error" and "warming up sampler" in e.message and "0.94" in e.fix
    assert big.servers[0].sampler_warmup_gib == pytest.approx(1024 * 262144 * 15 / 2**30, rel=0.01)
    assert run(0.94).ok  # the fix it names
    # the sampler set the profile's peak, so its freed activations leave nothing for the graphs; before the warm-up
    # step was counted this read as a start (util-too-high-for-peak)
    assert big.servers[0].activation_gib == pytest.approx(big.servers[0].sampler_warmup_gib)
    old = run(0.975, "0.7.3")  # V0 has no warm-up after capture
    assert old.servers[0].sampler_warmup_gib == 0 and "sampler-warmup-oom" not in old.codes()


def test_colocated_servers_add_their_contexts_and_outside_graphs():
    # two servers at 0.49 each on a T4: 14.28 GiB of budgets + two CUDA contexts > 14.57 GiB
    a = srv("Qwen/Qwen2.5-0.5B-Instruct", "a", dtype="float16", gpu_memory_utilization=0.49, max_model_len=4096)
    r = check([NodeInput(label="n", gpu=T4, servers=((a, (0,)), (a.model_copy(update={"name": "b"}), (0,))))])
    assert "util-sum-too-high" in r.codes()
    a2 = a.model_copy(update={"gpu_memory_utilization": 0.46})
    r = check([NodeInput(label="n", gpu=T4, servers=((a2, (0,)), (a2.model_copy(update={"name": "b"}), (0,))))])
    assert r.ok, r.all_findings()
    # before 0.20 each server's CUDA graphs come on top of its budget
    old = [x.model_copy(update={"vllm_version": "0.19"}) for x in (a2, a2.model_copy(update={"name": "b"}))]
    r = check([NodeInput(label="n", gpu=T4, servers=tuple((x, (0,)) for x in old))])
    assert "util-sum-too-high" in r.codes() and "CUDA graphs outside the budgets" in r.gpus[0].findings[0].message


@pytest.mark.parametrize("run", [0, 1])
def test_colocation_boundary_matches_the_h200_measurement(run: int):
    # scripts/device/colocate_check.py on a real H200: process A held a budget of u1 x total, process B
    # created its context and read the free memory vLLM compares with its own budget. The largest u2
    # that starts beside A must be where the fit-check draws the line (within 0.002 = 0.28 GiB).
    data = json.loads((Path(__file__).parent / "data" / "device" / "colocate_h200.json").read_text())
    step = data["runs"][run]["startup_check"]
    h200 = get_gpu("H200")
    assert step["a"]["total_gib"] == pytest.approx(h200.visible_gib, abs=0.01)
    u1, u2_max = step["u1"], step["largest_u2_that_starts"]

    def pair(u2: float) -> FitReport:
        a = srv("Qwen/Qwen2.5-0.5B-Instruct", "a", gpu_memory_utilization=u1, max_model_len=4096)
        b = a.model_copy(update={"name": "b", "gpu_memory_utilization": round(u2, 4)})
        return check([NodeInput(label="n", gpu=h200, servers=((a, (0,)), (b, (0,))))])

    assert "util-sum-too-high" not in pair(u2_max - 0.002).codes()
    assert "util-sum-too-high" in pair(u2_max + 0.002).codes()


def test_mla_models_cached_every_head_before_0_7_1():
    # vLLM 0.7.1 ("MLA", ~10x the token capacity for DeepSeek models) caches one 512 + 64 latent per
    # layer; older builds ran DeepSeek-V2 as multi-head attention with K (128 nope + 64 rope) and V padded
    # to the same 192, split over the TP ranks. Case 2009 (0.5-era, L40 x2) failed with 63,040 KV tokens.
    from biofleet.fitcheck import kv_bytes_per_token

    lite = "deepseek-ai/DeepSeek-V2-Lite-Chat"  # 27 layers, 16 heads
    old = srv(lite, tensor_parallel_size=2, vllm_version="0.6.3", dtype="float16")
    new = srv(lite, tensor_parallel_size=2, vllm_version="0.7.1", dtype="float16")
    assert kv_bytes_per_token(old) == 27 * 2 * 8 * 192 * 2
    assert kv_bytes_per_token(new) == 27 * 576 * 2
    r = check_server_on_gpu(old.model_copy(update={"max_model_len": 163840}), get_gpu("L40"), 2)
    assert "kv-cache-too-small" in r.codes() and r.servers[0].kv_cache_tokens < 163840
    r = check_server_on_gpu(new.model_copy(update={"max_model_len": 163840}), get_gpu("L40"), 2)
    assert r.ok


def test_a_copy_matched_by_name_is_reported():
    r = check_server_on_gpu(srv("unsloth/phi-4-bnb-4bit", max_model_len=4096), get_gpu("T4"))
    (f,) = [f for f in r.all_findings() if f.code == "model-matched-by-name"]
    assert "microsoft/phi-4" in f.message and "bitsandbytes" in f.message and f.severity == "info"
    assert r.servers[0].quantization == "bitsandbytes" and r.servers[0].weights_gib < 9.1  # 4.5 bits; fp16: 27 GiB
    assert "dynamic-4bit-layers" not in r.codes()  # a plain bnb copy: every linear layer in 4 bits
    # Unsloth's dynamic copies keep layers in 16 bits that their name does not say: a warning, not a guess
    dyn = check_server_on_gpu(srv("unsloth/phi-4-unsloth-bnb-4bit", max_model_len=4096), get_gpu("T4"))
    (w,) = [f for f in dyn.all_findings() if f.code == "dynamic-4bit-layers"]
    assert w.severity == "warning" and "llm_int8_skip_modules" in w.message and "--online" in w.fix
    assert dyn.servers[0].weights_gib == r.servers[0].weights_gib


def test_v0_sampler_warm_up_bytes_per_logit():
    # case 6103: gemma-2b-it (256k vocabulary) on a T4 at 0.47, V0 0.5: 4.74 GiB of weights and 260 KV
    # blocks left, so the profiling peak was ~2.0 GiB: 256 rows x 256,000 logits x ~33 B
    r = check_server_on_gpu(srv("google/gemma-2b-it", vllm_version="0.5", max_model_len=64, dtype="float16",
                                gpu_memory_utilization=0.47, enforce_eager=True), get_gpu("T4"))
    s = r.servers[0]
    assert r.ok and 1.9 < s.activation_gib < 2.1 and s.kv_cache_tokens > 0


def test_sampler_rule_brackets_the_h200_measurement():
    # scripts/device/sampler_peak.py on a real H200: a sort-based top-k/top-p pass written after vLLM's
    # pre-FlashInfer sampler peaks at 36 B per logit for every vocabulary and row count tried; the fitted era
    # figures (V0 33, V1 before 0.17 40) lie within 10 % of it, FlashInfer's (15) well below
    from biofleet.catalog.vllm_rules import rules_for

    data = json.loads((Path(__file__).parent / "data" / "device" / "sampler_h200.json").read_text())
    measured = [r["bytes_per_logit"] for r in data["runs"]]
    assert max(measured) - min(measured) < 0.5
    b = sum(measured) / len(measured)
    v0, v1 = rules_for("0.6.3").sampler_bytes_per_logit, rules_for("0.10.1").sampler_bytes_per_logit
    assert v0 <= b <= v1 and abs(v0 - b) / b < 0.1 and abs(v1 - b) / b < 0.12
    assert rules_for("0.19").sampler_bytes_per_logit < b / 2


def test_cold_compile_adds_little_to_the_profile_peak():
    # scripts/device/compile_peak.py on a real H200 (torch 2.11): the peak above what stays allocated of one forward
    # pass over a stack of Qwen3-8B's shapes, compiled on a cold Inductor cache and again on the warm one. The cold
    # compile adds under 0.1 GiB, far from the 0.84 GiB between two vLLM 0.29 logs of one command (19210 cold,
    # 19212 "AOT compile cache hit"), so the fit-check carries no cold-compile allowance (docs: Known limits)
    rows = [json.loads(line) for line in
            (Path(__file__).parent / "data" / "device" / "compile_h200.jsonl").read_text().splitlines()]
    assert all("error" not in r for r in rows) and {r["device"] for r in rows} == {"NVIDIA H200"}
    logged = {c["id"]: c["activation_peak_gib"] for c in load("vllm_cases_v2_heldout19.jsonl")
              if c["id"] in (19210, 19212)}
    gap = logged[19210] - logged[19212]
    assert gap > 0.8
    for tokens in {r["tokens"] for r in rows}:
        runs = [r for r in rows if r["tokens"] == tokens and r["mode"] == "compile" and r["combo_bench"]]
        assert len(runs) == 2  # the cold process, then the warm one over the same cache
        cold, warm = runs[0]["first"]["headroom_gib"], runs[1]["first"]["headroom_gib"]
        assert cold > warm and cold - warm < 0.1 < gap


# ---------------------------------------------------------------- dtype resolution

def test_config_without_torch_dtype_is_float32_served_in_float16():
    cfg = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 2048,
           "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 8192,
           "vocab_size": 128256, "max_position_embeddings": 8192}
    m = model_from_config(cfg, "lab/no-dtype")
    assert m.torch_dtype_missing and m.native_dtype == "float32"
    s = ServerInput(name="s", model=m, max_model_len=4096)
    for version in ("0.5.1", "0.32"):  # old and new builds alike run it in float16 on a T4
        r = check_server_on_gpu(s.model_copy(update={"vllm_version": version}), T4)
        assert r.ok and r.servers[0].dtype == "float16" and "torch-dtype-missing" in r.codes(), version
        assert "bf16-unsupported" not in r.codes()
    # on an Ampere card a new build prefers bfloat16 for a float32 checkpoint; the bytes are the same
    assert check_server_on_gpu(s, L4).servers[0].dtype == "bfloat16"
    embed = check_server_on_gpu(s.model_copy(update={"kind": "embed"}), L4).servers[0]
    assert embed.dtype == "float16"  # pooling models prefer float16


# ---------------------------------------------------------------- quantisation and checkpoints

def _quant_cfg(method: str, **extra: Any) -> dict[str, Any]:
    return {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256, "torch_dtype": "bfloat16",
            "quantization_config": {"quant_method": method, **extra}}


def test_unknown_quantisation_is_a_warning_not_a_guess():
    m = model_from_config(_quant_cfg("quark"), "lab/quark-fp8")
    assert m.quantization == "quark" and m.quant_bits is None
    r = check_server_on_gpu(ServerInput(name="s", model=m, max_model_len=4096), H100)
    (f,) = [f for f in r.all_findings() if f.code == "quant-method-unknown"]
    assert f.severity == "warning" and "16 bits per parameter" in f.message and "--online" in f.fix
    assert r.servers[0].weights_gib == pytest.approx(8.03 * 1e9 * 2 / 1024 ** 3, rel=0.02)
    # methods it knows take their bits from the config
    assert model_from_config(_quant_cfg("fbgemm_fp8"), "lab/fp8").quant_bits == 8
    assert model_from_config(_quant_cfg("modelopt", quant_algo="NVFP4"), "lab/nvfp4").quant_bits == 4.5


def _write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    """A header-only safetensors file (the fit-check reads headers, never the data)."""
    size = {"F32": 4, "F16": 2, "BF16": 2, "I32": 4, "F8_E4M3": 1, "U8": 1}
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        n = size[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)


def test_weights_come_from_the_checkpoint_when_it_is_at_hand(tmp_path):
    cfg = _quant_cfg("quark")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    # FP8 linear layers (8e9 bytes) + bf16 embeddings and lm_head (2 x 128256 x 4096 x 2 bytes)
    _write_safetensors(tmp_path / "model-00001-of-00002.safetensors",
                       {"model.embed_tokens.weight": ("BF16", [128256, 4096]),
                        "lm_head.weight": ("BF16", [128256, 4096])})
    _write_safetensors(tmp_path / "model-00002-of-00002.safetensors",
                       {"model.layers.0.mlp.weight": ("F8_E4M3", [8000, 1000000]),
                        "model.mtp.0.weight": ("BF16", [4096, 4096])})  # multi-token prediction: not loaded
    ck = checkpoint_from_dir(tmp_path)
    assert ck is not None and ck.float_dtype == "bfloat16" and ck.other_bytes == 8_000_000_000
    _, d = cli("--model", str(tmp_path), "--gpu", "H100", "--max-model-len", "4096", "--json")
    s = d["servers"][0]
    expected = (8e9 + 2 * 128256 * 4096 * 2) / 1024 ** 3
    assert s["weights_gib"] == pytest.approx(expected, abs=0.01)
    assert s["inputs"]["weights_source"].startswith("checkpoint")
    assert "quant-method-unknown" in {f["code"] for f in s["findings"]}  # still said, with the size it used
    # served in float16 instead of bf16: float tensors keep their 2 bytes; a float32 run doubles them
    _, d32 = cli("--model", str(tmp_path), "--gpu", "H100", "--max-model-len", "4096", "--dtype", "float32",
                 "--json")
    assert d32["servers"][0]["weights_gib"] == pytest.approx(expected + 2 * 128256 * 4096 * 2 / 1024 ** 3, abs=0.01)


def test_index_total_size_is_used_without_shards(tmp_path):
    cfg = _quant_cfg("awq", bits=4, group_size=128)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": 5_700_000_000},
                                                                       "weight_map": {}}))
    spec = get_model(str(tmp_path))
    assert spec.checkpoint is not None and spec.checkpoint.total_bytes == 5_700_000_000
    s = check_server_on_gpu(ServerInput(name="s", model=spec, max_model_len=4096, dtype="float16"), L4).servers[0]
    assert s.weights_gib == pytest.approx(5.7e9 / 1024 ** 3 + rope_cache_gib(spec, "float16"))  # + the RoPE table


def test_online_reads_safetensors_headers_from_the_hub(tmp_path):
    cfg = {"model_type": "qwen2", "hidden_size": 1024, "num_hidden_layers": 8, "num_attention_heads": 16,
           "num_key_value_heads": 2, "intermediate_size": 4096, "vocab_size": 32000, "torch_dtype": "bfloat16"}
    st = tmp_path / "m.safetensors"
    _write_safetensors(st, {"w": ("BF16", [50_000, 10_000])})  # 1e9 bytes
    with FakeHub({"lab/small": {"config.json": json.dumps(cfg).encode(), "model.safetensors": st.read_bytes()}}) as hub:
        env = {"HF_ENDPOINT": hub.url, "HOME": str(tmp_path)}
        _, d = cli("--model", "lab/small", "--gpu", "L4", "--online", "--max-model-len", "2048", "--json", env=env)
    s = d["servers"][0]
    assert s["weights_gib"] == pytest.approx(1e9 / 1024 ** 3, abs=0.01)
    assert "on the hub" in s["inputs"]["weights_source"]
    # cached: the next run needs no network
    _, d = cli("--model", "lab/small", "--gpu", "L4", "--max-model-len", "2048", "--json",
               env={"HOME": str(tmp_path)})
    assert d["servers"][0]["weights_gib"] == pytest.approx(1e9 / 1024 ** 3, abs=0.01)


# ---------------------------------------------------------------- vision-language and sliding-window models

def test_vision_language_model_counts_tower_and_encoder():
    s = fit("Qwen/Qwen2.5-VL-7B-Instruct", gpu=A100, max_model_len=8192, vllm_version="0.19").servers[0]
    text = fit("Qwen/Qwen2.5-7B-Instruct", gpu=A100, max_model_len=8192, vllm_version="0.19").servers[0]
    assert s.weights_gib - text.weights_gib == pytest.approx(0.67e9 * 2 / 1024 ** 3, rel=0.1)  # the ViT
    # one 16384-token image (65536 patches) through the ViT outweighs the 2048-token text profile
    assert s.activation_gib > 2 * text.activation_gib and s.inputs["vision_encoder_items"] == 1
    assert s.kv_cache_tokens < text.kv_cache_tokens



def test_qwen3_vl_profile_holds_the_padded_video_outputs_on_0_11_and_0_12():
    # vLLM 0.11-0.12 profile Qwen3-VL on a 12,288-token video counted as 12.5 x 12,288 = 153,600 tokens, and keep
    # the encoder output padded to that many rows (x 2048 x 4: the merger + 3 DeepStack levels, bf16) through the
    # text pass and the sampler. Case 13002 (30B-A3B on one H100, 0.11.0rc2, 65,536 tokens, 256 sequences)
    # logged 8.77 GiB of KV; 21110 (32B at TP 2, 0.11.0, 1,024 sequences) 26.90 GiB per rank
    m = "Qwen/Qwen3-VL-30B-A3B-Instruct"
    assert get_model(m).vision.deepstack_levels == 3
    h100 = get_gpu("H100-80GB")
    kw: dict[str, Any] = {"gpu": h100, "max_model_len": 65536, "dtype": "bfloat16", "max_num_seqs": 256}
    s = fit(m, vllm_version="0.11.0", **kw).servers[0]
    vp = s.inputs["vision_profile"]
    assert (vp["modality"], vp["items"], vp["patches_per_item"]) == ("video", 1, 49152)
    assert vp["outputs_held_gib"] == pytest.approx(153600 * 2048 * 4 * 2 / 2**30, abs=0.001)
    assert s.kv_cache_gib == pytest.approx(8.77, rel=0.08)
    big = fit("Qwen/Qwen3-VL-32B-Instruct", gpu=h100, vllm_version="0.11.0", max_model_len=32768,
              tensor_parallel_size=2).servers[0]
    assert big.kv_cache_gib == pytest.approx(26.90, rel=0.05)
    # 0.13 dropped the 12.5 factor and the padding: the 16,384-token image is the largest item, kept as it is
    late = fit(m, vllm_version="0.13.0", **kw).servers[0]
    assert late.inputs["vision_profile"]["modality"] == "image"
    assert late.inputs["vision_profile"]["outputs_held_gib"] == pytest.approx(16384 * 8192 * 2 / 2**30, abs=0.001)
    assert late.kv_cache_gib > s.kv_cache_gib + 1.5
    # videos limited to 0 per prompt: no video item, so the image (unpadded: the budget is its 16,384 tokens)
    no_video = fit(m, vllm_version="0.11.0", video_off=True, **kw).servers[0]
    assert no_video.inputs["vision_profile"]["modality"] == "image"
    assert no_video.kv_cache_gib == pytest.approx(late.kv_cache_gib, abs=0.05)
    _, out = cli("--model", m, "--gpu", "H100-80GB", "--vllm-version", "0.11.0", "--max-model-len", "65536",
                 "--limit-mm-per-prompt", '{"video": 0}', "--json")
    assert out["servers"][0]["inputs"]["vision_profile"]["modality"] == "image"
    # 0.11.x pads every item to the encoder budget: Gemma-3's 32 images of 256 tokens at 8,192 batched tokens
    g = "google/gemma-3-27b-it"
    g11 = fit(g, gpu=h100, vllm_version="0.11.0", max_model_len=8192).servers[0]
    g12 = fit(g, gpu=h100, vllm_version="0.12.0", max_model_len=8192).servers[0]
    hidden = get_model(g).hidden_size
    assert g11.inputs["vision_profile"]["outputs_held_gib"] == pytest.approx(32 * 8192 * hidden * 2 / 2**30,
                                                                            abs=0.001)
    assert g12.inputs["vision_profile"]["outputs_held_gib"] == pytest.approx(32 * 256 * hidden * 2 / 2**30,
                                                                            abs=0.001)

def test_gemma4_global_layers_and_the_concurrency_token_count():
    # Gemma-4: one full-attention layer in six, with its own K/V shape (26B-A4B: 2 heads x 512 against the
    # sliding layers' 8 x 256). From 0.20.1 vLLM prints the KV size as max concurrency x max_model_len (PRs
    # #38364 / #40694); case 8000 (26B-A4B on an H200, 0.20.2, 32768 tokens) logged 984,297 tokens = 30.04x
    m = get_model("google/gemma-4-26B-A4B-it")
    assert (m.sliding_layers, m.global_kv_heads, m.global_head_dim) == (25, 2, 512)
    assert get_model("google/gemma-4-31B-it").sliding_layers == 50  # no layer_types in that file: every 6th
    h200 = get_gpu("H200")
    new = fit(m.id, gpu=h200, vllm_version="0.20.2", max_model_len=32768, dtype="bfloat16").servers[0]
    assert new.kv_cache_tokens == pytest.approx(984_297, rel=0.1)
    assert new.kv_cache_tokens == pytest.approx(new.max_concurrency * 32768, rel=0.001)
    old = fit(m.id, gpu=h200, vllm_version="0.20.0", max_model_len=32768, dtype="bfloat16").servers[0]
    assert old.kv_cache_tokens < new.kv_cache_tokens / 2  # num_blocks // groups x block: the old figure
    # a full layer caches 2 x 2 x 512 x 2 B, a sliding one 2 x 8 x 256 x 2 B
    assert new.kv_bytes_per_token == 5 * 2 * 2 * 512 * 2 + 25 * 2 * 8 * 256 * 2


def test_pipeline_parallel_checks_the_heaviest_stage():
    # vLLM splits the layers over the stages; the first also holds the embeddings. Llama-3.1-70B in bf16 on
    # 2 stages x 2 GPUs: each GPU holds a quarter of the layers plus one 128256 x 8192 matrix / TP
    one = fit("meta-llama/Llama-3.1-70B-Instruct", gpu=A100, max_model_len=8192, tensor_parallel_size=4,
              vllm_version="0.19").servers[0]
    pp = check_server_on_gpu(srv("meta-llama/Llama-3.1-70B-Instruct", max_model_len=8192, tensor_parallel_size=2,
                                 pipeline_parallel_size=2, vllm_version="0.19"), A100)
    s = pp.servers[0]
    m = get_model("meta-llama/Llama-3.1-70B-Instruct")
    body = (m.params_b - m.embedding_params_b) * 1e9 / 2 + 128256 * 8192
    assert s.weights_gib == pytest.approx(body * 2 / 2 / 1024 ** 3, rel=0.01)
    assert s.weights_gib == pytest.approx(one.weights_gib, rel=0.03)  # 4 GPUs either way
    assert s.kv_bytes_per_token == one.kv_bytes_per_token  # 40 of 80 layers, 4 of 8 KV heads vs 80 layers, 2 heads
    assert "pipeline-stage-checked" in pp.codes() and s.inputs["pipeline_parallel_size"] == 2
    # V0 (and 0.8.x, which ran pipeline parallelism on V0) splits the blocks over the stages' virtual engines:
    # one request sees half (case 2004: QwQ-32B on 2 x RTX 5090, 0.8.5, capacity 58,384 tokens logged)
    v0 = check_server_on_gpu(srv("Qwen/QwQ-32B", max_model_len=60000, quantization="bitsandbytes",
                                 pipeline_parallel_size=2, vllm_version="0.8.5", gpu_memory_utilization=0.85),
                             get_gpu("RTX-5090"))
    t = v0.servers[0]
    assert t.inputs["engine"].startswith("V0") and "v1-falls-back-to-v0" in v0.codes()
    per_token = t.kv_bytes_per_token
    assert t.kv_cache_tokens == pytest.approx(t.kv_cache_gib * 1024 ** 3 / per_token / 2, rel=0.01)
    assert "pipeline-stages-exceed-layers" in check_server_on_gpu(
        srv("facebook/opt-125m", pipeline_parallel_size=13), T4).codes()  # 12 layers
    # the one-server command line takes it as vLLM does
    _, d = cli("--model", "meta-llama/Llama-3.1-70B-Instruct", "--gpu", "A100-80GB", "--tensor-parallel-size", "2",
               "--pipeline-parallel-size", "2", "--max-model-len", "8192", "--vllm-version", "0.19", "--json")
    assert d["servers"][0]["inputs"]["pipeline_parallel_size"] == 2
    assert d["servers"][0]["weights_gib"] == pytest.approx(s.weights_gib, abs=0.01)


def test_awq_before_0_3_keeps_eight_split_k_partial_outputs():
    # vLLM < 0.3 ran every AWQ layer through awq_gemm with split_k_iters = 8: partial fp16 outputs
    # [8, tokens, width] summed after (PR #2566 moved long batches to dequantise + matmul). Over the whole
    # 32768-token V0 profile that is ~15 GiB for Mistral-7B's merged gate/up: case 2011 ran out of memory
    # there; case 7105 (Mixtral AWQ, 2 x A100 at 0.5, 0.2.7) logged 6487 blocks = 103,792 tokens
    mixtral = "TheBloke/Mixtral-8x7B-Instruct-v0.1-AWQ"
    old = fit(mixtral, gpu=A100, vllm_version="0.2.7", gpu_memory_utilization=0.5, tensor_parallel_size=2,
              enforce_eager=True, quantization="awq").servers[0]
    assert old.kv_cache_tokens == pytest.approx(103_792, rel=0.05)
    assert "quant-dtype-mismatch" not in {f.code for f in old.findings}  # AWQ copies are float16
    new = fit(mixtral, gpu=A100, vllm_version="0.3.0", gpu_memory_utilization=0.5, tensor_parallel_size=2,
              enforce_eager=True, quantization="awq").servers[0]
    assert new.activation_gib < old.activation_gib / 4


def test_v0_profiles_images_inside_lengthened_dummy_sequences():
    # V0's decoder-only runner: min(max_num_seqs, batched // tokens per image) sequences (at least one),
    # each with one largest image; a sequence shorter than its image's 16384 tokens is lengthened, so the
    # text pass covers 16384 tokens even at max_model_len 4096
    v0 = fit("Qwen/Qwen2.5-VL-7B-Instruct", gpu=A100, max_model_len=4096, vllm_version="0.6.3").servers[0]
    text = fit("Qwen/Qwen2.5-7B-Instruct", gpu=A100, max_model_len=16384, vllm_version="0.6.3").servers[0]
    assert v0.inputs["vision_encoder_items"] == 1
    assert v0.activation_gib == pytest.approx(text.activation_gib, rel=0.02)
    assert "vision-not-modelled" not in {f.code for f in v0.findings}


def test_v0_mllama_profiles_one_image_per_dummy_sequence():
    # vLLM V0's encoder-decoder runner gives each of max_num_seqs dummy sequences a 4-tile image
    # (cases 6111-6115: pixel_values [256, 1, 1, 4, 3, 560, 560], OOM in the vision MLP even on 80 GB;
    # 6113 started with max_num_seqs 32 and eager mode). Weights logged: 19.9073 GiB.
    m = get_model("meta-llama/Llama-3.2-11B-Vision")
    assert m.id == "meta-llama/Llama-3.2-11B-Vision-Instruct" and m.vision is not None
    default = fit(m.id, gpu=A100, vllm_version="0.6.3", max_model_len=1024).servers[0]
    assert default.weights_gib == pytest.approx(19.9073, rel=0.01)
    assert default.inputs["vision_encoder_items"] == 256 and default.kv_cache_gib < 0
    fix = next(f.fix for f in default.findings if f.code == "no-kv-memory")
    assert fix.startswith("lower max_num_seqs to 128")
    fewer = fit(m.id, gpu=A100, vllm_version="0.6.3", max_model_len=1024, max_num_seqs=32,
                enforce_eager=True).servers[0]
    assert fewer.inputs["vision_encoder_items"] == 32 and fewer.kv_cache_gib > 30
    assert "vision-not-modelled" not in {f.code for f in fewer.findings}
    # builds before 0.10.2 fell back to V0 for it; V1 never ran mllama: weights only, and a warning says so
    assert fit(m.id, gpu=A100, vllm_version="0.9.2", max_model_len=1024).servers[0].inputs["vision_encoder_items"] == 256
    v1 = fit(m.id, gpu=A100, vllm_version="0.10.2", max_model_len=1024).servers[0]
    assert v1.inputs["vision_encoder_items"] == 0 and "vision-not-modelled" in {f.code for f in v1.findings}


def test_unmodelled_towers_say_what_is_not_counted():
    cfg = {"model_type": "fancy_vlm", "architectures": ["FancyForConditionalGeneration"],
           "text_config": {"model_type": "llama", "hidden_size": 2048, "num_hidden_layers": 16,
                           "num_attention_heads": 16, "intermediate_size": 8192, "torch_dtype": "bfloat16"},
           "vision_config": {"hidden_size": 1024, "num_hidden_layers": 24, "intermediate_size": 4096},
           "audio_config": {"d_model": 1280}}
    m = model_from_config(cfg, "lab/fancy")
    assert m.vision is not None and not m.vision.modelled and m.vision.params_b > 0.25
    r = check_server_on_gpu(ServerInput(name="s", model=m, max_model_len=4096), L4)
    assert {"vision-not-modelled", "modality-not-counted"} <= r.codes()


def test_sliding_window_layers_keep_only_their_window():
    # Gemma-3-12B: 40 of 48 layers slide over 1024 tokens. From 0.9.1 (the hybrid KV manager) a request holds only
    # its window in them; 0.8.3-0.9.0 check one request that way but then allocate every layer in full; older builds
    # do neither (kv_cache_utils.get_kv_cache_config in vLLM's source archives on PyPI)
    new, mid, old = (fit("google/gemma-3-12b-it", vllm_version=v, max_model_len=131072).servers[0]
                     for v in ("0.9.1", "0.9.0", "0.8.2"))
    assert new.kv_cache_tokens == pytest.approx(old.kv_cache_tokens, rel=0.05)  # tokens = bytes / full per-token
    assert new.max_concurrency is not None and mid.max_concurrency is not None
    assert new.max_concurrency > 3 * mid.max_concurrency and mid.max_concurrency == old.max_concurrency
    assert "hybrid" in new.inputs["sliding_window_kv"] and "full" in mid.inputs["sliding_window_kv"]
    # case 7005: Gemma-3-12B QAT (AWQ) at TP 2 on RTX 4090s, 131,072 tokens, 0.8.4: started at 0.53x concurrency
    kw: dict[str, Any] = {"gpu": get_gpu("RTX-4090"), "max_model_len": 131072, "tensor_parallel_size": 2,
                          "dtype": "bfloat16", "quantization": "awq_marlin"}
    started = fit("gaunernst/gemma-3-12b-it-qat-autoawq", vllm_version="0.8.4", **kw)
    assert started.ok and started.servers[0].max_concurrency < 1, started.all_findings()
    refused = fit("gaunernst/gemma-3-12b-it-qat-autoawq", vllm_version="0.8.2", **kw)
    assert "kv-cache-too-small" in refused.codes()


def test_hybrid_kv_groups_are_padded_to_equal_size():
    """vLLM's hybrid KV manager (V1 >= 0.9.1) puts each attention type into groups of equal size and pads
    ("Add N padding layers"): Gemma-3-27B's 10 full + 52 sliding layers take 10 + 60 slots."""
    assert hybrid_kv_group_slots((10, 52)) == (10, 60)
    assert hybrid_kv_group_slots((8, 40)) == (8, 40)  # Gemma-3-12B: 5:1, no padding
    assert hybrid_kv_group_slots((12, 12)) == (12, 12)  # gpt-oss, Gemma-2: 1:1
    assert hybrid_kv_group_slots((32, 0)) == (32, 0)  # one type: nothing to pad
    # PR #29303 (0.12): near-equal types group at the larger count (gpt-oss + eagle: 19 full + 18 sliding)
    assert hybrid_kv_group_slots((19, 18), near_equal_ratio=1.25) == (19, 19)
    assert hybrid_kv_group_slots((19, 18), near_equal_ratio=0) == (36, 18)
    # the ratio in the source archives: none before 0.12, 1.25 until 0.17, 1.5 from 0.18 (13 full + 17 sliding)
    assert [rules_for(v).kv_group_near_equal_ratio for v in ("0.11.2", "0.12", "0.17.1", "0.18")] == [0, 1.25, 1.25, 1.5]
    assert hybrid_kv_group_slots((13, 17), 1.25) == (13, 26) and hybrid_kv_group_slots((13, 17), 1.5) == (17, 17)
    # Applied where the hybrid manager runs: the token count divides the KV cache by 70 slots, not 62 layers.
    new = fit("google/gemma-3-27b-it", vllm_version="0.19", max_model_len=8192).servers[0]
    old = fit("google/gemma-3-27b-it", vllm_version="0.9.0", max_model_len=8192).servers[0]
    assert new.inputs["kv_layer_slots"] == 70 and old.inputs["kv_layer_slots"] == 62
    per_token = new.kv_bytes_per_token // 62
    assert new.kv_cache_tokens == int(new.kv_cache_gib * 1024 ** 3 // (70 * per_token)) // 16 * 16


def test_tensor_parallel_communication_memory_depends_on_the_link():
    """TP > 1 adds NCCL / custom all-reduce memory: ~1.85 GiB per rank between NVLink-connected cards,
    ~0.25 GiB on PCIe-only cards (no custom all-reduce without P2P / beyond two PCIe GPUs)."""
    from biofleet.fitcheck import NCCL_GIB, NCCL_PCIE_GIB, non_torch_gib

    tp2 = srv("Qwen/Qwen2.5-7B-Instruct", tensor_parallel_size=2, vllm_version="0.7.1")
    rules = rules_for("0.7.1")
    assert get_gpu("H100").nvlink and get_gpu("A100-40GB").nvlink
    assert get_gpu("a100-pcie-40gb").nvlink is False and get_gpu("h100-pcie").nvlink is False
    assert get_gpu("T4").nvlink is False and get_gpu("L40S").nvlink is False
    assert custom_gpu(48, "8.9").nvlink is None
    assert non_torch_gib(tp2, rules, get_gpu("H100")) == pytest.approx(0.07 + NCCL_GIB)
    assert non_torch_gib(tp2, rules, get_gpu("L40S")) == pytest.approx(0.07 + NCCL_PCIE_GIB)
    assert non_torch_gib(tp2, rules, custom_gpu(48, "8.9")) == pytest.approx(0.07 + NCCL_GIB)  # unknown: the larger
    assert non_torch_gib(srv("Qwen/Qwen2.5-7B-Instruct"), rules, get_gpu("T4")) == pytest.approx(0.07)
    t4 = check_server_on_gpu(srv("Qwen/Qwen2.5-7B-Instruct", tensor_parallel_size=2, vllm_version="0.22",
                                 dtype="float16", max_model_len=8192), get_gpu("T4")).servers[0]
    assert t4.non_torch_gib == pytest.approx(0.25 + NCCL_PCIE_GIB) and t4.inputs["gpu_interconnect"] == "PCIe only"


def test_linear_attention_layers_have_no_kv():
    cfg = json.loads((Path(__file__).parent / "data" / "model_configs" / "Qwen--Qwen3.5-122B-A10B.json").read_text())
    m = model_from_config(cfg, "Qwen/Qwen3.5-122B-A10B")
    assert m.kv_layers == 12 and m.num_layers == 48
    r = check_server_on_gpu(ServerInput(name="s", model=m, max_model_len=8192, tensor_parallel_size=4), H100, 4)
    # this file leaves out the linear_* fields, so the Gated DeltaNet state is not known: warned as not counted
    assert m.linear_state is None and "linear-attention-state" in r.codes()
    assert r.servers[0].kv_bytes_per_token == 12 * 2 * 1 * 256 * 2  # 2 KV heads over TP 4: one per rank
    # with them (the catalogue's full configs) the state is counted in V1's state pages: no such warning
    full = get_model("Qwen/Qwen3.5-27B")
    r = check_server_on_gpu(ServerInput(name="s", model=full, max_model_len=8192, vllm_version="0.19"), H100)
    assert full.linear_state is not None and "linear-attention-state" not in r.codes()


def test_the_printed_token_count_of_a_hybrid_model_divides_over_every_layer_slot():
    # Qwen3.5-27B on 4 x RTX 3090, vLLM 0.19 (case 14009): 16 attention + 48 Gated DeltaNet layers, four KV-cache
    # groups of 16; vLLM prints num_blocks // groups x block size, a quarter of what the attention layers hold
    s = srv("Qwen/Qwen3.5-27B", max_model_len=32768, tensor_parallel_size=4, enforce_eager=True, dtype="bfloat16",
            vllm_version="0.19.0", gpu_memory_utilization=0.9)
    f = check_server_on_gpu(s, RTX3090, 4).servers[0]
    attention_only = f.kv_cache_gib * 2**30 / f.kv_bytes_per_token
    assert f.kv_cache_tokens == pytest.approx(attention_only / 4, rel=0.01)
    assert f.kv_cache_tokens == pytest.approx(114_464, rel=0.03)  # logged
    # the concurrency is the attention layers' (each request: its blocks in the attention group, a page of state)
    assert f.max_concurrency == pytest.approx(attention_only / 32768, rel=0.01)
    # before the hybrid allocator (V1 < 0.9.1) each layer had its own cache: not divided
    old = check_server_on_gpu(s.model_copy(update={"vllm_version": "0.9.0"}), RTX3090, 4).servers[0]
    assert old.kv_cache_tokens == pytest.approx(old.kv_cache_gib * 2**30 / old.kv_bytes_per_token, rel=0.01)


# ---------------------------------------------------------------- inputs as users have them

def test_cli_visible_memory_and_custom_card_name():
    _, d = cli("--model", LLAMA8, "--gpu-visible-gib", "79.25", "--compute-capability", "8.0",
                  "--gpu-name", "A100-SXM4-80GB", "--max-model-len", "8192", "--vllm-version", "0.19", "--json")
    s = d["servers"][0]
    assert s["budget_gib"] == pytest.approx(0.9 * 79.25, abs=0.01) and s["max_num_batched_tokens"] == 2048
    assert s["inputs"]["max_num_seqs"] == 256 and s["inputs"]["gpu"] == "A100-SXM4-80GB"
    _, d = cli("--model", LLAMA8, "--gpu-visible-gib", "79.25", "--compute-capability", "9.0",
                  "--max-model-len", "8192", "--json")
    assert d["servers"][0]["max_num_batched_tokens"] == 8192
    assert "scheduler-defaults-assumed" in {f["code"] for f in d["findings"]}
    # the catalogue card with the total CUDA reported on that machine
    _, d = cli("--model", LLAMA8, "--gpu", "H100", "--gpu-visible-gib", "79.19", "--json",
                  "--gpu-memory-utilization", "0.95", "--max-model-len", "8192")
    assert d["servers"][0]["budget_gib"] == pytest.approx(0.95 * 79.19, abs=0.01)


def test_cli_tensor_parallel_implies_the_gpus_and_batched_tokens_flag():
    code, d = cli("--model", "meta-llama/Llama-3.3-70B-Instruct", "--gpu", "H100", "--tensor-parallel-size", "2",
                  "--max-model-len", "8192", "--max-num-batched-tokens", "4096", "--json")
    assert code == 0 and "tp-exceeds-node" not in {f["code"] for s in d["servers"] for f in s["findings"]}
    assert d["servers"][0]["max_num_batched_tokens"] == 4096 and len(d["gpus"]) == 2
    code, d = cli("--model", "meta-llama/Llama-3.3-70B-Instruct", "--gpu", "H100", "--tensor-parallel-size", "2",
                  "--gpus-on-node", "1", "--json")
    assert code == 1 and "tp-exceeds-node" in {f["code"] for s in d["servers"] for f in s["findings"]}


def test_cli_json_echoes_the_resolved_inputs():
    _, d = cli("--model", "Qwen/Qwen2.5-7B-Instruct", "--gpu", "T4", "--json")
    inputs = d["servers"][0]["inputs"]
    for key in ("vllm_version", "engine", "gpu_visible_gib", "gpu_memory_utilization", "dtype", "dtype_reason",
                "weights_source", "max_model_len", "max_num_batched_tokens", "max_num_seqs", "cuda_graphs"):
        assert key in inputs, key
    assert inputs["vllm_version"] == "0.32.0" and inputs["gpu_memory_utilization"] == 0.92
    assert inputs["dtype"] == "float16" and "falls back" in inputs["dtype_reason"]


def test_cli_bad_inputs_are_named():
    r = CliRunner().invoke(app, ["fit-check", "--model", LLAMA8, "--gpu", "H100", "--vllm-version", "latest"])
    assert isinstance(r.exception, ProfileError) and "--vllm-version" in str(r.exception)
    r = CliRunner().invoke(app, ["fit-check", "--model", LLAMA8, "--compute-capability", "8.6"])
    assert isinstance(r.exception, ProfileError) and "--gpu-visible-gib" in str(r.exception)


def test_profile_vllm_version_picks_the_rules(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("name: v\nvllm_version: '0.6.3'\nservers:\n  s: {model: meta-llama/Llama-3.1-8B-Instruct, "
                 "dtype: float16, max_model_len: 29000, gpu_memory_utilization: 0.9}\n"
                 "jobs:\n  - {name: j, gpu: RTX-3090, nodes: [s]}\n")
    code, d = cli("--profile", str(p), "--json")
    assert code == 1 and d["servers"][0]["inputs"]["engine"] == "V0"
    p.write_text(p.read_text().replace("'0.6.3'", "'0.19'"))
    code, d = cli("--profile", str(p), "--json")
    assert code == 0 and d["servers"][0]["inputs"]["engine"] == "V1"
    p.write_text(p.read_text().replace("'0.19'", "'soon'"))
    r = CliRunner().invoke(app, ["fit-check", "--profile", str(p)])
    assert isinstance(r.exception, ProfileError) and "vllm_version" in str(r.exception)


def test_custom_gpu_needs_some_memory():
    with pytest.raises(ValueError):
        custom_gpu(None, "8.6")


def test_mxfp4_backend_by_gpu_and_version():
    """vLLM's get_mxfp4_backend: Marlin before Hopper and on Hopper before triton_kernels shipped (0.11),
    FlashInfer on Blackwell."""
    assert mxfp4_moe_backend("0.19", (8, 0)) == "marlin"
    assert mxfp4_moe_backend("0.10.1", (9, 0)) == "marlin"
    assert mxfp4_moe_backend("0.11.0", (9, 0)) == "triton"
    assert mxfp4_moe_backend("0.19", (10, 0)) == "flashinfer"


def test_mxfp4_expert_bytes_from_the_kernel_layouts():
    """gpt-oss experts (hidden 2880, intermediate 2880) per kernel: Marlin pads to 2944 x 3072, Triton keeps
    2880 but holds the scales twice (loaded + swizzled, rows padded to 256), FlashInfer pads both to 3072."""
    assert mxfp4_expert_bytes(2880, 2880, 1, "marlin") == 3 * 2944 * 3072 // 2 + 3 * 2944 * 96 + 2 * (2 * 2944 + 3072)
    assert mxfp4_expert_bytes(2880, 2880, 1, "triton") == (
        3 * 2880 * 2880 // 2 + 3 * 2880 * 90 + (5888 + 3072) * 90 + 4 * (2 * 2880 + 2880))
    assert mxfp4_expert_bytes(2880, 2880, 1, "flashinfer") == 3 * 3072 * 3072 // 2 + 3 * 3072 * 96 + 4 * 3 * 3072
    assert mxfp4_expert_bytes(2880, 2880, 4, "marlin") == 3 * 768 * 3072 // 2 + 3 * 768 * 96 + 2 * (2 * 768 + 3072)


def test_gpt_oss_weights_follow_the_mxfp4_kernel():
    """Logged 'Model loading took': gpt-oss-120b 64.38 GiB (H100, ~0.11, Triton), 65.97 (H100, 0.10.1, Marlin);
    gpt-oss-20b 13.47 (H100, ~0.11), 13.72 (A100, 0.19, Marlin)."""
    def w(model: str, gpu: str, version: str) -> float:
        s = ServerInput(name="s", model=get_model(model), vllm_version=version)
        return check_server_on_gpu(s, get_gpu(gpu)).servers[0].weights_gib

    assert w("openai/gpt-oss-120b", "h100", "0.11.0") == pytest.approx(64.38, rel=0.01)
    assert w("openai/gpt-oss-120b", "h100", "0.10.1") == pytest.approx(65.97, rel=0.01)
    assert w("openai/gpt-oss-20b", "h100", "0.11.0") == pytest.approx(13.47, rel=0.01)
    assert w("openai/gpt-oss-20b", "a100-80gb", "0.19") == pytest.approx(13.72, rel=0.01)


NEMOTRON_H = {
    "architectures": ["NemotronHForCausalLM"], "model_type": "nemotron_h", "hidden_size": 4480,
    "intermediate_size": 15680, "num_hidden_layers": 56, "num_attention_heads": 40, "num_key_value_heads": 8,
    "head_dim": 128, "max_position_embeddings": 131072, "vocab_size": 131072, "torch_dtype": "bfloat16",
    "hybrid_override_pattern": "M-M-M-MM-M-M-M*-M-M-M*-M-M-M-M*-M-M-M-M*-M-MM-M-M-M-M-M-",
    "mamba_num_heads": 128, "mamba_head_dim": 80, "n_groups": 8, "ssm_state_size": 128, "conv_kernel": 4,
}


def test_nemotron_h_layer_mix_parameters_and_kv_layers():
    """hybrid_override_pattern: 27 Mamba2, 4 attention, 25 MLP layers; 8.888B parameters (16.5557 GiB logged in
    bf16, case 3012); KV only on the 4 attention layers."""
    from biofleet.catalog.models import hybrid_layer_mix

    assert hybrid_layer_mix(NEMOTRON_H) == {"mamba": 27, "attention": 4, "mlp": 25, "moe": 0}
    spec = model_from_config(NEMOTRON_H, "nvidia/NVIDIA-Nemotron-Nano-9B-v2")
    assert spec.params_b * 1e9 * 2 / 2**30 == pytest.approx(16.5557, rel=0.002)
    assert spec.kv_layers == 4 and spec.mamba is not None and spec.mamba.layers == 27
    with pytest.raises(ValueError, match="not modelled"):
        hybrid_layer_mix({**NEMOTRON_H, "hybrid_override_pattern": "M*X"})


def test_nemotron_h_layer_kinds_as_a_list():
    """Nemotron-3 configs written by transformers 5 (NVIDIA-Nemotron-3-Ultra, -3.5-Lightning) give the layer
    kinds as ``layers_block_type`` names and may leave out num_hidden_layers; read as a plain 52-layer MoE
    model the 30B-A3B shape came out at 102B."""
    from biofleet.catalog.models import hybrid_layer_mix

    kinds = {"M": "mamba", "*": "attention", "-": "mlp", "E": "moe"}
    listed = {k: v for k, v in NEMOTRON_H.items() if k not in ("hybrid_override_pattern", "num_hidden_layers")}
    listed["layers_block_type"] = [kinds[c] for c in NEMOTRON_H["hybrid_override_pattern"]]
    assert hybrid_layer_mix(listed) == hybrid_layer_mix(NEMOTRON_H)
    a, b = model_from_config(listed, "listed"), model_from_config(NEMOTRON_H, "pattern")
    assert (a.num_layers, a.kv_layers, a.params_b, a.mamba) == (b.num_layers, b.kv_layers, b.params_b, b.mamba)
    with pytest.raises(ValueError, match="not modelled"):
        hybrid_layer_mix({**listed, "layers_block_type": ["mamba", "conv"]})


def test_mamba2_state_and_v0_cache_size():
    """Case 3012's V0 MambaCacheManager: 256 sequences x 27 layers; conv state 0.4746 GiB (bf16), SSM state
    33.75 GiB in float32 (16.875 in bf16)."""
    from biofleet.catalog.vllm_rules import mamba2_state_bytes, v0_mamba_batch

    assert v0_mamba_batch(256, False) == 256 and v0_mamba_batch(3, False) == 4 and v0_mamba_batch(3, True) == 3
    assert v0_mamba_batch(100, False) == 104
    conv = mamba2_state_bytes(128, 80, 8, 128, 4, 1, 2, 0)
    ssm32 = mamba2_state_bytes(128, 80, 8, 128, 4, 1, 0, 4)
    assert conv * 27 * 256 / 2**30 == pytest.approx(0.4746, abs=1e-4)
    assert ssm32 * 27 * 256 / 2**30 == pytest.approx(33.75)
    assert mamba2_state_bytes(128, 80, 8, 128, 4, 2, 2, 4) * 2 == conv + ssm32  # heads and groups split over TP


def test_mamba_ssm_dtype_defaults_by_version():
    """auto = the model dtype; Nemotron-H from PR #39032 (0.20): the config's value, else float32."""
    from biofleet.catalog.vllm_rules import mamba_ssm_dtype

    assert mamba_ssm_dtype("auto", "bfloat16", "0.10.1", "nemotron_h") == "bfloat16"
    assert mamba_ssm_dtype("float32", "bfloat16", "0.10.1", "nemotron_h") == "float32"
    assert mamba_ssm_dtype("auto", "bfloat16", "0.20", "nemotron_h") == "float32"
    assert mamba_ssm_dtype("auto", "bfloat16", "0.20", "nemotron_h", "float16") == "float16"
    assert mamba_ssm_dtype("auto", "bfloat16", "0.20", "granitemoehybrid") == "bfloat16"
    # between the two (0.13-0.19, PR #29978): the config's value, float16 without one (source archives on PyPI)
    assert mamba_ssm_dtype("auto", "bfloat16", "0.13", "nemotron_h", "float32") == "float32"
    assert mamba_ssm_dtype("auto", "bfloat16", "0.19", "nemotron_h") == "float16"
    # Qwen3.5 / 3.6 read their text config's mamba_ssm_dtype from 0.17 (Qwen3_5ForConditionalGenerationConfig)
    assert mamba_ssm_dtype("auto", "bfloat16", "0.17", "qwen3_5_moe", "float32") == "float32"
    assert mamba_ssm_dtype("auto", "bfloat16", "0.16", "qwen3_5", "float32") == "bfloat16"


def test_nemotron_h_state_decides_start_on_l40s(tmp_path: Path):
    """Case 3012 (L40S, 0.10.1, V0): with a float32 SSM state the 256-sequence Mamba cache (34.2 GiB) leaves no
    KV memory; with the bf16 default it starts. V1 (0.11) keeps the state per request instead."""
    d = tmp_path / "nemotron"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(NEMOTRON_H))
    spec = get_model(str(d))

    def fit_of(version: str, ssm: str):
        s = ServerInput(name="s", model=spec, vllm_version=version, mamba_ssm_cache_dtype=ssm)
        return check_server_on_gpu(s, get_gpu("l40s")).servers[0]

    f32, bf16, v1 = fit_of("0.10.1", "float32"), fit_of("0.10.1", "auto"), fit_of("0.11", "auto")
    assert not f32.ok and any(f.code == "no-kv-memory" for f in f32.findings)
    assert f32.overhead_gib - bf16.overhead_gib == pytest.approx(16.875, abs=0.01)
    assert bf16.ok and bf16.inputs["engine"].startswith("V0")
    assert v1.inputs["engine"] == "V1" and v1.kv_cache_gib > 20
    with pytest.raises(ValueError, match="mamba_ssm_cache_dtype"):
        ServerInput(name="s", model=spec, mamba_ssm_cache_dtype="int8")


def test_profile_mamba_ssm_cache_dtype_reaches_the_check_and_the_command(tmp_path: Path):
    """A profile's mamba_ssm_cache_dtype is what the fit-check sizes the state with and what vLLM is given."""
    d = tmp_path / "nemotron"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(NEMOTRON_H))
    p = tmp_path / "p.yaml"
    p.write_text(f"name: m\nvllm_version: '0.10.1'\nservers:\n  s: {{model: {d}, mamba_ssm_cache_dtype: float32}}\n"
                 "jobs:\n  - {name: j, gpu: L40S, nodes: [s]}\n")
    code, rep = cli("--profile", str(p), "--json")
    assert code == 1 and any(f["code"] == "no-kv-memory" for f in rep["servers"][0]["findings"])
    scripts = render_fleet(load_profile(str(p)), "/tmp/fleet")
    assert "--mamba-ssm-cache-dtype float32" in " ".join(scripts.values())
    p.write_text(p.read_text().replace("float32", "bfloat16"))
    assert cli("--profile", str(p), "--json")[0] == 0
    p.write_text(p.read_text().replace("bfloat16", "int8"))
    r = CliRunner().invoke(app, ["fit-check", "--profile", str(p)])
    assert isinstance(r.exception, ProfileError) and "mamba_ssm_cache_dtype" in str(r.exception)


def test_rope_scaling_override_stretches_the_accepted_length(tmp_path: Path):
    """Qwen's model cards serve Qwen3 at 131,072 tokens with YaRN x4 passed to vLLM (--rope-scaling, or
    --hf-overrides on newer builds): the fit-check must accept that length, not call it beyond the context."""
    yarn = '{"rope_type":"yarn","factor":4.0,"original_max_position_embeddings":32768}'
    base = ("--model", "Qwen/Qwen3-8B", "--gpu", "H100-80GB", "--max-model-len", "131072", "--json")
    code, plain = cli(*base)
    assert code == 1 and any(f["code"] == "max-len-exceeds-model" for f in plain["servers"][0]["findings"])
    code, stretched = cli(*base, "--rope-scaling", yarn)
    assert code == 0, stretched["servers"][0]["findings"]
    for bad in ("yarn x4", "[" * 50_000 + "]" * 50_000, '{"factor": "' + "4" * 5000 + '"}'):
        r = CliRunner().invoke(app, ["fit-check", *base, "--rope-scaling", bad])
        assert isinstance(r.exception, ProfileError) and "--rope-scaling" in str(r.exception), bad[:20]
    # in a profile, the same flag in extra_args (or --hf-overrides with a rope_scaling key) is read
    p = tmp_path / "p.yaml"
    for extra in (f"[--rope-scaling, '{yarn}']", f"""['--hf-overrides={{"rope_scaling": {yarn}}}']"""):
        p.write_text("name: y\nservers:\n  s: {model: Qwen/Qwen3-8B, max_model_len: 131072, extra_args: "
                     f"{extra}}}\njobs:\n  - {{name: j, gpu: H100-80GB, nodes: [s]}}\n")
        code, rep = cli("--profile", str(p), "--json")
        assert code == 0, (extra, rep["servers"][0]["findings"])


def test_an_unreadable_model_config_is_blamed_on_model_not_gpu(tmp_path: Path):
    """A config.json the fit-check cannot read (here a layer kind it does not model) is an error about --model."""
    d = tmp_path / "odd"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({**NEMOTRON_H, "hybrid_override_pattern": "M*X"}))
    r = CliRunner().invoke(app, ["fit-check", "--model", str(d), "--gpu", "L40S"])
    assert isinstance(r.exception, ProfileError)
    assert r.exception.issues[0].path == "--model" and "not modelled" in str(r.exception)


@pytest.mark.parametrize("argv,named", [
    (["--gpus-on-node", "99999999999999999999"], "--gpus-on-node"),  # was a MemoryError: a list of that many GPUs
    (["--tensor-parallel-size", "99999999999999999999"], "--tensor-parallel-size"),  # was an OverflowError
    (["--gpu-visible-gib", "inf"], "--gpu"),  # was 'cannot convert float NaN to integer'
    (["--gpu-visible-gib", "nan"], "--gpu"),
    (["--gpu-free-gib", "1e9"], "--gpu-free-gib"),
    (["--max-num-seqs", "99999999999999"], "--max-num-seqs"),
    (["--max-num-batched-tokens", "99999999999999"], "--max-num-batched-tokens"),
    (["--max-model-len", "99999999999999"], "--max-model-len"),
])
def test_one_server_numbers_are_bounded(argv: list[str], named: str):
    """Every number of the one-server form is bounded (found by fuzzing it: 3,000 random command lines): past
    what any GPU, node or vLLM setting has, it is a usage error naming the option (exit 2), not a traceback."""
    r = CliRunner().invoke(app, ["fit-check", "--model", LLAMA8, "--gpu", "L4", *argv])
    code = r.exception.exit_code if isinstance(r.exception, BiofleetError) else r.exit_code  # as main() exits
    said = r.output + str(r.exception)
    assert code == 2 and said.count("\n") < 8 and "errors.pydantic.dev" not in said, (code, said)
    assert named in said


_FUZZ_GPUS = ("T4", "L4", "A100-80GB", "H100", "V100", "RTX 4090", "H200", "A10G", "GB10",
              "NVIDIA A100 80GB PCIe MIG 3g.40gb")
_FUZZ_VERSIONS = ("0.2.7", "0.4.1", "0.5.4", "0.6.3", "0.7.3", "0.8.3", "0.9.2", "0.10.2", "0.11.0", "0.14", "0.19.1",
                  "0.23.0", None)
_FUZZ_FLAGS: tuple[tuple[str, ...], ...] = (
    (), ("--enforce-eager",), ("--tensor-parallel-size", "2"), ("--kv-cache-dtype", "fp8"), ("--max-model-len", "auto"),
    ("--quantization", "fp8"), ("--dtype", "float32"), ("--pipeline-parallel-size", "2"), ("--enable-lora",),
    ("--language-model-only",), ("--max-model-len", "1"), ("--max-num-seqs", "1", "--max-num-batched-tokens", "16"),
    ("--gpu-free-gib", "3"), ("--cpu-offload-gb", "8"), ("--env", "VLLM_USE_V1=0"), ("--quantization", "awq"),
    ("--quantization", "bitsandbytes"), ("--kind", "embed"), ("--gpu-memory-utilization", "0.3"),
    ("--limit-mm-per-prompt", '{"image": 0}'), ("--max-model-len", "1000000"),
    ("--rope-scaling", '{"rope_type":"yarn","factor":4.0,"original_max_position_embeddings":32768}'),
    ("--tensor-parallel-size", "8", "--gpus-on-node", "8"), ("--mamba-ssm-cache-dtype", "float32"))


def test_random_one_server_command_lines_end_in_a_verdict_or_a_clear_error(tmp_path: Path):
    """Any mix of a model (every config.json in tests/data, and catalogue entries), a card, a release and the flags
    users combine ends in a verdict (exit 0 / 1, valid JSON, a plan passed only with a KV cache) or in a
    BiofleetError: never a traceback. 5,500 such command lines ran clean in session 25; this keeps 400 of them."""
    import random

    from biofleet.catalog.models import MODELS

    rng = random.Random(25)
    models = []
    for f in sorted((Path(__file__).parent / "data" / "model_configs").glob("*.json")):
        (tmp_path / f.stem).mkdir()
        (tmp_path / f.stem / "config.json").write_text(f.read_text())
        models.append(str(tmp_path / f.stem))
    models += rng.sample(sorted(MODELS), 40)
    runner, verdicts = CliRunner(), 0
    for _ in range(400):
        flags = [*rng.choice(_FUZZ_FLAGS), *(rng.choice(_FUZZ_FLAGS) if rng.random() < 0.4 else ())]
        version = rng.choice(_FUZZ_VERSIONS)
        argv = ["fit-check", "--model", rng.choice(models), "--gpu", rng.choice(_FUZZ_GPUS), "--json", *flags,
                *(["--vllm-version", version] if version else [])]
        r = runner.invoke(app, argv)
        if isinstance(r.exception, BiofleetError):
            continue
        assert r.exception is None or isinstance(r.exception, SystemExit), (argv, r.exception)
        assert r.exit_code in (0, 1), (argv, r.output)
        out = json.loads(r.stdout)
        verdicts += 1
        for s in out["servers"]:
            if s["ok"] and s["engine"] == "vllm":
                assert s["kv_cache_gib"] > 0 and s["weights_gib"] > 0, (argv, s)
    assert verdicts >= 300  # most draws are plans, not refusals of the inputs


def test_lora_buffers_are_counted_with_the_weights(tmp_path: Path):
    """--enable-lora: vLLM allocates, while the model loads, max_loras A (rank x input) and B (output x rank) matrices
    per slice of every linear layer (BaseLinearLayerWithLoRA.create_lora_weights). Qwen2.5-3B at rank 64: 36 layers x
    (q 2048+2048, k 2048+256, v 2048+256, o 2048+2048, gate / up / down 2048+11008 each) = 36 x 51,968 x 64 x 2 B =
    0.223 GiB: exactly the step between two Unsloth runs of its 4-bit copy whose ranks the logs do not state
    (held-out 11: 2.216 and 2.439 GiB loaded), i.e. 64 ranks apart."""
    from biofleet.fitcheck import lora_gib, lora_override

    s = srv("Qwen/Qwen2.5-3B-Instruct", enable_lora=True, max_lora_rank=64)
    assert lora_gib(s, "bfloat16") == pytest.approx(36 * 51_968 * 64 * 2 / 2**30, rel=1e-9)
    assert lora_gib(s.model_copy(update={"max_lora_rank": 128}), "bfloat16") == pytest.approx(0.4461, abs=1e-4)
    assert lora_gib(s.model_copy(update={"max_loras": 4}), "bfloat16") == pytest.approx(4 * 0.2230, abs=1e-3)
    assert lora_gib(s.model_copy(update={"enable_lora": False}), "bfloat16") == 0
    # TP 2: a column-parallel layer's output and a row-parallel layer's input are split, the rest is not
    tp2 = lora_gib(s.model_copy(update={"tensor_parallel_size": 2}), "bfloat16")
    assert tp2 == pytest.approx(36 * (51_968 - (2048 + 256 + 256 + 2048 + 11008 * 3) / 2) * 64 * 2 / 2**30, rel=1e-9)
    # the one-server form and a profile's extra_args say the same, and the weights grow by exactly that much
    _, base = cli("--model", "Qwen/Qwen3-4B", "--gpu", "RTX-3090", "--vllm-version", "0.11.0", "--json")
    _, lora = cli("--model", "Qwen/Qwen3-4B", "--gpu", "RTX-3090", "--vllm-version", "0.11.0", "--enable-lora",
                  "--max-lora-rank", "32", "--json")
    b, w = base["servers"][0], lora["servers"][0]
    assert w["inputs"]["lora"] == {"max_loras": 1, "max_lora_rank": 32, "gib_per_gpu": 0.123}
    assert w["weights_gib"] == pytest.approx(b["weights_gib"] + 0.123, abs=0.011)  # 19114 logged 7.73 GiB
    assert w["kv_cache_gib"] < b["kv_cache_gib"] and "lora-buffers" in {f["code"] for f in w["findings"]}
    body = ("name: l\nvllm_version: '0.11.0'\nservers:\n  s: {{model: Qwen/Qwen3-4B{extra}}}\n"
            "jobs:\n  - {{name: j, gpu: RTX-3090, nodes: [s]}}\n")
    (_, p0), (_, p1) = _profile_without_and_with(tmp_path, body,
                                                 ", extra_args: ['--enable-lora', '--max-lora-rank=32']")
    assert p1["servers"][0]["weights_gib"] - p0["servers"][0]["weights_gib"] == pytest.approx(0.123, abs=0.011)
    assert lora_override(["--enable-lora", "--max-loras", "4", "--max-lora-rank", "9999"]) == {
        "enable_lora": True, "max_loras": 4}  # a rank past 1024 is no setting: vLLM's default stands
    assert lora_override(["--max-lora-rank", "8"]) == {"enable_lora": False, "max_lora_rank": 8}
    # a mixture of experts: the attention layers' buffers only, and a warning says so
    moe = fit("Qwen/Qwen3-30B-A3B", enable_lora=True).servers[0]
    assert "lora-experts-not-counted" in {f.code for f in moe.findings}


def test_unified_memory_gpus_are_warned_that_the_os_decides_the_kv_cache():
    # vLLM's MemorySnapshot on integrated GPUs reads the OS's available memory from 0.12 (cudaMemGetInfo before):
    # case 18201, a DGX Spark at 0.36, logged 27.65 GiB of KV where the fit-check gives 3.7
    spark = get_gpu("GB10")
    assert spark.unified_memory and not spark.nvlink and not H100.unified_memory
    new = fit("Qwen/Qwen3-8B", gpu=spark, vllm_version="0.25.2")
    old = fit("Qwen/Qwen3-8B", gpu=spark, vllm_version="0.11.0")
    msgs = [next(f.message for f in r.all_findings() if f.code == "unified-memory") for r in (new, old)]
    assert "psutil" in msgs[0] and "page cache" in msgs[1]
    assert "unified-memory" not in fit("Qwen/Qwen3-8B", vllm_version="0.25.2").codes()


def test_vllm_0_23_on_an_h200_matches_the_fit_check():
    # scripts/device/vllm_bundle.sh + vllm_startup.py: vLLM 0.23.0 itself on an H200 (torch 2.11, CUDA 13), Qwen3-8B
    # with dummy weights, 8,192 batched tokens, default utilisation 0.92, a cold compile cache (the log saves the AOT
    # compiled function), once on the default model runner V2 and once with VLLM_USE_V2_MODEL_RUNNER=0
    from biofleet.fitcheck import cold_compile_bytes, first_start_extra_gib, resolve

    runs = {r["name"]: r for r in map(json.loads, (Path(__file__).parent / "data" / "device" /
                                                  "vllm023_h200.jsonl").read_text().splitlines())}
    h200 = get_gpu("H200")
    for name, env, seqs in (("default", {}, 256), ("v1-runner-64", {"VLLM_USE_V2_MODEL_RUNNER": "0"}, 64)):
        log = runs[name]
        assert log["started"] and log["version"] == "0.23.0"
        s = srv("Qwen/Qwen3-8B", vllm_version="0.23.0", max_num_batched_tokens=8192, max_num_seqs=seqs, env=env)
        fit = check_server_on_gpu(s, h200).servers[0]
        assert fit.inputs["model_runner"] == ("V2" if name == "default" else "V1")
        assert fit.weights_gib == pytest.approx(float(log["weights_gib"]), abs=0.05)
        assert fit.non_torch_gib == pytest.approx(float(log["non_torch_gib"]), abs=0.05)
        # V2 before 0.29 keeps the graphs out of the budget (available = budget - weights - peak - non-torch, the
        # captured 0.60 GiB not taken); V1 takes its estimate (0.15 GiB)
        assert fit.graphs_in_budget == (name != "default")
        budget = 0.92 * float(log["free_on_device"].split("/")[1])
        graphs = float(log.get("graph_estimate_gib", 0.0))
        assert float(log["available_kv_gib"]) == pytest.approx(budget - float(log["total_non_kv_gib"]) - graphs, abs=0.02)
        # the warm-start figures are within 0.5 % of the cold log; the cold start's peak is the compile copy
        assert fit.kv_cache_gib == pytest.approx(float(log["available_kv_gib"]), rel=0.005)
        assert fit.kv_cache_tokens == pytest.approx(int(log["kv_tokens"]), rel=0.005)
        cold = cold_compile_bytes(s, 8192) / 2**30
        assert cold == pytest.approx(float(log["torch_peak_gib"]), abs=0.05)
        extra = first_start_extra_gib(s, resolve(s, h200), fit.activation_gib)
        assert fit.inputs["first_start_extra_gib"] == pytest.approx(extra, abs=0.01) and extra > 0.3
        # (0.01 GiB off on V2; 0.16 on V1, whose graph estimate the fit-check puts at 0.32 GiB where vLLM took 0.15)
        assert fit.kv_cache_gib - extra == pytest.approx(float(log["available_kv_gib"]), abs=0.2)
    # eager starts compile nothing
    eager = srv("Qwen/Qwen3-8B", vllm_version="0.23.0", enforce_eager=True)
    assert first_start_extra_gib(eager, resolve(eager, h200), 0.0) == 0.0
    assert check_server_on_gpu(eager, h200).servers[0].inputs["first_start_extra_gib"] is None


def test_a_plan_only_a_warm_compile_cache_fits_is_warned():
    # case 1065 (tuning): Qwen2.5-7B at 0.65 of an RTX 3090, 0.17.1, 8,192 tokens: 0.49 GiB of KV logged, just over
    # one request; a first start, profiling a 1.02 GiB matrix more while it compiles, would fall short
    fit = check_server_on_gpu(srv("Qwen/Qwen2.5-7B-Instruct", vllm_version="0.17.1", max_model_len=8192,
                                  gpu_memory_utilization=0.65, dtype="bfloat16"), get_gpu("RTX-3090").model_copy(update={"visible_gib": 23.54})).servers[0]
    codes = {f.code: f for f in fit.findings}
    assert fit.ok and "first-start-kv-short" in codes and "~/.cache/vllm" in codes["first-start-kv-short"].message
    assert "first-start-kv-short" not in {f.code for f in check_server_on_gpu(
        srv("Qwen/Qwen2.5-7B-Instruct", vllm_version="0.16.0", max_model_len=8192, gpu_memory_utilization=0.65,
            dtype="bfloat16"), get_gpu("RTX-3090").model_copy(update={"visible_gib": 23.54})).servers[0].findings}
