"""Model catalogue: the architecture facts the fit-check needs, for every model the seeds name.

Each entry's numbers are the published ``config.json`` values of that hub repository
(layers, hidden size, heads, KV heads, head dim, intermediate size, vocab, context, dtype,
quantisation config). ``params_b`` is the parameter count the model card / safetensors
index reports. Where a seed names a repository that we could not confirm exists, the entry
says so in ``source`` and takes the shape its name implies.

Resolution order of :func:`get_model`: profile ``models:`` -> catalogue ids and aliases ->
local directory with ``config.json`` -> cached hub config -> (``allow_network``) the hub.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "ModelSpec", "UnknownModelError", "MODELS", "get_model", "model_from_config",
    "quantized_variant", "estimate_params_b", "HUB_CACHE_DIR",
]

HUB_CACHE_DIR = Path("~/.cache/biofleet/hub-configs")
HUB_TIMEOUT_S = 10.0

# How checkpoints are quantised (``quantization_config.quant_method``) and the weight-only
# bits they store when the config does not say.
_DEFAULT_BITS = {"awq": 4, "gptq": 4, "bitsandbytes": 4, "fp8": 8, "mxfp4": 4.25,
                 "compressed-tensors": 8, "gguf": 4, "marlin": 4, "squeezellm": 4, "aqlm": 2}


class ModelSpec(BaseModel):
    """Architecture facts of one checkpoint. Only the first five fields are required, so a
    profile's ``models:`` section can describe an unknown model in a few lines."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    params_b: float = Field(gt=0)  # total parameters, billions
    num_layers: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    num_attention_heads: int = Field(gt=0)
    num_kv_heads: int | None = Field(None, gt=0)  # None: no GQA (= attention heads)
    head_dim: int | None = Field(None, gt=0)  # None: hidden_size / heads
    # Per-token MLP width the forward pass materialises: intermediate_size for dense
    # models, top_k x expert width (+ shared experts) for MoE. None: 4 x hidden.
    intermediate_size: int | None = Field(None, gt=0)
    max_position_embeddings: int = Field(4096, gt=0)
    vocab_size: int = Field(32000, gt=0)
    tie_word_embeddings: bool = False
    native_dtype: str = "bfloat16"  # config torch_dtype: bfloat16 / float16 / float32
    architecture: str = ""
    model_type: str = ""  # config model_type (llama, qwen2, gemma2, xlm-roberta, ...)
    aliases: tuple[str, ...] = ()
    quantization: str | None = None  # how the CHECKPOINT is quantised (awq, gptq, fp8, ...)
    quant_bits: float | None = None
    quant_group_size: int | None = None
    # Parameters stored at quant_bits (None: all but embeddings / lm_head). MoE checkpoints
    # such as gpt-oss quantise only the experts.
    quantized_params_b: float | None = Field(None, gt=0)
    # In-memory / checkpoint size of the quantised tensors (vLLM pads some layouts).
    quant_storage_factor: float = Field(1.0, ge=1.0)
    encoder_only: bool = False  # BERT / XLM-R embedders: no KV cache
    sliding_window: int | None = None
    attn_softcapping: bool = False  # Gemma-2 attention logit soft-capping
    kv_latent_dim: int | None = None  # MLA (DeepSeek-V2): cached latent per token per layer
    base_model: str | None = None  # the unquantised model this checkpoint derives from
    source: str = ""

    @model_validator(mode="after")
    def _derived(self) -> ModelSpec:
        if self.num_kv_heads is None:
            object.__setattr__(self, "num_kv_heads", self.num_attention_heads)
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        if self.intermediate_size is None:
            object.__setattr__(self, "intermediate_size", 4 * self.hidden_size)
        if self.quantization:
            object.__setattr__(self, "quantization", self.quantization.lower())
            if self.quant_bits is None:
                object.__setattr__(self, "quant_bits", _DEFAULT_BITS.get(self.quantization, 4))
        if self.native_dtype in ("half", "fp16"):
            object.__setattr__(self, "native_dtype", "float16")
        if self.native_dtype in ("bf16",):
            object.__setattr__(self, "native_dtype", "bfloat16")
        return self

    @property
    def name(self) -> str:
        return self.id.rstrip("/").split("/")[-1]

    @property
    def context_length(self) -> int:
        """Longest sequence vLLM accepts by default (RoBERTa-style position ids start at 2)."""
        if self.model_type in ("xlm-roberta", "roberta"):
            return self.max_position_embeddings - 2
        return self.max_position_embeddings

    @property
    def embedding_params_b(self) -> float:
        """Input embedding + (untied) lm_head parameters, billions: kept in 16-bit by AWQ/GPTQ."""
        n = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings or self.encoder_only else 2)
        return n / 1e9


