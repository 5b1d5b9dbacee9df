"""GPU and model catalogues: lookups, derived flags, config.json parsing, error messages."""

from __future__ import annotations

import json

import pytest
from fake_hub import FakeHub

from biofleet.catalog.gpus import GPUS, UnknownGpuError, custom_gpu, get_gpu
from biofleet.catalog.models import (
    MODELS,
    ModelSpec,
    UnknownModelError,
    estimate_params_b,
    get_model,
    model_from_config,
    quantized_variant,
)
from biofleet.fitcheck import ServerInput, check_server_on_gpu


@pytest.mark.parametrize("alias,name", [("h100", "H100-80GB"), ("A100", "A100-40GB"), ("t4", "T4"),
                                        ("Tesla T4", "T4"), ("nvidia-l4", "L4"), ("a100-80gb", "A100-80GB")])
def test_gpu_aliases(alias, name):
    assert get_gpu(alias).name == name


@pytest.mark.parametrize("device_name,name,nvlink", [
    ("Tesla V100-SXM2-32GB", "V100-32GB", True), ("Tesla V100-PCIE-16GB", "V100", False),
    ("NVIDIA A100 80GB PCIe", "A100-80GB", False), ("NVIDIA A100-SXM4-80GB", "A100-80GB", True),
    ("NVIDIA A100-PCIE-40GB", "A100-40GB", False), ("NVIDIA H100 80GB HBM3", "H100-80GB", True),
    ("NVIDIA H100 PCIe", "H100-PCIe", False), ("Tesla P100-PCIE-16GB", "P100", False),
    ("NVIDIA GeForce RTX 3090", "RTX-3090", False), ("NVIDIA RTX A6000", "RTX-A6000", False),
    # session 25: consumer, laptop and workstation cards users' logs name
    ("NVIDIA GeForce RTX 4070 Laptop GPU", "RTX-4070-Laptop", False), ("NVIDIA GeForce RTX 3070", "RTX-3070", False),
    ("NVIDIA GeForce RTX 2080 SUPER", "RTX-2080S", False), ("NVIDIA RTX 5000 Ada Generation", "RTX-5000-Ada", False),
    ("NVIDIA GeForce RTX 2070 with Max-Q Design", "RTX-2070", False), ("NVIDIA GeForce GTX 1080 Ti", "GTX-1080Ti", False),
])
def test_gpu_by_the_device_name_cuda_prints(device_name, name, nvlink):
    # what torch.cuda.get_device_name(), nvidia-smi and vLLM's logs print, pasted as --gpu
    g = get_gpu(device_name)
    assert (g.name, g.nvlink) == (name, nvlink)


def test_gpu_variant_words_that_change_the_card_are_kept():
    # an H100 NVL is a 94 GB card: it must not resolve to the 80 GB H100 by dropping "NVL"; a 4060 Ti
    # comes with 8 or 16 GB under one device name, so the bare name is refused rather than guessed
    assert get_gpu("NVIDIA H100 NVL").name == "H100-NVL" and get_gpu("NVIDIA H100 NVL").memory_gib == 94
    assert get_gpu("NVIDIA H20-3e").visible_gib > get_gpu("NVIDIA H20").visible_gib
    with pytest.raises(UnknownGpuError, match="RTX-4060Ti-16GB or RTX-4060Ti-8GB"):
        get_gpu("NVIDIA GeForce RTX 4060 Ti")
    assert get_gpu("rtx-4060-ti-16gb").memory_gib == 16 and get_gpu("RTX 4060 Ti 8GB").memory_gib == 8
    with pytest.raises(UnknownGpuError, match="RTX-5060Ti-16GB or RTX-5060Ti-8GB"):
        get_gpu("NVIDIA GeForce RTX 5060 Ti")
    # a laptop chip is not the desktop card of its number (a 4090 Laptop GPU is an AD103 with 16 GB)
    assert get_gpu("NVIDIA GeForce RTX 4090 Laptop GPU").memory_gib == 16 and get_gpu("RTX 4090").memory_gib == 24
    with pytest.raises(UnknownGpuError):
        get_gpu("NVIDIA GeForce RTX 4080 Laptop GPU")


def test_added_cards_carry_their_facts():
    # compute capability decides dtype and kernels; the SM count sizes the CUDA context
    assert get_gpu("NVIDIA A40").compute_capability == (8, 6) and get_gpu("NVIDIA L40").compute_capability == (8, 9)
    assert get_gpu("NVIDIA GeForce RTX 5090").compute_capability == (12, 0)
    assert get_gpu("Quadro RTX 8000").compute_capability == (7, 5) and not get_gpu("Quadro RTX 8000").supports_bf16
    assert get_gpu("NVIDIA H100 PCIe").sm_count == 114 and get_gpu("NVIDIA H100 PCIe").nvlink is False
    assert get_gpu("NVIDIA A800-SXM4-80GB").nvlink and get_gpu("NVIDIA A800 80GB PCIe").nvlink is False
    assert get_gpu("NVIDIA GeForce RTX 3090 Ti").name == "RTX-3090Ti" and get_gpu("NVIDIA H200 NVL").nvlink
    assert get_gpu("NVIDIA GeForce RTX 5070 Ti").compute_capability == (12, 0)
    for g in GPUS.values():
        assert g.visible_gib < g.memory_gib * 1.0 or g.name == "GB10", g.name


def test_gpu_flags():
    t4, l4, a100, p40 = get_gpu("T4"), get_gpu("L4"), get_gpu("A100-80GB"), get_gpu("P40")
    assert t4.visible_gib == pytest.approx(14.57) and t4.gres_type == "t4" and t4.price_per_hour == 0.35
    assert not t4.supports_bf16 and not t4.supports_flash_attn2 and t4.vllm_supported
    assert l4.supports_fp8 and l4.supports_bf16 and not a100.supports_fp8 and a100.supports_bf16
    assert not p40.vllm_supported
    assert all(g.visible_gib < g.memory_gib for g in GPUS.values())


def test_unknown_gpu_lists_known():
    with pytest.raises(UnknownGpuError) as ei:
        get_gpu("MI300X")
    assert isinstance(ei.value, KeyError)
    assert "unknown GPU 'MI300X'" in str(ei.value) and "T4" in str(ei.value) and "H100-80GB" in str(ei.value)
    assert "Name its memory size" not in str(ei.value)  # no guess at another card
    with pytest.raises(UnknownGpuError, match="Name its memory size: RTX-4060Ti-16GB"):
        get_gpu("NVIDIA GeForce RTX 4060 Ti")  # the card comes in 8 and 16 GB


def test_mig_instance_is_its_share_of_the_card(tmp_path):
    """A MIG instance as nvidia-smi names it: whole eighths of the parent's memory less ~0.45 % (`nvidia-smi mig
    -lgip` on an 80 GB card: 39.38 GiB for 3g.40gb; torch on an A100 80GB PCIe slice: 39.25), the parent's compute
    capability, no NVLink; a server on it gets no tensor parallelism."""
    from typer.testing import CliRunner

    from biofleet.cli.main import app

    g = get_gpu("NVIDIA A100 80GB PCIe MIG 3g.40gb")
    assert (g.name, g.mig, g.compute_capability, g.nvlink) == ("A100-80GB MIG 3g.40gb", "3g.40gb", (8, 0), False)
    assert 39.2 <= g.visible_gib <= 39.45 and g.gres_type == "a100_3g.40gb"
    assert get_gpu("a100-80gb-mig-7g.80gb").visible_gib == get_gpu("A100-80GB").visible_gib
    assert get_gpu("NVIDIA H100 80GB HBM3 MIG 1g.10gb").visible_gib == pytest.approx(9.85, abs=0.05)
    assert get_gpu("A100-40GB MIG 1g.5gb+me").visible_gib == pytest.approx(4.9, abs=0.05)
    for bad, said in (("Tesla T4 MIG 1g.2gb", "T4 has no MIG instances"), ("A100-40GB MIG 3g.99gb", "no MIG profile")):
        with pytest.raises(UnknownGpuError, match=said):
            get_gpu(bad)
    small = ServerInput(name="s", model=get_model("Qwen/Qwen2.5-7B-Instruct"), max_model_len=4096)
    assert check_server_on_gpu(small, g).ok  # 15 GiB of bf16 weights fit half an A100
    assert not check_server_on_gpu(small, get_gpu("A100-80GB MIG 1g.10gb")).ok  # not a tenth of it
    tp = check_server_on_gpu(small.model_copy(update={"tensor_parallel_size": 2}), g, gpus_on_node=7)
    assert "mig-no-tensor-parallel" in {f.code for s in tp.servers for f in s.findings} and not tp.ok
    # the one-server form and a profile name it the same way; the job asks SLURM for the instance's GRES type
    r = CliRunner().invoke(app, ["fit-check", "--model", "Qwen/Qwen2.5-7B-Instruct", "--max-model-len", "4096",
                                 "--gpu", "NVIDIA A100 80GB PCIe MIG 3g.40gb", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["servers"][0]["inputs"]["gpu"] == "A100-80GB MIG 3g.40gb"
    p = tmp_path / "mig.yaml"
    p.write_text("name: mig\ncluster: {workdir: " + str(tmp_path) + "/w}\nservers:\n"
                 "  s: {model: Qwen/Qwen2.5-7B-Instruct, max_model_len: 4096}\n"
                 "jobs:\n  - {name: j, gpu: a100-80gb-mig-3g.40gb, nodes: [s]}\n")
    r = CliRunner().invoke(app, ["render", "--profile", str(p), "--out", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    assert "--gres=gpu:a100_3g.40gb:1" in "".join(f.read_text() for f in (tmp_path / "r").iterdir() if f.is_file())


def test_custom_gpu():
    g = custom_gpu(48, "8.6", name="A6000")
    assert g.compute_capability == (8, 6) and g.visible_gib == pytest.approx(44.64) and g.supports_bf16
    assert custom_gpu(16, (7, 5)).compute_capability == (7, 5)
    with pytest.raises(ValueError):
        custom_gpu(16, "seven")


SEED_MODELS = [
    "Qwen/Qwen2.5-Coder-7B-Instruct", "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ", "Qwen/Qwen2.5-7B-Instruct",
    "Qwen/Qwen2.5-Math-7B-Instruct", "Qwen/Qwen2.5-Coder-1.5B-Instruct", "Qwen/Qwen2.5-Coder-14B-Instruct",
    "Qwen/Qwen2.5-Coder-32B-Instruct", "meta-llama/Llama-3.2-3B-Instruct", "meta-llama/Llama-3.1-8B-Instruct",
    "meta-llama/Llama-3.1-70B-Instruct", "meta-llama/Meta-Llama-3.1-70B-Instruct", "meta-llama/Llama-3.3-70B-Instruct",
    "meta-llama/Llama-Guard-3-8B", "meta-llama/Llama-Guard-3-1B", "mistralai/Mistral-7B-Instruct-v0.3",
    "mistralai/Mistral-7B-Instruct-v0.2", "microsoft/Phi-3.5-mini-instruct", "microsoft/Phi-3-mini-4k-instruct",
    "microsoft/Phi-3-mini-128k-instruct", "google/gemma-2b-it", "google/gemma-2-2b-it", "google/gemma-2-9b-it",
    "BioMistral/BioMistral-7B", "nvidia/Llama-3.1-Nemotron-8B-Orchestrator", "nvidia/Llama-3.1-Nemotron-Safety-8B-V3",
    "BAAI/bge-m3", "BAAI/bge-base-en-v1.5", "sentence-transformers/all-MiniLM-L6-v2",
    "deepseek-ai/deepseek-coder-33b-instruct", "codellama/CodeLlama-34b-Instruct-hf",
    "deepseek-ai/DeepSeek-Coder-V2-Lite-Instruct", "deepseek-ai/DeepSeek-Coder-V2-Instruct",
    "deepseek-ai/deepseek-math-7b-instruct", "bigcode/starcoder2-7b", "ibm-granite/granite-3.3-8b-instruct",
    "01-ai/Yi-1.5-9B-Chat", "m42-health/Llama3-Med42-8B", "microsoft/BioGPT-Large",
]


@pytest.mark.parametrize("ref", SEED_MODELS)
def test_seed_models_resolve(ref):
    m = get_model(ref)
    assert m.params_b > 0 and m.num_layers > 0 and m.source


def test_aliases_and_case():
    assert get_model("qwen/qwen2.5-coder-7b-instruct").id == "Qwen/Qwen2.5-Coder-7B-Instruct"
    assert get_model("biomistral").id == "BioMistral/BioMistral-7B"
    assert get_model("Qwen2.5-Math-7B-Instruct").id == "Qwen/Qwen2.5-Math-7B-Instruct"


def test_known_shapes_match_published_sizes():
    # parameter counts follow from the config shapes (catches a mistyped layer/width)
    for mid in ("meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen2.5-7B-Instruct", "mistralai/Mistral-7B-Instruct-v0.2",
                "google/gemma-2-9b-it", "microsoft/Phi-3.5-mini-instruct", "codellama/CodeLlama-34b-Instruct-hf"):
        m = MODELS[mid]
        cfg = {"hidden_size": m.hidden_size, "num_hidden_layers": m.num_layers,
               "num_attention_heads": m.num_attention_heads,
                   "num_key_value_heads": m.num_kv_heads, "head_dim": m.head_dim, "vocab_size": m.vocab_size,
                   "intermediate_size": m.intermediate_size, "model_type": m.model_type,
                   "tie_word_embeddings": m.tie_word_embeddings}
        assert estimate_params_b(cfg) == pytest.approx(m.params_b, rel=0.02), mid


def test_kv_shapes_from_calibration_notes():
    # per-token KV (fp16) quoted in vllm_memory_rules.md section 2
    def kib(mid: str) -> float:
        m = get_model(mid)
        assert m.num_kv_heads is not None and m.head_dim is not None
        return 2 * m.num_layers * m.num_kv_heads * m.head_dim * 2 / 1024
    assert kib("meta-llama/Llama-3.2-1B-Instruct") == 32
    assert kib("Qwen/Qwen2.5-32B-Instruct") == 256
    assert kib("meta-llama/Llama-3.1-70B-Instruct") == 320
    assert kib("microsoft/Phi-3.5-mini-instruct") == 384
    assert kib("google/gemma-2-2b-it") == 104
    assert kib("google/gemma-2-9b-it") == 336


def _vid(m: ModelSpec | None) -> str:
    assert m is not None
    return m.id


def test_quantized_variant():
    coder = get_model("Qwen/Qwen2.5-Coder-7B-Instruct")
    assert _vid(quantized_variant(coder, "awq")) == "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ"
    assert _vid(quantized_variant(coder, "awq_marlin")) == "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ"
    assert _vid(quantized_variant(coder, "gptq")) == "Qwen/Qwen2.5-Coder-7B-Instruct-GPTQ-Int4"
    bio = quantized_variant(get_model("BioMistral/BioMistral-7B"), "awq")
    assert _vid(bio).startswith("BioMistral/BioMistral-7B-AWQ")
    assert quantized_variant(get_model("Qwen/Qwen2.5-Math-7B-Instruct"), "awq") is None
    awq = get_model("Qwen/Qwen2.5-Coder-7B-Instruct-AWQ")
    assert awq.quantization == "awq" and awq.quant_bits == 4 and awq.native_dtype == "float16"
    assert quantized_variant(awq, "awq") is awq


def test_unknown_model_message_suggests():
    with pytest.raises(UnknownModelError) as ei:
        get_model("Qwen/Qwen2.5-Coder-7B-Instruc")
    msg = str(ei.value)
    assert isinstance(ei.value, KeyError)
    assert "'Qwen/Qwen2.5-Coder-7B-Instruc'" in msg and "Did you mean 'Qwen/Qwen2.5-Coder-7B-Instruct'" in msg
    assert "models:" in msg and "config.json" in msg


def test_extra_models_win(tmp_path):
    mine = model_from_config({"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                              "vocab_size": 1000, "model_type": "llama"}, "lab/tiny")
    assert get_model("lab/tiny", extra={"lab/tiny": mine}) is mine
    with pytest.raises(UnknownModelError):
        get_model("lab/tiny", cache_dir=tmp_path)


def _write(d, cfg, **extra_files):
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(cfg))
    for name, content in extra_files.items():
        (d / name).write_text(json.dumps(content))
    return d


def test_local_config_dir(tmp_path):
    cfg = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 3584,
           "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4, "intermediate_size": 18944,
           "vocab_size": 152064, "max_position_embeddings": 32768, "torch_dtype": "float16",
           "sliding_window": 131072, "use_sliding_window": False,
           "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128}}
    d = _write(tmp_path / "coder-awq", cfg)
    m = get_model(str(d))
    assert m.id == str(d) and m.num_kv_heads == 4 and m.head_dim == 128 and m.native_dtype == "float16"
    assert m.quantization == "awq" and m.quant_bits == 4 and m.quant_group_size == 128
    assert m.sliding_window is None and m.params_b == pytest.approx(7.6, rel=0.02)


def test_local_bert_and_gemma_configs(tmp_path):
    bert = model_from_config({"architectures": ["XLMRobertaModel"], "model_type": "xlm-roberta", "hidden_size": 1024,
                              "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096,
                              "vocab_size": 250002, "max_position_embeddings": 8194, "torch_dtype": "float32"}, "x")
    assert bert.encoder_only and bert.context_length == 8192 and bert.params_b == pytest.approx(0.568, rel=0.03)
    gemma = model_from_config({"model_type": "gemma2", "hidden_size": 2304, "num_hidden_layers": 26,
                               "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
                               "intermediate_size": 9216, "vocab_size": 256000, "tie_word_embeddings": True,
                               "attn_logit_softcapping": 50.0, "sliding_window": 4096, "dtype": "bfloat16"}, "g")
    assert gemma.head_dim == 256 and gemma.attn_softcapping and gemma.sliding_window == 4096
    assert gemma.params_b == pytest.approx(2.61, rel=0.03)


def test_local_gptq_sidecar_config(tmp_path):
    cfg = {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256}
    d = _write(tmp_path / "m", cfg, **{"quantize_config.json": {"bits": 4, "group_size": 128}})
    m = get_model(str(d))
    assert m.quantization == "gptq" and m.quant_bits == 4


def test_directory_without_config(tmp_path):
    with pytest.raises(UnknownModelError) as ei:
        get_model(str(tmp_path))
    assert "has no config.json" in str(ei.value)


def test_hub_cache_is_used_offline(tmp_path):
    cfg = {"model_type": "llama", "hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32,
           "num_key_value_heads": 8, "intermediate_size": 8192, "vocab_size": 128256}
    (tmp_path / "lab--small.json").write_text(json.dumps(cfg))
    m = get_model("lab/small", cache_dir=tmp_path)
    assert m.num_layers == 16 and m.id == "lab/small"


def test_hub_fetch_is_cached(tmp_path, monkeypatch):
    cfg = {"model_type": "llama", "hidden_size": 512, "num_hidden_layers": 4, "num_attention_heads": 8}
    with FakeHub({"lab/fetched": {"config.json": json.dumps(cfg).encode()}}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        m = get_model("lab/fetched", allow_network=True, cache_dir=tmp_path)
        assert m.hidden_size == 512 and m.quantization is None and hub.gets == ["config.json"]
        assert (tmp_path / "lab--fetched.json").is_file()
        get_model("lab/fetched", cache_dir=tmp_path)  # offline now, from the cache
        assert hub.gets == ["config.json"]


NVFP4_SIDE = {"producer": {"name": "modelopt", "version": "0.22.1"},
              "quantization": {"quant_algo": "NVFP4", "kv_cache_quant_algo": "FP8", "group_size": 16,
                               "exclude_modules": ["lm_head"]}}


def test_modelopt_side_file_is_read_as_vllm_reads_it(tmp_path):
    """ModelOpt <= 0.29 writes the quantisation to hf_quant_config.json beside a config.json without one
    (nvidia/DeepSeek-V3.1-NVFP4, the Nemotron-3 FP8 / NVFP4 releases); vLLM reads it, and an inline
    quantization_config wins over a stale side file."""
    cfg = {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256, "torch_dtype": "bfloat16"}
    m = get_model(str(_write(tmp_path / "nvfp4", cfg, **{"hf_quant_config.json": NVFP4_SIDE})))
    assert (m.quantization, m.quant_bits) == ("modelopt", 4.5)
    fp8 = {**NVFP4_SIDE, "quantization": {"quant_algo": "FP8"}}
    assert get_model(str(_write(tmp_path / "fp8", cfg, **{"hf_quant_config.json": fp8}))).quant_bits == 8
    inline = {**cfg, "quantization_config": {"quant_method": "fp8"}}
    m = get_model(str(_write(tmp_path / "inline", inline, **{"hf_quant_config.json": NVFP4_SIDE})))
    assert (m.quantization, m.quant_bits) == ("fp8", 8)
    assert get_model(str(_write(tmp_path / "plain", cfg))).quantization is None
    # a malformed side file is an error naming it, not a crash or a silent 16-bit guess
    for bad in ("{not json", "[1, 2]"):
        d = _write(tmp_path / "bad", cfg)
        (d / "hf_quant_config.json").write_text(bad)
        with pytest.raises(ValueError, match=r"hf_quant_config\.json: not"):
            get_model(str(d))


def test_modelopt_side_file_is_fetched_with_the_config(tmp_path, monkeypatch):
    cfg = {"model_type": "llama", "hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32,
           "num_key_value_heads": 8, "intermediate_size": 8192, "vocab_size": 128256, "torch_dtype": "bfloat16"}
    big = {**cfg, "padding": "x" * (5 << 20)}
    repos = {"nvidia/small-NVFP4": {"config.json": json.dumps(cfg).encode(),
                                    "hf_quant_config.json": json.dumps(NVFP4_SIDE).encode()},
             "lab/huge": {"config.json": json.dumps(big).encode()}}
    with FakeHub(repos) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        m = get_model("nvidia/small-NVFP4", allow_network=True, cache_dir=tmp_path)
        assert (m.quantization, m.quant_bits) == ("modelopt", 4.5)
        assert hub.gets == ["config.json", "hf_quant_config.json"]
        # offline from the cache, the side file's settings kept with the config
        assert get_model("nvidia/small-NVFP4", cache_dir=tmp_path).quant_bits == 4.5
        # a reply far beyond any config file is refused, not read whole or cached
        with pytest.raises(UnknownModelError, match="larger than"):
            get_model("lab/huge", allow_network=True, cache_dir=tmp_path)
        assert not (tmp_path / "lab--huge.json").exists()


def test_qwen1_intermediate_size_counts_both_projections():
    """Qwen-1 (model_type "qwen") configs give twice the width of each MLP matrix; vLLM's qwen.py builds
    QWenMLP with intermediate_size // 2. Qwen-7B's published shape: 7.72B parameters, 14.39 GiB in bf16."""
    shape = {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "vocab_size": 151936,
             "intermediate_size": 22016, "torch_dtype": "bfloat16", "tie_word_embeddings": False}
    qwen1 = model_from_config({**shape, "model_type": "qwen", "architectures": ["QWenLMHeadModel"]}, "q1")
    assert qwen1.intermediate_size == 11008
    assert qwen1.params_b == pytest.approx(7.72, abs=0.01)
    # the early key names (ffn_hidden_size) follow the same convention
    early = {k: v for k, v in shape.items() if k != "intermediate_size"}
    assert model_from_config({**early, "ffn_hidden_size": 22016, "model_type": "qwen"}, "q1e").intermediate_size == 11008
    # no other family halves it
    llama = model_from_config({**shape, "model_type": "llama"}, "l")
    assert llama.intermediate_size == 22016 and llama.params_b > 10


def test_rope_scaling_stretches_the_default_length_as_vllm_derives_it():
    """vLLM multiplies the positions by rope_scaling.factor (yarn: from original_max_position_embeddings),
    except for su/longrope/llama3. deepseek-coder-6.7b's config: 16,384 positions, linear x4."""
    shape = {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "vocab_size": 32256,
             "intermediate_size": 11008, "torch_dtype": "bfloat16", "model_type": "llama",
             "max_position_embeddings": 16384}
    coder = model_from_config({**shape, "rope_scaling": {"type": "linear", "factor": 4.0}}, "dc")
    assert coder.context_length == 65536 and coder.max_position_embeddings == 16384
    yarn = {"rope_type": "yarn", "factor": 40, "original_max_position_embeddings": 4096}
    assert model_from_config({**shape, "max_position_embeddings": 163840, "rope_scaling": yarn},
                             "y").context_length == 163840
    bad_base = {"rope_type": "yarn", "factor": 4, "original_max_position_embeddings": -5}
    assert model_from_config({**shape, "rope_scaling": bad_base}, "b").context_length == 16384
    for kept in ({"rope_type": "llama3", "factor": 8.0}, {"type": "mrope", "mrope_section": [16, 24, 24]},
                 {"type": "longrope", "factor": 32}, None,
                 # numbers that are no stretch: not finite, absurd, or a yarn base that is not a length
                 {"type": "linear", "factor": float("inf")}, {"type": "linear", "factor": float("nan")},
                 {"type": "linear", "factor": 1e9}, {"type": "linear", "factor": True}):
        assert model_from_config({**shape, "rope_scaling": kept}, "k").context_length == 16384, kept


# Published config.json fields (the keys each family's file really uses) and the parameter counts of
# the model cards: OPT-125m 125M, Phi-2 2.7B (2,779,683,840 in its safetensors), Falcon-7B 6.9B,
# GLM-4-9B 9.4B.
_OLD_FAMILY_CONFIGS = [
    ({"model_type": "opt", "architectures": ["OPTForCausalLM"], "hidden_size": 768, "ffn_dim": 3072,
      "num_hidden_layers": 12, "num_attention_heads": 12, "vocab_size": 50272, "max_position_embeddings": 2048,
      "torch_dtype": "float16"}, 0.125, 12),
    ({"model_type": "phi", "architectures": ["PhiForCausalLM"], "hidden_size": 2560, "intermediate_size": 10240,
      "num_hidden_layers": 32, "num_attention_heads": 32, "vocab_size": 51200, "max_position_embeddings": 2048,
      "tie_word_embeddings": False, "torch_dtype": "float16"}, 2.78, 32),
    ({"model_type": "falcon", "architectures": ["FalconForCausalLM"], "hidden_size": 4544, "num_hidden_layers": 32,
      "num_attention_heads": 71, "multi_query": True, "new_decoder_architecture": False, "vocab_size": 65024,
      "torch_dtype": "bfloat16"}, 6.92, 1),
    ({"model_type": "chatglm", "architectures": ["ChatGLMModel"], "hidden_size": 4096, "ffn_hidden_size": 13696,
      "num_layers": 40, "num_attention_heads": 32, "multi_query_group_num": 2, "kv_channels": 128,
      "padded_vocab_size": 151552, "seq_length": 131072, "tie_word_embeddings": False,
      "torch_dtype": "bfloat16"}, 9.40, 2),
]


@pytest.mark.parametrize("cfg,params_b,kv_heads", _OLD_FAMILY_CONFIGS,
                         ids=["opt-125m", "phi-2", "falcon-7b", "glm-4-9b"])
def test_config_families_with_plain_mlps_tied_embeddings_or_one_kv_head(cfg, params_b, kv_heads):
    # two-matrix MLPs (OPT, Phi-2, Falcon), lm_head tied by the config class's default (OPT, Falcon),
    # one K/V head for multi-query Falcon, GLM's own key names: each was off by 5-60 % before
    spec = model_from_config(cfg, "x/y")
    assert spec.params_b == pytest.approx(params_b, rel=0.02)
    assert spec.num_kv_heads == kv_heads


@pytest.mark.parametrize("name,id,params_b", [
    ("facebook/opt-125m", "facebook/opt-125m", 0.125), ("meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-7b-chat-hf", 6.74),
    ("lmsys/vicuna-7b-v1.5", "meta-llama/Llama-2-7b-chat-hf", 6.74), ("microsoft/phi-4", "microsoft/phi-4", 14.66),
    ("Qwen/QwQ-32B", "Qwen/QwQ-32B", 32.76), ("tiiuae/falcon-7b", "tiiuae/falcon-7b-instruct", 6.92),
    ("THUDM/glm-4-9b-chat", "THUDM/glm-4-9b-chat", 9.40), ("Qwen/Qwen3-0.6B", "Qwen/Qwen3-0.6B", 0.60),
    ("mistral-nemo", "mistralai/Mistral-Nemo-Instruct-2407", 12.25),
    ("deepseek-ai/DeepSeek-R1-Distill-Llama-8B", "deepseek-ai/DeepSeek-R1-Distill-Llama-8B", 8.03),
    # from the published config.json files kept in biofleet/catalog/configs.json, and aliases
    ("Qwen/Qwen1.5-14B-Chat", "Qwen/Qwen1.5-14B-Chat", 14.2), ("Qwen/Qwen1.5-72B", "Qwen/Qwen1.5-72B-Chat", 72.3),
    ("01-ai/Yi-1.5-34B-Chat", "01-ai/Yi-34B-Chat", 34.4), ("Qwen/Qwen3-4B-Instruct-2507", "Qwen/Qwen3-4B-Instruct-2507", 4.02),
    ("Qwen/Qwen3-VL-30B-A3B-Instruct", "Qwen/Qwen3-VL-30B-A3B-Instruct", 31.07),
    ("meta-llama/Llama-3.2-11B-Vision", "meta-llama/Llama-3.2-11B-Vision-Instruct", 10.67),
    ("Qwen/Qwen2.5-7B", "Qwen/Qwen2.5-7B", 7.62), ("meta-llama/Llama-3.1-8B", "meta-llama/Meta-Llama-3.1-8B", 8.03),
    ("lmsys/vicuna-7b-v1.3", "lmsys/vicuna-7b-v1.3", 6.74), ("MiniMaxAI/MiniMax-M2.7", "MiniMaxAI/MiniMax-M2.7", 230),
    ("Qwen/Qwen3.5-397B-A17B", "Qwen/Qwen3.5-397B-A17B", 397),
])
def test_models_users_start_most_are_in_the_catalogue(name, id, params_b):
    # model-card sizes: OPT 125M, Llama-2 6.74B, phi-4 14.7B, QwQ 32.5B (32.76 with embeddings), Falcon 6.9B,
    # GLM-4 9.4B, Qwen3 0.6B, Nemo 12.2B, R1-Distill-Llama 8.0B, Qwen1.5 14.2B / 72.3B, Yi-1.5-34B 34.4B,
    # Qwen3-4B 4.02B, Qwen3-VL-30B-A3B 31.1B, Llama-3.2-11B-Vision 10.67B, Qwen2.5-7B 7.61B, Llama-3.1-8B 8.03B,
    # LLaMA-1 7B 6.74B, MiniMax-M2 230B, Qwen3.5-397B-A17B 397B
    m = get_model(name)
    assert m.id == id and m.params_b == pytest.approx(params_b, rel=0.01) and m.source


@pytest.mark.parametrize("name,id,params_b", [
    ("zai-org/GLM-4.5", "zai-org/GLM-4.5", 355), ("THUDM/GLM-4.5-Air", "zai-org/GLM-4.5-Air", 106),
    ("CohereLabs/c4ai-command-r-v01", "CohereForAI/c4ai-command-r-v01", 35.0),
    ("CohereForAI/c4ai-command-r-plus", "CohereForAI/c4ai-command-r-plus", 104),
    ("CohereForAI/aya-expanse-8b", "CohereForAI/aya-expanse-8b", 8.03),
    ("Qwen/Qwen3-Next-80B-A3B-Thinking", "Qwen/Qwen3-Next-80B-A3B-Instruct", 80),
    ("Qwen/Qwen2-72B-Instruct", "Qwen/Qwen2-72B-Instruct", 72.7), ("THUDM/chatglm3-6b", "THUDM/chatglm3-6b", 6.24),
    ("facebook/opt-66b", "facebook/opt-66b", 66), ("openai-community/gpt2", "gpt2", 0.124),
    ("allenai/OLMoE-1B-7B-0924", "allenai/OLMoE-1B-7B-0924", 6.92), ("upstage/SOLAR-10.7B-v1.0",
                                                                      "upstage/SOLAR-10.7B-Instruct-v1.0", 10.7),
    ("NousResearch/Nous-Hermes-2-Mixtral-8x7B-DPO", "NousResearch/Nous-Hermes-2-Mixtral-8x7B-DPO", 46.7),
    ("internlm/internlm3-8b-instruct", "internlm/internlm3-8b-instruct", 8.8), ("01-ai/Yi-6B-Chat", "01-ai/Yi-6B-Chat", 6.06),
    ("meta-llama/Llama-2-70b-chat-hf", "meta-llama/Llama-2-70b-hf", 68.98), ("google/gemma-2b", "google/gemma-2b-it", 2.51),
    ("llama-4-scout", "meta-llama/Llama-4-Scout-17B-16E-Instruct", 109),
    ("meta-llama/Llama-4-Maverick-17B-128E", "meta-llama/Llama-4-Maverick-17B-128E-Instruct", 400),
])
def test_round_7_models_from_published_configs(name, id, params_b):
    # model-card sizes: GLM-4.5 355B / Air 106B, Command R 35B / R+ 104B, Aya Expanse 8.03B, Qwen3-Next 80B,
    # Qwen2-72B 72.7B, ChatGLM3 6.24B, OPT 66B, GPT-2 124M, OLMoE 6.92B, SOLAR 10.7B, Mixtral 46.7B, InternLM3 8.8B,
    # Yi-6B 6.06B. Cohere configs leave tie_word_embeddings out (their default is tied): 35B, not 37B
    m = get_model(name)
    assert m.id == id and m.params_b == pytest.approx(params_b, rel=0.01) and m.source
    # quantised re-uploads were read for their shape only: the catalogue entry is the release
    assert m.quantization is None and get_model("facebook/opt-66b").architecture == "OPTForCausalLM"


def test_another_orgs_copy_resolves_by_repository_name():
    # Unsloth and community re-uploads keep the repository name; a quantisation suffix names the storage
    m = get_model("unsloth/Llama-3.2-3B-Instruct")
    assert m.id == "meta-llama/Llama-3.2-3B-Instruct" and m.matched_by_name == "unsloth/Llama-3.2-3B-Instruct"
    bnb = get_model("unsloth/mistral-7b-instruct-v0.3-bnb-4bit")
    assert bnb.quantization == "bitsandbytes" and bnb.base_model == "mistralai/Mistral-7B-Instruct-v0.3"
    assert get_model("unsloth/Qwen3-8B-FP8").id == "Qwen/Qwen3-8B-FP8"  # the catalogue's own FP8 release
    assert get_model("unsloth/Qwen3-4B-Base").id == "Qwen/Qwen3-4B"
    assert get_model("meta-llama/Llama-3.2-3B-Instruct").matched_by_name is None
    with pytest.raises(UnknownModelError):
        get_model("someone/not-a-known-model-name")
    # Unsloth's block-scaled FP8 copies (compressed-tensors inside): the method is a guess from the name
    fp8 = get_model("unsloth/Llama-3.2-1B-Instruct-FP8-Block")
    assert fp8.quantization == "fp8" and fp8.base_model == "meta-llama/Llama-3.2-1B-Instruct"
    r = check_server_on_gpu(ServerInput(name="s", model=fp8, quantization="compressed-tensors", max_model_len=2048),
                            get_gpu("L4"))  # case 6008: vLLM loaded it as compressed-tensors
    assert "quant-method-by-name" in r.codes() and "quant-checkpoint-mismatch" not in r.codes() and r.ok
    # NVIDIA's NVFP4 (ModelOpt: 4 bits + an FP8 scale per 16 weights) and llm-compressor's W4A16 / W8A8 copies
    nv = get_model("nvidia/Gemma-4-31B-IT-NVFP4")
    assert (nv.quantization, nv.quant_bits, nv.base_model) == ("modelopt", 4.5, "google/gemma-4-31B-it")
    w4 = get_model("someone/Qwen3-8B-W4A16")
    assert (w4.quantization, w4.quant_bits, w4.quant_group_size) == ("compressed-tensors", 4, 128)
    assert get_model("RedHatAI/Qwen3-8B-quantized.w8a8").quant_group_size is None
    # Qwen's official GPTQ-Int8 releases are 8-bit (not the catalogue's Int4 variant); QAT weights in AWQ form;
    # a pretrained release without the -Instruct / -it / -chat its catalogue entry has is the same shape
    int8 = get_model("Qwen/Qwen2.5-7B-Instruct-GPTQ-Int8")
    assert (int8.quantization, int8.quant_bits, int8.base_model) == ("gptq", 8, "Qwen/Qwen2.5-7B-Instruct")
    assert get_model("Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4").quant_bits == 4
    for qat in ("gaunernst/gemma-3-27b-it-int4-awq", "gaunernst/gemma-3-12b-it-qat-autoawq"):
        assert get_model(qat).quantization == "awq" and get_model(qat).base_model.startswith("google/gemma-3-")
    assert get_model("google/gemma-2-2b").id == "google/gemma-2-2b-it"
    assert get_model("deepseek-ai/deepseek-llm-7b-base").id == "deepseek-ai/deepseek-llm-7b-chat"


def test_a_gguf_file_named_after_a_catalogue_model():
    # case 6000: --model .../Llama-3.2-3B-Instruct-Q8_0.gguf --quantization gguf, vLLM logged 3.26 GiB of
    # weights; Q8_0 stores 32 weights with one fp16 scale (8.5 bits), the token embeddings included
    m = get_model("~/models/Llama-3.2-3B-Instruct-Q8_0.gguf")
    assert m.quantization == "gguf" and m.quant_bits == 8.5 and m.base_model == "meta-llama/Llama-3.2-3B-Instruct"
    assert m.matched_by_name
    s = check_server_on_gpu(ServerInput(name="s", model=m, quantization="gguf", max_model_len=10000,
                                        enforce_eager=True, vllm_version="0.8.2"), get_gpu("L4"))
    assert s.servers[0].weights_gib == pytest.approx(3.26, rel=0.03)
    assert get_model("Llama-3.2-3B-Instruct-Q4_K_M.gguf").quant_bits == pytest.approx(4.84)
    with pytest.raises(UnknownModelError):
        get_model("Llama-3.2-3B-Instruct.gguf")  # no llama.cpp type in the name: bits unknown
    with pytest.raises(UnknownModelError, match=r"give the \.gguf file"):
        get_model("unsloth/Qwen3-8B-GGUF")


def test_interleaved_moe_layers_count_only_every_step_th_layer_as_experts():
    # Llama-4 Maverick (400B total): 48 layers, MoE (128 experts of 8192 + a shared one) every 2nd layer,
    # the others dense at intermediate_size_mlp 16384; counting every layer as MoE gave 778B
    cfg = {"architectures": ["Llama4ForCausalLM"], "model_type": "llama4_text", "hidden_size": 5120,
           "num_hidden_layers": 48, "num_attention_heads": 40, "num_key_value_heads": 8, "head_dim": 128,
           "intermediate_size": 8192, "intermediate_size_mlp": 16384, "num_local_experts": 128,
           "num_experts_per_tok": 1, "interleave_moe_layer_step": 2, "vocab_size": 202048,
           "max_position_embeddings": 1048576, "torch_dtype": "bfloat16"}
    # the published text_config has no shared-expert field: Llama4TextMoe always builds one of intermediate_size
    assert estimate_params_b(cfg) == pytest.approx(400, rel=0.01)
    # Scout: 16 experts in every layer (109B total with its 0.8B vision tower, which this text config lacks)
    scout = {**cfg, "num_local_experts": 16, "interleave_moe_layer_step": 1, "max_position_embeddings": 10485760}
    assert estimate_params_b(scout) == pytest.approx(107.8, rel=0.005)


def test_latent_moe_experts_work_in_the_latent_width():
    # Nemotron-3-Super-120B-A12B: 512 routed experts of 2688 over a 1024-wide latent (projected from and back to
    # the 4096 hidden), a 5376-wide shared expert; counted over the hidden width it came out at 458B
    pattern = "MEMEMEM*EMEMEMEM*EMEMEMEM*EMEMEMEMEM*EMEMEMEMEM*EMEMEMEMEM*EMEMEMEMEM*EMEMEMEM*EMEMEMEME"
    cfg = {"architectures": ["NemotronHForCausalLM"], "model_type": "nemotron_h", "hidden_size": 4096,
           "num_hidden_layers": 88, "hybrid_override_pattern": pattern, "num_attention_heads": 32,
           "num_key_value_heads": 2, "head_dim": 128, "intermediate_size": 2688, "moe_intermediate_size": 2688,
           "moe_latent_size": 1024, "moe_shared_expert_intermediate_size": 5376, "n_routed_experts": 512,
           "num_experts_per_tok": 22, "mamba_num_heads": 128, "mamba_head_dim": 64, "n_groups": 8,
           "ssm_state_size": 128, "conv_kernel": 4, "vocab_size": 131072, "tie_word_embeddings": False,
           "max_position_embeddings": 262144, "torch_dtype": "bfloat16"}
    assert estimate_params_b(cfg) == pytest.approx(120, rel=0.02)


def test_nas_pruned_blocks_are_counted_one_by_one():
    # Llama-3.3-Nemotron-Super-49B (DeciLM block_configs): 49 of 80 blocks keep attention (8 K/V heads),
    # each MLP is int(2 x ffn_mult x 8192 / 3) rounded up to 256; read as a plain 80-layer Llama it was 88B
    m = get_model("nvidia/Llama-3_3-Nemotron-Super-49B-v1")
    assert m.params_b == pytest.approx(49.9, rel=0.01)
    assert (m.kv_layers, m.num_kv_heads, m.intermediate_size) == (49, 8, 28672)


def test_linear_attention_layers_are_counted_as_gated_deltanet():
    # Qwen3.5 / Qwen3-Next: three of four layers are Gated DeltaNet (q/k/v/z and b/a projections, out_proj,
    # a short conv), not attention; full-attention layers also project an output gate
    assert get_model("Qwen/Qwen3.5-35B-A3B").params_b == pytest.approx(35.0, rel=0.02)
    assert get_model("Qwen/Qwen3.5-27B").params_b == pytest.approx(27.0, rel=0.02)
    assert get_model("Qwen/Qwen3.5-27B").kv_layers == 16
    # Qwen3-Next's config names no layer_types: vLLM's Qwen3NextConfig makes every full_attention_interval-th
    # layer full attention, so 12 of its 48 layers hold KV (all 48 did, a 4x KV per token)
    nxt = get_model("Qwen/Qwen3-Next-80B-A3B-Instruct")
    assert (nxt.kv_layers, nxt.num_layers) == (12, 48) and nxt.linear_state is not None


def test_gemma3_qat_int4_awq_copies_are_counted_in_groups_of_32():
    # gau-nernst/gemma3-int4's converter packs Google's QAT int4 weights as AWQ in groups of 32 (bf16 scales, zero
    # points), embeddings and the SigLIP tower 16-bit. Cases 2001 / 2002 (V0 0.8.3, fp16): 17.61 GiB loaded for
    # the 27B; read as group 128 it was 15.79
    m = get_model("gaunernst/gemma-3-27b-it-int4-awq")
    assert (m.quantization, m.quant_bits, m.quant_group_size, m.base_model) == ("awq", 4, 32, "google/gemma-3-27b-it")
    assert not m.matched_by_name
    srv = ServerInput(name="s", model=m, vllm_version="0.8.3", dtype="float16", max_model_len=4096)
    w = check_server_on_gpu(srv, get_gpu("A10")).servers[0].weights_gib
    assert w == pytest.approx(17.61, rel=0.03)
    assert {f"gaunernst/gemma-3-{s}-it-int4-awq" for s in ("1b", "4b", "12b")} <= {
        get_model(f"gaunernst/gemma-3-{s}-it-int4-awq").id for s in ("1b", "4b", "12b")}