class UnknownModelError(KeyError):
    """A model reference the catalogue, the profile and the disk could not resolve."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


# --------------------------------------------------------------------------- catalogue

def _m(id: str, params_b: float, layers: int, hidden: int, heads: int, kv: int, inter: int, vocab: int,
       ctx: int, **kw: Any) -> ModelSpec:
    return ModelSpec(id=id, params_b=params_b, num_layers=layers, hidden_size=hidden,
                     num_attention_heads=heads, num_kv_heads=kv, intermediate_size=inter,
                     vocab_size=vocab, max_position_embeddings=ctx, **kw)


def _quant(base: ModelSpec, id: str, method: str, bits: float, *, group: int | None = 128,
           dtype: str = "float16", aliases: tuple[str, ...] = (), source: str = "", **kw: Any) -> ModelSpec:
    """A quantised checkpoint of ``base``: same shape, other storage (AWQ/GPTQ configs say float16)."""
    data = base.model_dump()
    data.update(id=id, aliases=aliases, quantization=method, quant_bits=bits, quant_group_size=group,
                native_dtype=dtype, base_model=base.id,
                source=source or f"{id} config.json quantization_config ({method}, {bits}-bit"
                + (f", group {group})" if group else ")") + f"; shape of {base.id}", **kw)
    return ModelSpec(**data)


_Q2 = dict(architecture="Qwen2ForCausalLM", model_type="qwen2", head_dim=128)
_LLAMA = dict(architecture="LlamaForCausalLM", model_type="llama")
_MISTRAL = dict(architecture="MistralForCausalLM", model_type="mistral")
_PHI3 = dict(architecture="Phi3ForCausalLM", model_type="phi3")
_CFG = "config.json on the Hugging Face hub"


def _build() -> tuple[ModelSpec, ...]:
    out: list[ModelSpec] = []
    add = out.append

    # ---- Qwen2.5 / Qwen2 / Qwen1.5 (seeds 000, 001, 003; calibration #15, #21, #27, #33, #48)
    q05 = _m("Qwen/Qwen2.5-0.5B-Instruct", 0.494, 24, 896, 14, 2, 4864, 151936, 32768, tie_word_embeddings=True,
             **{**_Q2, "head_dim": 64}, aliases=("qwen2.5-0.5b",), source=_CFG)
    q15 = _m("Qwen/Qwen2.5-1.5B-Instruct", 1.544, 28, 1536, 12, 2, 8960, 151936, 32768, tie_word_embeddings=True,
             **_Q2, aliases=("qwen2.5-1.5b", "qwen-1.5b"), source=_CFG + "; calibration #15 (weights 2.8875 GiB)")
    q7 = _m("Qwen/Qwen2.5-7B-Instruct", 7.616, 28, 3584, 28, 4, 18944, 152064, 32768, **_Q2,
            aliases=("qwen2.5-7b", "qwen-7b"), source=_CFG)
    q14 = _m("Qwen/Qwen2.5-14B-Instruct", 14.77, 48, 5120, 40, 8, 13824, 152064, 32768, **_Q2,
             aliases=("qwen2.5-14b",), source=_CFG)
    q32 = _m("Qwen/Qwen2.5-32B-Instruct", 32.76, 64, 5120, 40, 8, 27648, 152064, 32768, **_Q2,
             aliases=("qwen2.5-32b",), source=_CFG)
    qc7 = _m("Qwen/Qwen2.5-Coder-7B-Instruct", 7.616, 28, 3584, 28, 4, 18944, 152064, 32768, **_Q2,
             aliases=("qwen2.5-coder-7b", "qwen-coder-7b", "qwen-coder"),
             source=_CFG + "; calibration #33 (7.1217 GiB per rank at TP 2)")
    qc15 = _m("Qwen/Qwen2.5-Coder-1.5B-Instruct", 1.544, 28, 1536, 12, 2, 8960, 151936, 32768,
              tie_word_embeddings=True, **_Q2, aliases=("qwen2.5-coder-1.5b",), source=_CFG)
    qc14 = _m("Qwen/Qwen2.5-Coder-14B-Instruct", 14.77, 48, 5120, 40, 8, 13824, 152064, 32768, **_Q2,
              aliases=("qwen2.5-coder-14b", "qwen-2.5-coder-14b", "qwen-2.5-14b"), source=_CFG)
    qc32 = _m("Qwen/Qwen2.5-Coder-32B-Instruct", 32.76, 64, 5120, 40, 8, 27648, 152064, 32768, **_Q2,
              aliases=("qwen2.5-coder-32b", "qwen-coder-32b"), source=_CFG)
    qm7 = _m("Qwen/Qwen2.5-Math-7B-Instruct", 7.616, 28, 3584, 28, 4, 18944, 152064, 4096, **_Q2,
             aliases=("qwen2.5-math-7b", "qwen-math-7b"), source=_CFG + " (4k context)")
    q2_7 = _m("Qwen/Qwen2-7B-Instruct", 7.616, 28, 3584, 28, 4, 18944, 152064, 32768, **_Q2,
              aliases=("qwen2-7b",), source=_CFG + "; calibration #27 (weights 14.2488 GiB)")
    q15_7 = _m("Qwen/Qwen1.5-7B-Chat", 7.721, 32, 4096, 32, 32, 11008, 151936, 32768, **{**_Q2, "head_dim": 128},
               aliases=("qwen1.5-7b",), source=_CFG + "; calibration #21, #48")
    for spec in (q05, q15, q7, q14, q32, qc7, qc15, qc14, qc32, qm7, q2_7, q15_7):
        add(spec)
    for base in (q05, q15, q7, q14, q32, qc7, qc15, qc14, qc32):
        add(_quant(base, base.id + "-AWQ", "awq", 4, aliases=(base.name.lower() + "-awq",)))
    add(_quant(qc7, "Qwen/Qwen2.5-Coder-7B-Instruct-GPTQ-Int4", "gptq", 4))
    add(_quant(qc7, "Qwen/Qwen2.5-Coder-7B-Instruct-GPTQ-Int8", "gptq", 8))
    add(_quant(q7, "Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4", "gptq", 4))
    add(_quant(q15_7, "Qwen/Qwen1.5-7B-Chat-GPTQ-Int4", "gptq", 4, source=_CFG + "; calibration #21"))
    add(_quant(q15_7, "Qwen/Qwen1.5-7B-Chat-AWQ", "awq", 4))
    add(_m("nvidia/Nemotron-Orchestrator-8B", 8.19, 36, 4096, 32, 8, 12288, 151936, 40960,
           architecture="Qwen3ForCausalLM", model_type="qwen3", head_dim=128,
           aliases=("nemotron-orchestrator-8b",),
           source=_CFG + " (Qwen3-8B shape); NVIDIA's published ToolOrchestra model"))

    # ---- Llama family (seeds 000, 001, 003; calibration #3, #9, #18, #24, #39, #45)
    l31_8 = _m("meta-llama/Llama-3.1-8B-Instruct", 8.03, 32, 4096, 32, 8, 14336, 128256, 131072, **_LLAMA,
               aliases=("meta-llama/Meta-Llama-3.1-8B-Instruct", "llama-3.1-8b", "llama3.1-8b", "llama-3.1-8b-instruct"),
               source=_CFG + "; calibration #9, #24 (14.96 GiB in 16-bit)")
    add(l31_8)
    add(_m("meta-llama/Meta-Llama-3-8B-Instruct", 8.03, 32, 4096, 32, 8, 14336, 128256, 8192, **_LLAMA,
           aliases=("llama-3-8b-instruct", "meta-llama/Llama-3-8B-Instruct"), source=_CFG))
    add(_m("meta-llama/Meta-Llama-3-8B", 8.03, 32, 4096, 32, 8, 14336, 128256, 8192, **_LLAMA,
           aliases=("llama-3-8b",), source=_CFG + "; calibration #3 (weights 14.9595 GiB)"))
    add(_m("meta-llama/Llama-3.2-1B-Instruct", 1.236, 16, 2048, 32, 8, 8192, 128256, 131072, **_LLAMA,
           head_dim=64, tie_word_embeddings=True, aliases=("llama-3.2-1b",), source=_CFG))
    l32_3 = _m("meta-llama/Llama-3.2-3B-Instruct", 3.213, 28, 3072, 24, 8, 8192, 128256, 131072, **_LLAMA,
               head_dim=128, tie_word_embeddings=True, aliases=("llama-3.2-3b", "llama-3b", "llama3.2-3b"),
               source=_CFG)
    add(l32_3)
    l31_70 = _m("meta-llama/Llama-3.1-70B-Instruct", 70.55, 80, 8192, 64, 8, 28672, 128256, 131072, **_LLAMA,
                aliases=("meta-llama/Meta-Llama-3.1-70B-Instruct", "unsloth/Llama-3.1-70B-Instruct",
                         "llama-3.1-70b", "llama-3.1-70b-instruct"),
                source=_CFG + "; unsloth/ mirror is the same checkpoint (calibration #45)")
    add(l31_70)
    add(_m("meta-llama/Llama-3.3-70B-Instruct", 70.55, 80, 8192, 64, 8, 28672, 128256, 131072, **_LLAMA,
           aliases=("unsloth/Llama-3.3-70B-Instruct", "llama-3.3-70b"), source=_CFG))
    add(_m("meta-llama/Llama-2-70b-hf", 68.98, 80, 8192, 64, 8, 28672, 32000, 4096, **_LLAMA,
           native_dtype="float16", aliases=("meta-llama/Llama-2-70b", "llama-2-70b"),
           source=_CFG + "; calibration #39"))
    add(_m("meta-llama/Llama-Guard-3-8B", 8.03, 32, 4096, 32, 8, 14336, 128256, 131072, **_LLAMA,
           aliases=("llama-guard-3-8b", "llama-guard-3", "llama-guard"), source=_CFG + " (Llama-3.1-8B shape)"))
    add(_m("meta-llama/Llama-Guard-3-1B", 1.498, 16, 2048, 32, 8, 8192, 128256, 131072, **_LLAMA, head_dim=64,
           aliases=("llama-guard-3-1b",), source=_CFG + " (Llama-3.2-1B shape, untied lm_head)"))
    add(_m("nvidia/Llama-3.1-Nemotron-Safety-Guard-8B-v3", 8.03, 32, 4096, 32, 8, 14336, 128256, 131072, **_LLAMA,
           aliases=("nvidia/Llama-3.1-Nemotron-Safety-8B-V3", "nemotron-safety-8b", "nemotron-safety-8b-v3",
                    "safety-8b"),
           source="NVIDIA content-safety model, Llama-3.1-8B-Instruct shape; seeds 000/001 write the id "
                  "'nvidia/Llama-3.1-Nemotron-Safety-8B-V3' (kept as alias)"))
    add(_m("nvidia/Llama-3.1-Nemotron-8B-Orchestrator", 8.03, 32, 4096, 32, 8, 14336, 128256, 131072, **_LLAMA,
           aliases=("nemotron-8b-orchestrator", "nemotron-8b", "orchestrator-8b"),
           source="repo id as seeds 000/001 write it; NOT confirmed on the hub (NVIDIA's published "
                  "orchestrator is nvidia/Nemotron-Orchestrator-8B, Qwen3-8B based); shape taken "
                  "from the name: Llama-3.1-8B"))
    add(_m("m42-health/Llama3-Med42-8B", 8.03, 32, 4096, 32, 8, 14336, 128256, 8192, **_LLAMA,
           aliases=("med42-8b", "llama3-med42-8b", "med42-v2-8b"), source=_CFG + " (Llama-3-8B shape)"))
    add(_m("nvidia/llama-embed-nemotron-8b", 7.50, 32, 4096, 32, 8, 14336, 128256, 131072,
           architecture="LlamaBidirectionalModel", model_type="llama", tie_word_embeddings=True,
           aliases=("llama-embed-nemotron-8b",),
           source=_CFG + " (Llama-3.1-8B body without lm_head); decoder-based embedder keeps KV memory"))
    add(_quant(l31_8, "hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4", "awq", 4,
               aliases=("llama-3.1-8b-awq",)))
    add(_quant(l31_70, "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4", "awq", 4,
               aliases=("llama-3.1-70b-awq",)))
    add(_quant(l31_70, "neuralmagic/Meta-Llama-3.1-70B-Instruct-quantized.w8a8", "compressed-tensors", 8,
               group=None, dtype="bfloat16",
               source=_CFG + " (compressed-tensors INT8 W8A8, per-channel scales); calibration #18 "
                             "(weights 67.7229 GiB)"))
    add(_m("epfl-llm/meditron-7b", 6.74, 32, 4096, 32, 32, 11008, 32017, 2048, **_LLAMA,
           aliases=("meditron-7b",), source=_CFG + " (Llama-2-7B shape; 2k context per model card)"))
    add(_m("codellama/CodeLlama-34b-Instruct-hf", 33.74, 48, 8192, 64, 8, 22016, 32000, 16384, **_LLAMA,
           aliases=("codellama-34b", "codellama-34b-instruct", "models/codellama-34b"), source=_CFG))
    add(_m("ise-uiuc/Magicoder-CL-7B", 6.74, 32, 4096, 32, 32, 11008, 32016, 16384, **_LLAMA,
           aliases=("magicoder-cl-7b",), source=_CFG + " (CodeLlama-7B shape)"))
    add(_m("01-ai/Yi-1.5-9B-Chat", 8.83, 48, 4096, 32, 4, 11008, 64000, 4096, **_LLAMA,
           aliases=("yi-1.5-9b", "yi-1.5-9b-chat"), source=_CFG))
    add(_m("ibm-granite/granite-3.3-8b-instruct", 8.17, 40, 4096, 32, 8, 12800, 49159, 131072,
           architecture="GraniteForCausalLM", model_type="granite", tie_word_embeddings=True,
           aliases=("granite-3.3-8b", "granite-3.3-8b-instruct"), source=_CFG))
    add(_m("baichuan-inc/Baichuan2-13B-Chat", 13.90, 40, 5120, 40, 40, 13696, 125696, 4096,
           architecture="BaichuanForCausalLM", model_type="baichuan", aliases=("baichuan2-13b",),
           source=_CFG + "; calibration #54"))

    # ---- DeepSeek (seeds 001, 003)
    add(_m("deepseek-ai/deepseek-coder-33b-instruct", 33.34, 62, 7168, 56, 8, 19200, 32256, 16384, **_LLAMA,
           aliases=("deepseek-coder-33b", "models/deepseek-coder-33b"), source=_CFG))
    add(_m("deepseek-ai/deepseek-math-7b-instruct", 6.91, 30, 4096, 32, 32, 11008, 102400, 4096, **_LLAMA,
           aliases=("deepseek-math-7b",), source=_CFG))
    # MLA caches one latent of kv_lora_rank 512 + rope dim 64 per token per layer (vLLM MLA backend).
    add(_m("deepseek-ai/DeepSeek-Coder-V2-Lite-Instruct", 15.71, 27, 2048, 16, 16, 11264, 102400, 163840,
           architecture="DeepseekV2ForCausalLM", model_type="deepseek_v2", head_dim=192, kv_latent_dim=576,
           aliases=("deepseek-coder-v2-lite",),
           source=_CFG + " (MoE 64 experts top-6 + 2 shared, width 1408; MLA)"))
    add(_m("deepseek-ai/DeepSeek-Coder-V2-Instruct", 235.74, 60, 5120, 128, 128, 12288, 102400, 163840,
           architecture="DeepseekV2ForCausalLM", model_type="deepseek_v2", head_dim=192, kv_latent_dim=576,
           aliases=("deepseek-coder-v2",), source=_CFG + " (MoE 160 experts top-6 + 2 shared, width 1536; MLA)"))

    # ---- Mistral family (seeds 000, 001, 003; calibration #6, #12, #36)
    m01 = _m("mistralai/Mistral-7B-Instruct-v0.1", 7.24, 32, 4096, 32, 8, 14336, 32000, 32768, **_MISTRAL,
             sliding_window=4096, aliases=("mistral-7b-v0.1",), source=_CFG)
    m02 = _m("mistralai/Mistral-7B-Instruct-v0.2", 7.24, 32, 4096, 32, 8, 14336, 32000, 32768, **_MISTRAL,
             aliases=("mistral-7b-v0.2", "models/mistral-7b"), source=_CFG + "; calibration #12")
    m03 = _m("mistralai/Mistral-7B-Instruct-v0.3", 7.25, 32, 4096, 32, 8, 14336, 32768, 32768, **_MISTRAL,
             aliases=("mistral-7b", "mistral-7b-v0.3", "mistral-7b-instruct"), source=_CFG)
    bio = _m("BioMistral/BioMistral-7B", 7.24, 32, 4096, 32, 8, 14336, 32000, 32768, **_MISTRAL,
             sliding_window=4096, aliases=("biomistral", "biomistral-7b"),
             source=_CFG + " (Mistral-7B-Instruct-v0.1 shape)")
    for spec in (m01, m02, m03, bio):
        add(spec)
    add(_m("mistralai/Mathstral-7B-v0.1", 7.25, 32, 4096, 32, 8, 14336, 32768, 32768, **_MISTRAL,
           aliases=("mathstral-7b",), source=_CFG))
    add(_m("intfloat/e5-mistral-7b-instruct", 7.11, 32, 4096, 32, 8, 14336, 32000, 32768,
           architecture="MistralModel", model_type="mistral", native_dtype="float16", tie_word_embeddings=True,
           aliases=("e5-mistral-7b",), source=_CFG + " (Mistral-7B body, no lm_head; decoder embedder)"))
    add(_quant(bio, "BioMistral/BioMistral-7B-AWQ-QGS128-W4-GEMM", "awq", 4, aliases=("biomistral-7b-awq",)))
    add(_quant(m02, "TheBloke/Mistral-7B-Instruct-v0.2-AWQ", "awq", 4))
    add(_quant(m03, "neuralmagic/Mistral-7B-Instruct-v0.3-GPTQ-4bit", "gptq", 4,
               source=_CFG + "; calibration #12 notes (ran on a T4)"))
    openorca = m01.model_copy(update={"id": "Open-Orca/Mistral-7B-OpenOrca", "vocab_size": 32002, "aliases": (),
                                      "source": _CFG + " (Mistral-7B-v0.1 + 2 chat tokens)"})
    add(openorca)
    add(_quant(openorca, "TheBloke/Mistral-7B-OpenOrca-AWQ", "awq", 4, source=_CFG + "; calibration #36"))
    vistral = m01.model_copy(update={"id": "Viet-Mistral/Vistral-7B-Chat", "vocab_size": 38369,
                                     "params_b": 7.29, "aliases": (),
                                     "source": _CFG + " (Mistral-7B with Vietnamese vocab, 38369)"})
    add(vistral)
    add(_quant(vistral, "hiuman/Vistral-7B-Chat-quantize", "awq", 4,
               source="calibration #6 (AWQ of Vistral-7B-Chat; quant config assumed 4-bit group 128)"))

    # ---- Phi-3 (seeds 000, 001, 003, 004; calibration #51)
    add(_m("microsoft/Phi-3.5-mini-instruct", 3.821, 32, 3072, 32, 32, 8192, 32064, 131072, **_PHI3,
           aliases=("phi-3.5-mini", "phi3.5", "phi-3.5"), source=_CFG))
    add(_m("microsoft/Phi-3-mini-4k-instruct", 3.821, 32, 3072, 32, 32, 8192, 32064, 4096, **_PHI3,
           sliding_window=2047, aliases=("phi-3-mini", "phi-3-mini-4k", "models/phi-3-mini"), source=_CFG))
    add(_m("microsoft/Phi-3-mini-128k-instruct", 3.821, 32, 3072, 32, 32, 8192, 32064, 131072, **_PHI3,
           aliases=("phi-3-mini-128k",), source=_CFG))
    add(_m("microsoft/Phi-3-vision-128k-instruct", 4.15, 32, 3072, 32, 32, 8192, 32064, 131072,
           architecture="Phi3VForCausalLM", model_type="phi3_v", aliases=("phi-3-vision",),
           source=_CFG + " (phi-3-mini text stack + CLIP ViT-L); calibration #51"))

    # ---- Gemma (seeds 001, 004; calibration #63)
    add(_m("google/gemma-2b-it", 2.51, 18, 2048, 8, 1, 16384, 256000, 8192, architecture="GemmaForCausalLM",
           model_type="gemma", head_dim=256, tie_word_embeddings=True, aliases=("gemma-2b", "gemma-2b-it"),
           source=_CFG))
    add(_m("google/codegemma-7b-it", 8.54, 28, 3072, 16, 16, 24576, 256000, 8192, architecture="GemmaForCausalLM",
           model_type="gemma", head_dim=256, tie_word_embeddings=True, aliases=("codegemma-7b",), source=_CFG))
    g2_2 = _m("google/gemma-2-2b-it", 2.61, 26, 2304, 8, 4, 9216, 256000, 8192, architecture="Gemma2ForCausalLM",
              model_type="gemma2", head_dim=256, tie_word_embeddings=True, native_dtype="float32",
              sliding_window=4096, attn_softcapping=True, aliases=("gemma-2-2b", "gemma-2-2b-it"),
              source=_CFG + " (torch_dtype float32); calibration #63")
    g2_9 = _m("google/gemma-2-9b-it", 9.24, 42, 3584, 16, 8, 14336, 256000, 8192, architecture="Gemma2ForCausalLM",
              model_type="gemma2", head_dim=256, tie_word_embeddings=True, sliding_window=4096,
              attn_softcapping=True, aliases=("gemma-2-9b", "gemma-2-9b-it"), source=_CFG)
    add(g2_2)
    add(g2_9)
    add(_quant(g2_9, "hugging-quants/gemma-2-9b-it-AWQ-INT4", "awq", 4, aliases=("gemma-2-9b-awq",)))

    # ---- Other code / bio generators (seed 001)
    add(_m("bigcode/starcoder2-7b", 7.17, 32, 4608, 36, 4, 18432, 49152, 16384,
           architecture="Starcoder2ForCausalLM", model_type="starcoder2", head_dim=128, native_dtype="float32",
           sliding_window=4096, tie_word_embeddings=True, aliases=("starcoder2-7b",), source=_CFG))
    add(_m("microsoft/BioGPT-Large", 1.57, 48, 1600, 25, 25, 6400, 57717, 2048, architecture="BioGptForCausalLM",
           model_type="biogpt", native_dtype="float32", tie_word_embeddings=True, aliases=("biogpt-large", "biogpt"),
           source=_CFG + " (no vLLM implementation known: serve it with another engine)"))

    # ---- Embedders (seeds 000, 001; DESIGN.md)
    add(_m("BAAI/bge-m3", 0.568, 24, 1024, 16, 16, 4096, 250002, 8194, architecture="XLMRobertaModel",
           model_type="xlm-roberta", native_dtype="float32", encoder_only=True, aliases=("bge-m3",),
           source=_CFG + " (XLM-RoBERTa-large; 8192 usable positions)"))
    add(_m("BAAI/bge-base-en-v1.5", 0.109, 12, 768, 12, 12, 3072, 30522, 512, architecture="BertModel",
           model_type="bert", native_dtype="float32", encoder_only=True, aliases=("bge-base", "bge-base-en"),
           source=_CFG))
    add(_m("sentence-transformers/all-MiniLM-L6-v2", 0.0227, 6, 384, 12, 12, 1536, 30522, 512,
           architecture="BertModel", model_type="bert", native_dtype="float32", encoder_only=True,
           aliases=("all-minilm-l6-v2", "minilm"), source=_CFG))

    # ---- gpt-oss (calibration #30, #42): MXFP4 experts (4 bits + one 8-bit scale per 32 = 4.25
    # bits); attention, router and embeddings bf16. Experts: 20b 24 x 32 x 3 x 2880^2 = 19.11e9,
    # 120b 36 x 128 x 3 x 2880^2 = 114.66e9. vLLM pads the expert matrices from 2880 to 3072 on
    # both dims for its MXFP4 kernels: storage factor (3072/2880)^2 = 1.138 (this padding
    # reproduces the logged 13.72 / 17.22 GiB within 3%). intermediate_size = top-4 x 2880.
    add(_m("openai/gpt-oss-20b", 20.91, 24, 2880, 64, 8, 11520, 201088, 131072, architecture="GptOssForCausalLM",
           model_type="gpt_oss", head_dim=64, sliding_window=128, quantization="mxfp4", quant_bits=4.25,
           quantized_params_b=19.11, quant_storage_factor=1.1378, aliases=("gpt-oss-20b",),
           source=_CFG + " (MoE 32 experts top-4, alternating 128-token sliding window); calibration #42"))
    add(_m("openai/gpt-oss-120b", 116.83, 36, 2880, 64, 8, 11520, 201088, 131072, architecture="GptOssForCausalLM",
           model_type="gpt_oss", head_dim=64, sliding_window=128, quantization="mxfp4", quant_bits=4.25,
           quantized_params_b=114.66, quant_storage_factor=1.1378, aliases=("gpt-oss-120b",),
           source=_CFG + " (MoE 128 experts top-4); calibration #30"))
    return tuple(out)


_CATALOG = _build()
MODELS: Mapping[str, ModelSpec] = MappingProxyType({m.id: m for m in _CATALOG})


def _key(s: str) -> str:
    return s.strip().rstrip("/").lower()


def _index() -> dict[str, ModelSpec]:
    idx: dict[str, ModelSpec] = {}
    for m in _CATALOG:  # ids first so that no alias or short name shadows an id
        idx.setdefault(_key(m.id), m)
    for m in _CATALOG:
        for a in m.aliases:
            idx.setdefault(_key(a), m)
    for m in _CATALOG:
        idx.setdefault(_key(m.name), m)
    return idx


_INDEX = _index()


# --------------------------------------------------------------------------- config.json parsing

def estimate_params_b(cfg: Mapping[str, Any]) -> float:
    """Parameter count (billions) from the shapes in a HF config: embeddings, attention, MLP.

    Gated MLPs (llama, qwen, mistral, gemma, phi3) have 3 matrices, others 2; MoE configs
    count every expert. Norms and biases are ignored (<0.1%)."""
    h = int(cfg["hidden_size"])
    layers = int(cfg["num_hidden_layers"])
    heads = int(cfg["num_attention_heads"])
    kv = int(cfg.get("num_key_value_heads") or heads)
    hd = int(cfg.get("head_dim") or h // heads)
    vocab = int(cfg.get("vocab_size", 32000))
    inter = int(cfg.get("intermediate_size") or 4 * h)
    mtype = str(cfg.get("model_type", ""))
    encoder = mtype in _ENCODER_TYPES
    tied = bool(cfg.get("tie_word_embeddings", True if encoder else False))
    emb = vocab * h * (1 if tied else 2)
    if encoder:
        emb += int(cfg.get("max_position_embeddings", 512)) * h
    attn = h * heads * hd * 2 + 2 * h * kv * hd
    if "kv_lora_rank" in cfg:  # DeepSeek MLA: compressed KV projections
        r, rope = int(cfg["kv_lora_rank"]), int(cfg.get("qk_rope_head_dim", 64))
        attn = h * heads * hd + h * (r + rope) + r * heads * (hd - rope + int(cfg.get("v_head_dim", 128))) \
            + heads * int(cfg.get("v_head_dim", 128)) * h
    gated = mtype not in _ENCODER_TYPES and mtype not in ("gpt2", "biogpt", "starcoder2", "gpt_bigcode", "opt")
    n_mat = 3 if gated else 2
    experts = int(cfg.get("num_local_experts") or cfg.get("n_routed_experts") or cfg.get("num_experts") or 0)
    if experts:
        moe_inter = int(cfg.get("moe_intermediate_size") or inter)
        shared = int(cfg.get("n_shared_experts") or 0)
        mlp = n_mat * h * moe_inter * (experts + shared)
    else:
        mlp = n_mat * h * inter
    return round((emb + layers * (attn + mlp)) / 1e9, 6)


_ENCODER_TYPES = {"bert", "xlm-roberta", "roberta", "distilbert", "electra", "mpnet", "nomic_bert", "deberta-v2"}


def _dtype_of(cfg: Mapping[str, Any]) -> str:
    d = str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16").replace("torch.", "")
    return {"half": "float16", "fp16": "float16", "bf16": "bfloat16", "float": "float32"}.get(d, d)


def model_from_config(config: Mapping[str, Any], id: str) -> ModelSpec:
    """A :class:`ModelSpec` from a Hugging Face ``config.json`` mapping (pure; no I/O)."""
    cfg: dict[str, Any] = dict(config)
    text = cfg.get("text_config")
    if isinstance(text, Mapping):  # multimodal wrappers keep the language model here
        cfg = {**cfg, **{k: v for k, v in text.items() if v is not None}}
    for src, dst in (("n_layer", "num_hidden_layers"), ("n_embd", "hidden_size"), ("n_head", "num_attention_heads"),
                     ("num_layers", "num_hidden_layers"), ("n_positions", "max_position_embeddings"),
                     ("seq_length", "max_position_embeddings"), ("ffn_hidden_size", "intermediate_size")):
        if src in cfg and dst not in cfg:
            cfg[dst] = cfg[src]
    missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads") if k not in cfg]
    if missing:
        raise ValueError(f"{id}: config.json lacks {', '.join(missing)}; describe the model under `models:`")
    mtype = str(cfg.get("model_type", ""))
    heads = int(cfg["num_attention_heads"])
    h = int(cfg["hidden_size"])
    arch = (cfg.get("architectures") or [""])[0]
    qc = cfg.get("quantization_config") or {}
    method = qc.get("quant_method") or qc.get("quantization_method")
    bits = qc.get("bits") or qc.get("w_bit") or qc.get("num_bits")
    if method == "bitsandbytes":
        bits = 4 if qc.get("load_in_4bit") else 8 if qc.get("load_in_8bit") else bits
    if method == "compressed-tensors" and bits is None:
        groups = qc.get("config_groups") or {}
        for g in groups.values():
            w = (g or {}).get("weights") or {}
            bits = w.get("num_bits") or bits
    group = qc.get("group_size") or qc.get("q_group_size")
    sliding = cfg.get("sliding_window")
    if cfg.get("use_sliding_window") is False:  # Qwen2 configs carry a window they do not use
        sliding = None
    experts = int(cfg.get("num_local_experts") or cfg.get("n_routed_experts") or cfg.get("num_experts") or 0)
    inter = cfg.get("intermediate_size")
    if experts:
        top_k = int(cfg.get("num_experts_per_tok") or cfg.get("num_experts_per_token") or 2)
        width = int(cfg.get("moe_intermediate_size") or inter or 4 * h)
        inter = width * (top_k + int(cfg.get("n_shared_experts") or 0))
    encoder = mtype in _ENCODER_TYPES
    params = cfg.get("num_parameters") or cfg.get("n_params")
    params_b = float(params) / 1e9 if params else estimate_params_b(cfg)
    latent = None
    if "kv_lora_rank" in cfg:
        latent = int(cfg["kv_lora_rank"]) + int(cfg.get("qk_rope_head_dim", 64))
    head_dim = cfg.get("head_dim")
    if latent and not head_dim:
        head_dim = int(cfg.get("qk_nope_head_dim", 128)) + int(cfg.get("qk_rope_head_dim", 64))
    return ModelSpec(
        id=id,
        architecture=arch,
        model_type=mtype,
        params_b=params_b,
        num_layers=int(cfg["num_hidden_layers"]),
        hidden_size=h,
        num_attention_heads=heads,
        num_kv_heads=int(cfg.get("num_key_value_heads") or cfg.get("multi_query_group_num") or heads),
        head_dim=int(head_dim) if head_dim else None,
        intermediate_size=int(inter) if inter else None,
        max_position_embeddings=int(cfg.get("max_position_embeddings") or cfg.get("model_max_length") or 2048),
        vocab_size=int(cfg.get("vocab_size", 32000)),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", encoder)),
        native_dtype=_dtype_of(cfg),
        quantization=str(method).lower() if method else None,
        quant_bits=float(bits) if bits else None,
        quant_group_size=int(group) if group and int(group) > 0 else None,
        encoder_only=encoder,
        sliding_window=int(sliding) if sliding else None,
        attn_softcapping=bool(cfg.get("attn_logit_softcapping")),
        kv_latent_dim=latent,
        source=f"config.json of {id}" + ("" if params else " (parameters estimated from shapes)"),
    )


def _read_local(path: Path, id: str) -> ModelSpec:
    cfg = json.loads((path / "config.json").read_text())
    if "quantization_config" not in cfg:  # older AutoGPTQ / AutoAWQ repos keep it beside config.json
        for name in ("quantize_config.json", "quant_config.json"):
            if (path / name).is_file():
                q = json.loads((path / name).read_text())
                q.setdefault("quant_method", "gptq" if name == "quantize_config.json" else "awq")
                cfg["quantization_config"] = q
                break
    return model_from_config(cfg, id)


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _cache_file(model_id: str, cache_dir: str | os.PathLike[str] | None) -> Path:
    base = Path(cache_dir).expanduser() if cache_dir else HUB_CACHE_DIR.expanduser()
    return base / (model_id.replace("/", "--") + ".json")


def _fetch_hub(model_id: str, cache: Path) -> dict[str, Any]:
    import httpx

    headers = {}
    token = os.environ.get("HF_TOKEN")  # gated repos (meta-llama) need the user's token
    if token:
        headers["Authorization"] = f"Bearer {token}"
    url = f"https://huggingface.co/{model_id}/resolve/main/config.json"
    resp = httpx.get(url, timeout=HUB_TIMEOUT_S, follow_redirects=True, headers=headers)
    resp.raise_for_status()
    cfg = resp.json()
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps(cfg, indent=1))
    tmp.replace(cache)
    return cfg


def suggest(name: str, n: int = 3) -> list[str]:
    """Catalogue ids closest to ``name`` (difflib on ids, aliases and short names)."""
    key = _key(name)
    short = key.split("/")[-1]
    hits = difflib.get_close_matches(key, list(_INDEX), n=8, cutoff=0.5)
    hits += difflib.get_close_matches(short, list(_INDEX), n=8, cutoff=0.5)
    out: list[str] = []
    for h in hits:
        mid = _INDEX[h].id
        if mid not in out:
            out.append(mid)
    return out[:n]


def get_model(name_or_path: str, extra: Mapping[str, ModelSpec] | None = None, *, allow_network: bool = False,
              cache_dir: str | os.PathLike[str] | None = None) -> ModelSpec:
    """Resolve a model reference to its :class:`ModelSpec` (see module doc for the order)."""
    ref = str(name_or_path).strip()
    if extra:
        if ref in extra:
            return extra[ref]
        for k, v in extra.items():
            if _key(k) == _key(ref):
                return v
    hit = _INDEX.get(_key(ref))
    if hit is not None:
        return hit
    path = Path(ref).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return _read_local(path, ref)
    if _HUB_ID.match(ref):
        cache = _cache_file(ref, cache_dir)
        if cache.is_file():
            return model_from_config(json.loads(cache.read_text()), ref)
        if allow_network:
            try:
                return model_from_config(_fetch_hub(ref, cache), ref)
            except Exception as exc:  # noqa: BLE001 - any network/HTTP/JSON failure becomes one message
                raise UnknownModelError(
                    f"model {ref!r}: could not fetch its config.json from the hub ({type(exc).__name__}: {exc}). "
                    + _HOW_TO_FIX) from None
    close = suggest(ref)
    did = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    where = "not in the catalogue"
    if path.is_dir():
        where += f", and directory {str(path)!r} has no config.json"
    elif not allow_network and _HUB_ID.match(ref):
        where += ", not in the hub-config cache, and network lookups are off"
    raise UnknownModelError(f"unknown model {ref!r}: {where}.{did} " + _HOW_TO_FIX)


_HOW_TO_FIX = ("Describe it under the profile's `models:` section (params_b, num_layers, hidden_size, "
               "num_attention_heads, num_kv_heads, max_position_embeddings, ...), point `model:` at a local "
               "directory that contains its config.json, or allow network access (--online) to fetch and "
               "cache its config.json from the hub.")


def quantized_variant(model: ModelSpec, method: str) -> ModelSpec | None:
    """The catalogue checkpoint of ``model`` quantised with ``method`` (awq, gptq, ...), if one exists.

    ``awq_marlin`` / ``gptq_marlin`` map to their checkpoint formats. A model that already is
    quantised that way is returned as is. Prefers 4-bit when several exist."""
    m = method.lower().replace("-", "_")
    m = {"awq_marlin": "awq", "gptq_marlin": "gptq", "marlin": "gptq", "bnb": "bitsandbytes"}.get(m, m)
    if model.quantization == m:
        return model
    base = model.base_model or model.id
    found = [v for v in _CATALOG if v.base_model == base and v.quantization == m]
    found.sort(key=lambda v: (v.quant_bits or 99))
    return found[0] if found else None
