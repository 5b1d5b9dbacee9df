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
import functools
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from biofleet.catalog.checkpoint import CheckpointSize, checkpoint_from_dir, checkpoint_from_hub
from biofleet.catalog.vllm_rules import round_up

__all__ = [
    "HUB_CACHE_DIR",
    "MODELS",
    "QUANT_BITS",
    "MambaSpec",
    "ModelSpec",
    "UnknownModelError",
    "VisionSpec",
    "estimate_params_b",
    "get_model",
    "hybrid_layer_mix",
    "model_from_config",
    "quantized_variant",
]

HUB_CACHE_DIR = Path("~/.cache/biofleet/hub-configs")
HUB_TIMEOUT_S = 10.0
MAX_HUB_JSON_BYTES = 4 << 20  # config.json and hf_quant_config.json (which lists every excluded module) are < 1 MB

# bitsandbytes NF4 / FP4: 4 bits a weight and one absmax per block of 64. With double quantisation (Unsloth's copies,
# vLLM's own load-time quantisation) the absmax is 8-bit with an fp32 scale per 256 blocks: 4 + 8/64 + 32/16384 bits;
# without it (transformers' default) the absmax is fp32: 4 + 32/64. vLLM from 0.9.2 expands a double-quantised
# absmax back to fp32 as it loads (vllm_rules.VllmRules.bnb_absmax_fp32), so there every 4-bit weight costs 4.5 bits.
BNB_4BIT_DQ_BITS, BNB_4BIT_BITS = 4.13, 4.5

# Quantisation methods biofleet models (``quantization_config.quant_method``) and the
# weight bits they store when the config does not say. Any other method is *not* guessed:
# the model carries ``quant_bits=None`` and the fit-check warns and counts 16-bit weights.
QUANT_BITS: Mapping[str, float] = MappingProxyType({
    "awq": 4, "awq_marlin": 4, "gptq": 4, "gptq_marlin": 4, "marlin": 4, "bitsandbytes": BNB_4BIT_DQ_BITS, "fp8": 8,
    "fbgemm_fp8": 8, "mxfp4": 4.25, "compressed-tensors": 8, "experts_int8": 8, "squeezellm": 4, "aqlm": 2,
})


class VisionSpec(BaseModel):
    """The vision tower of a vision-language model: its weights and what vLLM's profiling pass
    feeds it (the largest image the processor makes, as many as the encoder budget holds)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    family: str  # qwen2_vl, llava, gemma3, phi3_v, ... ("other": weights only)
    params_b: float = Field(ge=0)  # vision encoder + projector parameters, billions (part of params_b)
    num_layers: int = Field(default=0, ge=0)
    hidden_size: int = Field(default=0, ge=0)
    intermediate_size: int = Field(default=0, ge=0)
    patches_per_item: int = Field(default=0, ge=0)  # encoder positions of the largest image
    tokens_per_item: int = Field(default=0, ge=0)  # language-model tokens that image becomes
    # Qwen3-VL's DeepStack: the encoder hands the language model features of this many intermediate layers
    # besides its merger's, each as wide as the text model (vLLM's encoder output is (1 + levels) x hidden wide)
    deepstack_levels: int = Field(default=0, ge=0, le=64)
    modelled: bool = True  # False: encoder profiling is not estimated (a warning says so)


def language_model_only(m: ModelSpec) -> ModelSpec:
    """The model as vLLM's text-only mode loads it: without its vision tower (the tower's parameters off the
    count, and their 16-bit bytes off a checkpoint read from disk)."""
    if m.vision is None:
        return m
    cut = int(m.vision.params_b * 1e9 * 2)
    update: dict[str, Any] = {"vision": None, "params_b": max(m.params_b - m.vision.params_b, 0.0)}
    ck = m.checkpoint
    if ck is not None and ck.total_bytes > cut:
        update["checkpoint"] = ck.model_copy(update={
            "total_bytes": ck.total_bytes - cut,
            "float_bytes": None if ck.float_bytes is None else max(ck.float_bytes - cut, 0),
            "source": f"{ck.source}, less the vision tower"})
    return m.model_copy(update=update)


class MambaSpec(BaseModel):
    """The Mamba2 mixers of a hybrid model (Nemotron-H ``hybrid_override_pattern`` 'M' layers): what each
    keeps per sequence. vLLM's ``MambaStateShapeCalculator.mamba2_state_shape``: a conv state of
    ``(conv_kernel - 1) x (heads x head_dim + 2 x n_groups x state_size)`` (model dtype) and an SSM state of
    ``heads x head_dim x state_size`` (``mamba_ssm_cache_dtype``), heads and groups split over TP."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    layers: int = Field(gt=0)
    heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    n_groups: int = Field(default=1, gt=0)
    state_size: int = Field(gt=0)
    conv_kernel: int = Field(default=4, gt=1)
    config_ssm_dtype: str | None = None  # the config's own mamba_ssm_cache_dtype, when it states one


class ModelSpec(BaseModel):
    """Architecture facts of one checkpoint. Only the first five fields are required, so a
    profile's ``models:`` section can describe an unknown model in a few lines."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    params_b: float = Field(gt=0)  # total parameters, billions
    num_layers: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    num_attention_heads: int = Field(gt=0)
    num_kv_heads: int | None = Field(default=None, gt=0)  # None: no GQA (= attention heads)
    head_dim: int | None = Field(default=None, gt=0)  # None: hidden_size / heads
    # Per-token MLP width the forward pass materialises: intermediate_size for dense
    # models, top_k x expert width (+ shared experts) for MoE. None: 4 x hidden.
    intermediate_size: int | None = Field(default=None, gt=0)
    max_position_embeddings: int = Field(default=4096, gt=0)
    # vLLM's derived maximum length when the config's rope_scaling stretches the positions
    # (see rope_scaled_length); None: max_position_embeddings.
    rope_scaled_context: int | None = Field(default=None, gt=0)
    vocab_size: int = Field(default=32000, gt=0)
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
    quantized_params_b: float | None = Field(default=None, gt=0)
    # In-memory / checkpoint size of the quantised tensors (vLLM pads some layouts).
    quant_storage_factor: float = Field(default=1.0, ge=1.0)
    encoder_only: bool = False  # BERT / XLM-R embedders: no KV cache
    sliding_window: int | None = None
    # Layers that use ``sliding_window`` (None: all of them when a window is set). Gemma-2
    # alternates (half), Gemma-3 keeps one full layer in six, Mistral-7B-v0.1 slides everywhere.
    sliding_layers: int | None = Field(default=None, ge=0)
    # Layers with a KV cache at all in linear-attention hybrids (Qwen3-Next, Kimi-Linear, Jamba):
    # the others keep a fixed-size recurrent state per sequence instead. None: every layer.
    kv_layers: int | None = Field(default=None, gt=0)
    num_experts: int | None = Field(default=None, gt=0)  # MoE: routed experts (all resident in memory)
    experts_per_token: int | None = Field(default=None, gt=0)
    vision: VisionSpec | None = None  # vision-language models
    multimodal_unmodelled: str | None = None  # a non-vision modality vLLM loads that is not counted
    torch_dtype_missing: bool = False  # config.json has no torch_dtype: vLLM reads float32
    checkpoint: CheckpointSize | None = None  # the safetensors at hand (local dir or --online)
    attn_softcapping: bool = False  # Gemma-2 attention logit soft-capping
    kv_latent_dim: int | None = None  # MLA (DeepSeek-V2): cached latent per token per layer
    # Gemma-4: the full-attention layers have their own K/V heads and head size (global_head_dim 512 with
    # num_global_key_value_heads) beside the sliding layers' (head_dim, num_kv_heads); None: the same
    global_kv_heads: int | None = Field(default=None, gt=0)
    global_head_dim: int | None = Field(default=None, gt=0)
    mamba: MambaSpec | None = None  # Mamba2 hybrid: its per-sequence state (kv_layers: the attention layers)
    # Gated DeltaNet layers (Qwen3-Next / Qwen3.5): (conv state, recurrent state) elements per layer and sequence
    # at TP 1 -- (conv_kernel - 1) x (2 x key heads x key dim + value heads x value dim), value heads x key dim x
    # value dim (vLLM ``MambaStateShapeCalculator.gated_delta_net_state_shape``)
    linear_state: tuple[int, int] | None = None
    linear_ssm_dtype: str | None = None  # Qwen3.5's text config ``mamba_ssm_dtype``: its recurrent state's dtype
    base_model: str | None = None  # the unquantised model this checkpoint derives from
    matched_by_name: str | None = None  # another org's copy, resolved to this catalogue id by its repo name
    # RoPE: the positions of the cos/sin tables vLLM builds as the model loads, one per distinct rope setting
    # (rope_cache_positions); None: one table of max_position_embeddings, 0: no rotary embedding. rotary_dim: the
    # rotated width (None: head_dim; 64 for MLA). See fitcheck.rope_cache_gib.
    rope_cache_positions: int | None = Field(default=None, ge=0)
    rotary_dim: int | None = Field(default=None, gt=0)
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
            if self.quant_bits is None and self.quantization in QUANT_BITS:
                object.__setattr__(self, "quant_bits", QUANT_BITS[self.quantization])
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
        return self.rope_scaled_context or self.max_position_embeddings

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


_Q2 = {"architecture": "Qwen2ForCausalLM", "model_type": "qwen2", "head_dim": 128}
_LLAMA = {"architecture": "LlamaForCausalLM", "model_type": "llama"}
_MISTRAL = {"architecture": "MistralForCausalLM", "model_type": "mistral"}
_PHI3 = {"architecture": "Phi3ForCausalLM", "model_type": "phi3"}
_CFG = "config.json on the Hugging Face hub"
_QWEN3 = {"architecture": "Qwen3ForCausalLM", "model_type": "qwen3", "head_dim": 128}
_QWEN3_MOE = {"architecture": "Qwen3MoeForCausalLM", "model_type": "qwen3_moe", "head_dim": 128, "experts_per_token": 8}
# rope: the global layers' linear x8 table (131,072 x 8 rows) and the sliding layers' own (rope_local_base_freq)
_GEMMA3 = {"architecture": "Gemma3ForConditionalGeneration", "model_type": "gemma3", "tie_word_embeddings": True,
               "sliding_window": 1024, "rope_cache_positions": 9 * 131072}
# Vision towers (vision_config of each family; parameter counts of the encoder + projector):
# CLIP ViT-L/14-336 (LLaVA-1.5/1.6, Phi-3-vision): 24 layers x 1024, MLP 4096, 577 positions per view.
# SigLIP-So400m (Gemma-3 896 px, 4096 patches -> 256 tokens; granite-vision 384 px tiles of 729).
# Qwen2-VL / Qwen2.5-VL ViT: 32 layers x 1280; the largest image (max_pixels 12845056) is 65536
# patches merged 2x2 into 16384 language-model tokens.
_PHI3_VISION = VisionSpec(family="phi3_v", params_b=0.30, num_layers=24, hidden_size=1024, intermediate_size=4096,
                          patches_per_item=17 * 577, tokens_per_item=17 * 144 + 16)
_GEMMA3_VISION = VisionSpec(family="gemma3", params_b=0.42, num_layers=27, hidden_size=1152, intermediate_size=4304,
                            patches_per_item=4096, tokens_per_item=256)
_QWEN2_VL_VISION = VisionSpec(family="qwen2_vl", params_b=0.675, num_layers=32, hidden_size=1280,
                              intermediate_size=5120, patches_per_item=65536, tokens_per_item=16384)
_QWEN25_VL_VISION = VisionSpec(family="qwen2_vl", params_b=0.67, num_layers=32, hidden_size=1280,
                               intermediate_size=3420, patches_per_item=65536, tokens_per_item=16384)


def _build_v2() -> list[ModelSpec]:
    """Families added for fit-check v2: MoE, MLA, very large and vision-language models, and the
    models of the calibration cases. Numbers are the published config.json values; ``params_b``
    the model card / safetensors total (vision tower included)."""
    out: list[ModelSpec] = []
    add = out.append

    # ---- Mixtral (MoE: every expert resident; activation width = top-2 x expert width)
    add(_m("mistralai/Mixtral-8x7B-Instruct-v0.1", 46.70, 32, 4096, 32, 8, 2 * 14336, 32000, 32768,
           architecture="MixtralForCausalLM", model_type="mixtral", num_experts=8, experts_per_token=2,
           aliases=("mixtral-8x7b", "mixtral-8x7b-instruct", "mistralai/Mixtral-8x7B-v0.1"),
           source=_CFG + " (8 experts of 14336, top-2)"))
    add(_m("mistralai/Mixtral-8x22B-Instruct-v0.1", 140.62, 56, 6144, 48, 8, 2 * 16384, 32768, 65536,
           architecture="MixtralForCausalLM", model_type="mixtral", num_experts=8, experts_per_token=2,
           aliases=("mixtral-8x22b",), source=_CFG + " (8 experts of 16384, top-2)"))

    # ---- Qwen3 dense, embedding and MoE
    q3_4 = _m("Qwen/Qwen3-4B", 4.02, 36, 2560, 32, 8, 9728, 151936, 40960, tie_word_embeddings=True, **_QWEN3,
              aliases=("qwen3-4b",), source=_CFG)
    q3_8 = _m("Qwen/Qwen3-8B", 8.19, 36, 4096, 32, 8, 12288, 151936, 40960, **_QWEN3, aliases=("qwen3-8b",),
              source=_CFG)
    q3_14 = _m("Qwen/Qwen3-14B", 14.77, 40, 5120, 40, 8, 17408, 151936, 40960, **_QWEN3, aliases=("qwen3-14b",),
               source=_CFG)
    q3_32 = _m("Qwen/Qwen3-32B", 32.76, 64, 5120, 64, 8, 25600, 151936, 40960, **_QWEN3, aliases=("qwen3-32b",),
               source=_CFG)
    # DeepSeek-R1-0528-Qwen3-8B: "identical to Qwen3-8B" (its model card), its context stretched to 131,072 tokens
    add(_m("deepseek-ai/DeepSeek-R1-0528-Qwen3-8B", 8.19, 36, 4096, 32, 8, 12288, 151936, 131072, **_QWEN3,
           aliases=("deepseek-r1-0528-qwen3-8b",), source=_CFG + " (the Qwen3-8B shape)"))
    for spec in (q3_4, q3_8, q3_14, q3_32):
        add(spec)
        add(_quant(spec, spec.id + "-AWQ", "awq", 4, aliases=(spec.name.lower() + "-awq",)))
        add(_quant(spec, spec.id + "-FP8", "fp8", 8, group=None, dtype="bfloat16",
                   source=_CFG + " (block-wise FP8, 128x128 scales)"))
    add(_m("Qwen/Qwen3-Embedding-4B", 4.02, 36, 2560, 32, 8, 9728, 151665, 40960, tie_word_embeddings=True,
           **_QWEN3, aliases=("qwen3-embedding-4b",), source=_CFG + " (decoder embedder: keeps a KV cache)"))
    add(_m("Qwen/Qwen3-Embedding-8B", 7.57, 36, 4096, 32, 8, 12288, 151665, 40960, tie_word_embeddings=True,
           **_QWEN3, aliases=("qwen3-embedding-8b",), source=_CFG))
    q3_30 = _m("Qwen/Qwen3-30B-A3B", 30.53, 48, 2048, 32, 4, 8 * 768, 151936, 40960, num_experts=128,
               **_QWEN3_MOE, aliases=("qwen3-30b-a3b",), source=_CFG + " (128 experts of 768, top-8)")
    q3_30_2507 = q3_30.model_copy(update={
        "id": "Qwen/Qwen3-30B-A3B-Instruct-2507", "max_position_embeddings": 262144,
        "aliases": ("qwen3-30b-a3b-instruct-2507", "Qwen/Qwen3-30B-A3B-Thinking-2507"),
        "source": _CFG + " (Qwen3-30B-A3B shape, 262144 context)"})
    for spec in (q3_30, q3_30_2507):
        add(spec)
        add(_quant(spec, spec.id + "-FP8", "fp8", 8, group=None, dtype="bfloat16",
                   source=_CFG + " (block-wise FP8; router and embeddings 16-bit)"))
    add(_quant(q3_30_2507, "cpatonn/Qwen3-30B-A3B-Thinking-2507-AWQ-4bit", "compressed-tensors", 4,
               aliases=("cpatonn/Qwen3-30B-A3B-Instruct-2507-AWQ-4bit",),
               source=_CFG + " (compressed-tensors W4A16, group 128)"))
    q3_235 = _m("Qwen/Qwen3-235B-A22B", 235.09, 94, 4096, 64, 4, 8 * 1536, 151936, 40960, num_experts=128,
                **_QWEN3_MOE, aliases=("qwen3-235b-a22b",), source=_CFG + " (128 experts of 1536, top-8)")
    add(q3_235)
    add(_quant(q3_235, "Qwen/Qwen3-235B-A22B-FP8", "fp8", 8, group=None, dtype="bfloat16",
               source=_CFG + " (block-wise FP8)"))

    # ---- Qwen2.5 sizes the seeds did not name
    q25_3 = _m("Qwen/Qwen2.5-3B-Instruct", 3.09, 36, 2048, 16, 2, 11008, 151936, 32768, tie_word_embeddings=True,
               **_Q2, aliases=("qwen2.5-3b", "Qwen/Qwen2.5-3B"), source=_CFG)
    q25_72 = _m("Qwen/Qwen2.5-72B-Instruct", 72.71, 80, 8192, 64, 8, 29568, 152064, 32768, **_Q2,
                aliases=("qwen2.5-72b",), source=_CFG)
    add(q25_3)
    add(q25_72)
    add(_quant(q25_72, "Qwen/Qwen2.5-72B-Instruct-AWQ", "awq", 4))
    r1_32 = _m("deepseek-ai/DeepSeek-R1-Distill-Qwen-32B", 32.76, 64, 5120, 40, 8, 27648, 152064, 131072, **_Q2,
               aliases=("deepseek-r1-distill-qwen-32b",), source=_CFG + " (Qwen2.5-32B shape)")
    add(r1_32)
    add(_quant(r1_32, "RedHatAI/DeepSeek-R1-Distill-Qwen-32B-FP8-dynamic", "compressed-tensors", 8, group=None,
               dtype="bfloat16", aliases=("DeepSeek-R1-Distill-Qwen-32B-FP8",),
               source=_CFG + " (compressed-tensors FP8 W8A8; lm_head 16-bit)"))

    # ---- Llama: 405B, FP8 / W4A16 releases, CodeLlama base models
    l405 = _m("meta-llama/Llama-3.1-405B-Instruct", 405.85, 126, 16384, 128, 8, 53248, 128256, 131072, **_LLAMA,
              aliases=("meta-llama/Meta-Llama-3.1-405B-Instruct", "llama-3.1-405b"), source=_CFG)
    add(l405)
    # Meta's FP8 release quantises only the MLPs of layers 1-124 (fbgemm_fp8 modules_to_not_convert keeps
    # attention and the first / last MLP in bf16): 124 x 3 x 16384 x 53248 = 324.5e9 parameters at 8 bits.
    add(_quant(l405, "meta-llama/Llama-3.1-405B-Instruct-FP8", "fbgemm_fp8", 8, group=None, dtype="bfloat16",
               quantized_params_b=324.5, aliases=("meta-llama/Meta-Llama-3.1-405B-Instruct-FP8",),
               source=_CFG + " (fbgemm_fp8: MLPs of layers 1-124 at 8 bits, attention bf16)"))
    # bases of the quantised releases below (the 16-bit entries themselves are in _build)
    l33_70 = _m("meta-llama/Llama-3.3-70B-Instruct", 70.55, 80, 8192, 64, 8, 28672, 128256, 131072,
                **_LLAMA)
    add(_quant(l33_70, "RedHatAI/Llama-3.3-70B-Instruct-FP8-dynamic", "compressed-tensors", 8, group=None,
               dtype="bfloat16", source=_CFG + " (compressed-tensors FP8 W8A8 dynamic; lm_head 16-bit)"))
    l31_8 = _m("meta-llama/Llama-3.1-8B-Instruct", 8.03, 32, 4096, 32, 8, 14336, 128256, 131072, **_LLAMA)
    add(_quant(l31_8, "RedHatAI/Meta-Llama-3.1-8B-Instruct-quantized.w4a16", "compressed-tensors", 4,
               source=_CFG + " (compressed-tensors W4A16, group 128; lm_head 16-bit)"))
    add(_quant(l31_8, "RedHatAI/Meta-Llama-3.1-8B-Instruct-FP8", "compressed-tensors", 8, group=None,
               dtype="bfloat16", source=_CFG + " (compressed-tensors FP8 W8A8)"))
    cl13 = _m("codellama/CodeLlama-13b-Instruct-hf", 13.02, 40, 5120, 40, 40, 13824, 32016, 16384, **_LLAMA,
              native_dtype="float16", aliases=("TheBloke/CodeLlama-13B-Instruct-fp16", "codellama-13b"),
              source=_CFG)
    add(cl13)
    add(_m("codellama/CodeLlama-34b-hf", 33.74, 48, 8192, 64, 8, 22016, 32000, 16384, **_LLAMA,
           source=_CFG + " (base model of CodeLlama-34b-Instruct)"))

    # ---- DeepSeek MoE + MLA (one 512 + 64 latent cached per layer, replicated on every TP rank)
    add(_m("deepseek-ai/DeepSeek-V2-Lite-Chat", 15.71, 27, 2048, 16, 16, 8 * 1408, 102400, 163840,
           architecture="DeepseekV2ForCausalLM", model_type="deepseek_v2", head_dim=192, kv_latent_dim=576,
           num_experts=64, experts_per_token=6, aliases=("deepseek-ai/DeepSeek-V2-Lite", "deepseek-v2-lite"),
           source=_CFG + " (64 experts of 1408, top-6 + 2 shared; MLA)"))
    add(_m("deepseek-ai/DeepSeek-V3", 671.03, 61, 7168, 128, 128, 9 * 2048, 129280, 163840,
           architecture="DeepseekV3ForCausalLM", model_type="deepseek_v3", head_dim=192, kv_latent_dim=576,
           num_experts=256, experts_per_token=8, quantization="fp8", quant_bits=8, native_dtype="bfloat16",
           aliases=("deepseek-v3", "deepseek-ai/DeepSeek-R1", "deepseek-ai/DeepSeek-V3-0324", "deepseek-r1",
                    "deepseek-ai/DeepSeek-V3.1", "deepseek-ai/DeepSeek-R1-0528", "deepseek-ai/DeepSeek-V3.1-Terminus",
                    "deepseek-ai/DeepSeek-V3-Base", "deepseek-ai/DeepSeek-V3.1-Base", "deepseek-ai/DeepSeek-R1-Zero"),
           source=_CFG + " (256 experts of 2048, top-8 + 1 shared; MLA; block-wise FP8 checkpoint; the "
                         "14B multi-token-prediction layer is not loaded for serving; V3.1's shape is V3's: "
                         "NVIDIA's copy of its config.json differs only in transformers_version; R1, R1-0528, "
                         "R1-Zero, the Base checkpoints and V3.1-Terminus are the same architecture retrained: "
                         "V3.2's sparse-attention indexer is not)"))

    # ---- Gemma (7B base, Gemma-2 27B, Gemma-3 with its SigLIP tower; one global layer in six)
    add(_m("google/gemma-7b-it", 8.54, 28, 3072, 16, 16, 24576, 256000, 8192, architecture="GemmaForCausalLM",
           model_type="gemma", head_dim=256, tie_word_embeddings=True, aliases=("google/gemma-7b", "gemma-7b"),
           source=_CFG))
    add(_m("google/gemma-2-27b-it", 27.23, 46, 4608, 32, 16, 36864, 256000, 8192, architecture="Gemma2ForCausalLM",
           model_type="gemma2", head_dim=128, tie_word_embeddings=True, sliding_window=4096, sliding_layers=23,
           attn_softcapping=True, aliases=("gemma-2-27b",), source=_CFG))
    add(_m("google/gemma-3-1b-it", 1.0, 26, 1152, 4, 1, 6912, 262144, 32768, architecture="Gemma3ForCausalLM",
           model_type="gemma3_text", head_dim=256, tie_word_embeddings=True, sliding_window=512, sliding_layers=22,
           rope_cache_positions=2 * 32768,
           aliases=("gemma-3-1b",), source=_CFG + " (text only)"))
    add(_m("google/gemma-3-4b-it", 4.30, 34, 2560, 8, 4, 10240, 262208, 131072, head_dim=256, sliding_layers=29,
           vision=_GEMMA3_VISION, **_GEMMA3, aliases=("gemma-3-4b",), source=_CFG + " (SigLIP tower included)"))
    add(_m("google/gemma-3-12b-it", 12.19, 48, 3840, 16, 8, 15360, 262208, 131072, head_dim=256, sliding_layers=40,
           vision=_GEMMA3_VISION, **_GEMMA3, aliases=("gemma-3-12b",), source=_CFG + " (SigLIP tower included)"))
    add(_m("google/gemma-3-27b-it", 27.43, 62, 5376, 32, 16, 21504, 262208, 131072, head_dim=128, sliding_layers=52,
           vision=_GEMMA3_VISION, **_GEMMA3, aliases=("gemma-3-27b",), source=_CFG + " (SigLIP tower included)"))
    # Google's QAT int4 weights repacked as AWQ by gau-nernst/gemma3-int4 (convert_flax.py, format awq): every
    # language linear in groups of 32 weights (the QAT blocks) with bf16 scales and packed zero points, the
    # embeddings and the SigLIP tower left 16-bit; a group-128 reading was 1.8 GiB light on the 27B (cases 2001,
    # 2002: 17.61 GiB loaded)
    for g3 in [spec for spec in out if spec.id.startswith("google/gemma-3-")]:
        size = g3.id.removeprefix("google/gemma-3-").removesuffix("-it")
        add(_quant(g3, f"gaunernst/gemma-3-{size}-it-int4-awq", "awq", 4, group=32,
                   source=f"gau-nernst/gemma3-int4 convert_flax.py (AWQ, groups of 32, embeddings and tower "
                   f"16-bit); shape of {g3.id}"))

    # ---- Vision-language models (tower parameters included in params_b)
    qvl = {"architecture": "Qwen2VLForConditionalGeneration", "model_type": "qwen2_vl", "head_dim": 128}
    q25vl = {"architecture": "Qwen2_5_VLForConditionalGeneration", "model_type": "qwen2_5_vl", "head_dim": 128}
    add(_m("Qwen/Qwen2-VL-2B-Instruct", 2.21, 28, 1536, 12, 2, 8960, 151936, 32768, tie_word_embeddings=True,
           vision=_QWEN2_VL_VISION, **qvl, aliases=("qwen2-vl-2b",), source=_CFG))
    add(_m("Qwen/Qwen2-VL-7B-Instruct", 8.29, 28, 3584, 28, 4, 18944, 152064, 32768, vision=_QWEN2_VL_VISION,
           **qvl, aliases=("qwen2-vl-7b",), source=_CFG))
    add(_m("Qwen/Qwen2-VL-72B-Instruct", 73.41, 80, 8192, 64, 8, 29568, 152064, 32768, vision=_QWEN2_VL_VISION,
           **qvl, aliases=("qwen2-vl-72b",), source=_CFG + " (the Qwen2.5-VL-72B language model, 32,768 positions)"))
    add(_m("Qwen/Qwen2.5-VL-3B-Instruct", 3.75, 36, 2048, 16, 2, 11008, 151936, 128000, tie_word_embeddings=True,
           vision=_QWEN25_VL_VISION, **q25vl, aliases=("qwen2.5-vl-3b",), source=_CFG))
    add(_m("Qwen/Qwen2.5-VL-7B-Instruct", 8.29, 28, 3584, 28, 4, 18944, 152064, 128000, vision=_QWEN25_VL_VISION,
           **q25vl, aliases=("qwen2.5-vl-7b",), source=_CFG))
    add(_m("Qwen/Qwen2.5-VL-32B-Instruct", 33.45, 64, 5120, 40, 8, 27648, 152064, 128000, vision=_QWEN25_VL_VISION,
           **q25vl, aliases=("qwen2.5-vl-32b",), source=_CFG))
    add(_m("Qwen/Qwen2.5-VL-72B-Instruct", 73.41, 80, 8192, 64, 8, 29568, 152064, 128000, vision=_QWEN25_VL_VISION,
           **q25vl, aliases=("qwen2.5-vl-72b",), source=_CFG))
    add(_m("Qwen/Qwen3-VL-Embedding-2B", 2.13, 28, 2048, 16, 8, 6144, 151936, 262144, tie_word_embeddings=True,
           architecture="Qwen3VLForConditionalGeneration", model_type="qwen3_vl", head_dim=128,
           vision=VisionSpec(family="qwen3_vl", params_b=0.41, num_layers=24, hidden_size=1024,
                             intermediate_size=4096, patches_per_item=65536, tokens_per_item=16384,
                             deepstack_levels=3),
           aliases=("Qwen/Qwen3-VL-2B-Instruct", "qwen3-vl-2b"),
           source=_CFG + " (Qwen3-VL-2B shape; parameters estimated from the shapes)"))
    clip336 = VisionSpec(family="llava", params_b=0.32, num_layers=24, hidden_size=1024, intermediate_size=4096,
                         patches_per_item=577, tokens_per_item=576)
    add(_m("llava-hf/llava-1.5-7b-hf", 7.06, 32, 4096, 32, 32, 11008, 32064, 4096, **_LLAMA, native_dtype="float16",
           vision=clip336, aliases=("llava-1.5-7b",), source=_CFG + " (Vicuna-7B + CLIP ViT-L/14-336)"))
    add(_m("llava-hf/llava-v1.6-mistral-7b-hf", 7.57, 32, 4096, 32, 8, 14336, 32064, 32768, **_MISTRAL,
           vision=clip336.model_copy(update={"patches_per_item": 5 * 577, "tokens_per_item": 5 * 576 + 48}),
           aliases=("llava-1.6-mistral-7b",), source=_CFG + " (anyres: base view + 4 tiles)"))
    add(_m("microsoft/Phi-3.5-vision-instruct", 4.15, 32, 3072, 32, 32, 8192, 32064, 131072,
           architecture="Phi3VForCausalLM", model_type="phi3_v",
           vision=_PHI3_VISION.model_copy(update={"patches_per_item": 5 * 577, "tokens_per_item": 5 * 144 + 4}),
           aliases=("phi-3.5-vision",), source=_CFG + " (num_crops 4 by default)"))
    add(_m("ibm-granite/granite-vision-3.3-2b", 2.97, 40, 2048, 32, 8, 8192, 49156, 131072, head_dim=64,
           architecture="LlavaNextForConditionalGeneration", model_type="llava_next", tie_word_embeddings=True,
           vision=VisionSpec(family="llava", params_b=0.44, num_layers=27, hidden_size=1152, intermediate_size=4304,
                             patches_per_item=11 * 729, tokens_per_item=11 * 729),
           aliases=("granite-vision-3.3-2b",),
           source=_CFG + " (granite-3.1-2b text model + SigLIP-384 tiles; parameters from the parts)"))
    add(_m("moonshotai/Kimi-VL-A3B-Instruct", 16.41, 27, 2048, 16, 16, 8 * 1408, 163840, 131072,
           architecture="KimiVLForConditionalGeneration", model_type="kimi_vl", head_dim=192, kv_latent_dim=576,
           num_experts=64, experts_per_token=6,
           vision=VisionSpec(family="other", params_b=0.41, num_layers=27, hidden_size=1152, intermediate_size=4304,
                             modelled=False),
           aliases=("kimi-vl-a3b",), source=_CFG + " (DeepSeek-V3-style MoE + MLA text model, MoonViT tower)"))
    return out


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
               aliases=("meta-llama/Meta-Llama-3.1-8B-Instruct", "llama-3.1-8b", "llama3.1-8b",
                        "llama-3.1-8b-instruct"),
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
                         "llama-3.1-70b", "llama-3.1-70b-instruct", "nvidia/Llama-3.1-Nemotron-70B-Instruct-HF"),
                source=_CFG + "; unsloth/ mirror is the same checkpoint (calibration #45); NVIDIA's Nemotron-70B "
                       "fine-tune has its shape (an AWQ copy's config.json, round 7)")
    add(l31_70)
    add(_m("meta-llama/Llama-3.3-70B-Instruct", 70.55, 80, 8192, 64, 8, 28672, 128256, 131072, **_LLAMA,
           aliases=("unsloth/Llama-3.3-70B-Instruct", "llama-3.3-70b"), source=_CFG))
    add(_m("meta-llama/Llama-2-70b-hf", 68.98, 80, 8192, 64, 8, 28672, 32000, 4096, **_LLAMA,
           native_dtype="float16",
           aliases=("meta-llama/Llama-2-70b", "llama-2-70b", "meta-llama/Llama-2-70b-chat-hf"),
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
           aliases=("deepseek-math-7b", "deepseek-ai/deepseek-math-7b-rl", "deepseek-ai/deepseek-math-7b-base"),
           source=_CFG + " (the -rl and -base checkpoints share the shape)"))
    # DeepSeek LLM 7B: the Llama layout, multi-head attention, a 102,400-token vocabulary, 4,096 positions
    add(_m("deepseek-ai/deepseek-llm-7b-chat", 6.91, 30, 4096, 32, 32, 11008, 102400, 4096, **_LLAMA,
           aliases=("deepseek-llm-7b", "deepseek-ai/deepseek-llm-7b-base"), source=_CFG))
    # MLA caches one latent of kv_lora_rank 512 + rope dim 64 per token per layer (vLLM MLA backend).
    add(_m("deepseek-ai/DeepSeek-Coder-V2-Lite-Instruct", 15.71, 27, 2048, 16, 16, 11264, 102400, 163840,
           architecture="DeepseekV2ForCausalLM", model_type="deepseek_v2", head_dim=192, kv_latent_dim=576,
           num_experts=64, experts_per_token=6, aliases=("deepseek-coder-v2-lite",),
           source=_CFG + " (MoE 64 experts top-6 + 2 shared, width 1408; MLA)"))
    add(_m("deepseek-ai/DeepSeek-Coder-V2-Instruct", 235.74, 60, 5120, 128, 128, 12288, 102400, 163840,
           architecture="DeepseekV2ForCausalLM", model_type="deepseek_v2", head_dim=192, kv_latent_dim=576,
           num_experts=160, experts_per_token=6, aliases=("deepseek-coder-v2",),
           source=_CFG + " (MoE 160 experts top-6 + 2 shared, width 1536; MLA)"))

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
           architecture="Phi3VForCausalLM", model_type="phi3_v", aliases=("phi-3-vision",), vision=_PHI3_VISION,
           source=_CFG + " (phi-3-mini text stack + CLIP ViT-L); calibration #51"))

    # ---- Gemma (seeds 001, 004; calibration #63)
    add(_m("google/gemma-2b-it", 2.51, 18, 2048, 8, 1, 16384, 256000, 8192, architecture="GemmaForCausalLM",
           model_type="gemma", head_dim=256, tie_word_embeddings=True,
           aliases=("gemma-2b", "gemma-2b-it", "google/gemma-2b"),
           source=_CFG + " (the base google/gemma-2b has the same shape)"))
    add(_m("google/codegemma-7b-it", 8.54, 28, 3072, 16, 16, 24576, 256000, 8192, architecture="GemmaForCausalLM",
           model_type="gemma", head_dim=256, tie_word_embeddings=True, aliases=("codegemma-7b",), source=_CFG))
    g2_2 = _m("google/gemma-2-2b-it", 2.61, 26, 2304, 8, 4, 9216, 256000, 8192, architecture="Gemma2ForCausalLM",
              model_type="gemma2", head_dim=256, tie_word_embeddings=True, native_dtype="float32",
              sliding_window=4096, sliding_layers=13, attn_softcapping=True, aliases=("gemma-2-2b", "gemma-2-2b-it"),
              source=_CFG + " (torch_dtype float32); calibration #63")
    g2_9 = _m("google/gemma-2-9b-it", 9.24, 42, 3584, 16, 8, 14336, 256000, 8192, architecture="Gemma2ForCausalLM",
              model_type="gemma2", head_dim=256, tie_word_embeddings=True, sliding_window=4096, sliding_layers=21,
              attn_softcapping=True, aliases=("gemma-2-9b", "gemma-2-9b-it"), source=_CFG)
    add(g2_2)
    add(g2_9)
    add(_quant(g2_9, "hugging-quants/gemma-2-9b-it-AWQ-INT4", "awq", 4, aliases=("gemma-2-9b-awq",)))

    # ---- Other code / bio generators
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
    # 120b 36 x 128 x 3 x 2880^2 = 114.66e9. Without a checkpoint the fit-check sizes the experts per
    # MXFP4 kernel from these shapes (vllm_rules.mxfp4_expert_bytes); quant_storage_factor, the
    # FlashInfer padding 2880 -> 3072 on both dims, (3072/2880)^2 = 1.138, only scales the packed
    # tensors of a checkpoint read from disk (the largest layout). intermediate_size = top-4 x 2880.
    add(_m("openai/gpt-oss-20b", 20.91, 24, 2880, 64, 8, 11520, 201088, 131072, architecture="GptOssForCausalLM",
           model_type="gpt_oss", head_dim=64, sliding_window=128, sliding_layers=12, num_experts=32,
           experts_per_token=4, quantization="mxfp4", quant_bits=4.25, quantized_params_b=19.11,
           quant_storage_factor=1.1378, aliases=("gpt-oss-20b",),
           source=_CFG + " (MoE 32 experts top-4, alternating 128-token sliding window); calibration #42"))
    add(_m("openai/gpt-oss-120b", 116.83, 36, 2880, 64, 8, 11520, 201088, 131072, architecture="GptOssForCausalLM",
           model_type="gpt_oss", head_dim=64, sliding_window=128, sliding_layers=18, num_experts=128,
           experts_per_token=4, quantization="mxfp4", quant_bits=4.25, quantized_params_b=114.66,
           quant_storage_factor=1.1378, aliases=("gpt-oss-120b",),
           source=_CFG + " (MoE 128 experts top-4); calibration #30"))
    out += _build_v2()
    out += _build_v3()
    out += _build_published()
    return tuple(out)




# --------------------------------------------------------------------------- config.json parsing

def hybrid_layer_mix(cfg: Mapping[str, Any]) -> dict[str, int] | None:
    """Layer counts of a Nemotron-H style hybrid: ``hybrid_override_pattern`` gives one character per layer,
    ``M`` a Mamba2 mixer, ``*`` attention, ``-`` an MLP, ``E`` a MoE block (vLLM's ``nemotron_h.py``
    ``ALL_DECODER_LAYER_TYPES``). None for other configs."""
    pattern = cfg.get("hybrid_override_pattern")
    names = {"M": "mamba", "*": "attention", "-": "mlp", "E": "moe"}
    kinds = _nemotron_block_list(cfg)
    if (not isinstance(pattern, str) or not pattern) and kinds:
        unknown_kinds = sorted({str(k) for k in kinds} - set(names.values()))
        if unknown_kinds:
            raise ValueError(f"layers_block_type has layer kinds {unknown_kinds} that are not modelled "
                             f"(known: {', '.join(names.values())})")
        return {name: sum(1 for k in kinds if k == name) for name in names.values()}
    if not isinstance(pattern, str) or not pattern:
        return None
    unknown = sorted(set(pattern) - set(names))
    if unknown:
        raise ValueError(f"hybrid_override_pattern has layer kinds {unknown} that are not modelled "
                         "(known: M = Mamba2, * = attention, - = MLP, E = MoE)")
    return {name: pattern.count(ch) for ch, name in names.items()}


def _nemotron_block_list(cfg: Mapping[str, Any]) -> list[Any] | None:
    """Nemotron-H's layer kinds as a list of names (files written by transformers 5), else None. Jamba's
    ``layers_block_type`` (Mamba-1 layers) is not this."""
    kinds = cfg.get("layers_block_type") if cfg.get("model_type") == "nemotron_h" else None
    return kinds if isinstance(kinds, list) and kinds else None


def _mamba_of(cfg: Mapping[str, Any], mix: Mapping[str, int] | None) -> MambaSpec | None:
    if not mix or not mix.get("mamba"):
        return None
    h = int(cfg["hidden_size"])
    heads = int(cfg.get("mamba_num_heads") or 0) or None
    head_dim = int(cfg.get("mamba_head_dim") or 0) or None
    if heads is None or head_dim is None:  # Mamba2 defaults: d_inner = expand x hidden, 64-wide heads
        head_dim = head_dim or 64
        heads = heads or int(cfg.get("expand", 2)) * h // head_dim
    ssm = cfg.get("mamba_ssm_cache_dtype")
    return MambaSpec(layers=mix["mamba"], heads=heads, head_dim=head_dim, n_groups=int(cfg.get("n_groups") or 1),
                     state_size=int(cfg.get("ssm_state_size") or cfg.get("state_size") or 128),
                     conv_kernel=int(cfg.get("conv_kernel") or cfg.get("mamba_d_conv") or 4),
                     config_ssm_dtype=str(ssm) if ssm else None)


def _mamba2_params(h: int, m: MambaSpec) -> int:
    """One Mamba2 mixer: in_proj (z, x, B, C, dt), the depthwise conv over x, B, C (with bias), A, D, dt_bias,
    the gated norm and out_proj (vLLM ``MambaMixer2``)."""
    inner = m.heads * m.head_dim
    conv_dim = inner + 2 * m.n_groups * m.state_size
    return h * (2 * inner + 2 * m.n_groups * m.state_size + m.heads) + conv_dim * (m.conv_kernel + 1) \
        + 3 * m.heads + inner + inner * h


def estimate_params_b(cfg: Mapping[str, Any]) -> float:
    """Parameter count (billions) from the shapes in a HF config: embeddings, attention, MLP.

    Gated MLPs (llama, qwen, mistral, gemma, phi3) have 3 matrices, others 2; MoE configs
    count every expert. Norms and biases are ignored (<0.1%)."""
    h = int(cfg["hidden_size"])
    layers = int(cfg["num_hidden_layers"])
    heads = int(cfg["num_attention_heads"])
    nas = _nas_blocks(cfg)  # NAS-pruned blocks: their own K/V heads, attention only where kept
    kv = nas[1] if nas else _kv_heads(cfg, heads)
    hd = int(cfg.get("head_dim") or h // heads)
    vocab = int(cfg.get("vocab_size", 32000))
    inter = _mlp_width(cfg) or 4 * h
    mtype = str(cfg.get("model_type", ""))
    encoder = mtype in _ENCODER_TYPES
    tied = _tied(cfg)
    emb = vocab * h * (1 if tied else 2)
    if encoder or mtype in _LEARNED_POSITION_TYPES:  # a learned position table beside the token table
        emb += int(cfg.get("max_position_embeddings", 512)) * h
    attn = h * heads * hd * 2 + 2 * h * kv * hd
    if "kv_lora_rank" in cfg:  # DeepSeek MLA: compressed KV projections
        r, rope = int(cfg["kv_lora_rank"]), int(cfg.get("qk_rope_head_dim", 64))
        nope = int(cfg.get("qk_nope_head_dim") or hd - rope)
        v = int(cfg.get("v_head_dim", 128))
        q_rank = int(cfg.get("q_lora_rank") or 0)
        q = h * q_rank + q_rank * heads * (nope + rope) if q_rank else h * heads * (nope + rope)
        attn = q + h * (r + rope) + r * heads * (nope + v) + heads * v * h
    gated = mtype not in _ENCODER_TYPES and mtype not in _UNGATED_MLP_TYPES
    n_mat = 3 if gated else 2
    experts = int(cfg.get("num_local_experts") or cfg.get("n_routed_experts") or cfg.get("num_experts") or 0)
    dense_mlp = n_mat * h * inter
    if experts:
        moe_inter = int(cfg.get("moe_intermediate_size") or inter)
        shared = int(cfg.get("shared_expert_intermediate_size") or 0) \
            or moe_inter * int(cfg.get("n_shared_experts") or 0)
        if not shared and mtype.startswith("llama4"):  # Llama-4's MoE layers add one shared expert (Llama4TextMoe)
            shared = moe_inter
        moe_mlp = n_mat * h * (moe_inter * experts + shared) + h * experts  # experts + shared + router
        dense_layers = min(int(cfg.get("first_k_dense_replace") or 0), layers)  # DeepSeek: first k layers dense
        step = int(cfg.get("interleave_moe_layer_step") or 1)
        if step > 1:  # Llama-4 Maverick: every step-th layer is MoE, the others dense at intermediate_size_mlp
            dense_layers = layers - layers // step
            dense_mlp = n_mat * h * int(cfg.get("intermediate_size_mlp") or inter)
        mlp_total = dense_layers * dense_mlp + (layers - dense_layers) * moe_mlp
    else:
        mlp_total = layers * dense_mlp
    mix = hybrid_layer_mix(cfg)
    if mix is not None:  # Nemotron-H: one block per layer, of the kind the pattern names (MLPs: up, down)
        mamba = _mamba_of(cfg, mix)
        moe = 0
        if mix["moe"]:
            moe_inter = int(cfg.get("moe_intermediate_size") or inter)
            shared = int(cfg.get("moe_shared_expert_intermediate_size") or 0)
            latent = int(cfg.get("moe_latent_size") or 0)  # Nemotron-3-Super: experts work in a smaller space
            width = latent or h
            moe = 2 * width * moe_inter * max(experts, 1) + 2 * h * shared + h * experts + 2 * h * latent
        mamba_p = mix["mamba"] * _mamba2_params(h, mamba) if mamba else 0
        total = emb + mix["attention"] * attn + mix["mlp"] * 2 * h * inter + mix["moe"] * moe + mamba_p
        return round(total / 1e9, 6)
    if nas is not None:  # each block its own attention (or none) and MLP width
        attn_layers, _, widths = nas
        return round((emb + attn_layers * attn + sum(3 * h * w for w in widths)) / 1e9, 6)
    linear = _linear_attention_layers(cfg, layers)
    if cfg.get("attn_output_gate"):  # Qwen3-Next / Qwen3.5: q_proj also makes the output gate
        attn += h * heads * hd
    attn_total = layers * attn
    if linear:  # Gated DeltaNet layers: in_proj_qkvz, in_proj_ba, out_proj and a depthwise conv
        nk, dk = int(cfg["linear_num_key_heads"]), int(cfg["linear_key_head_dim"])
        nv, dv = int(cfg["linear_num_value_heads"]), int(cfg["linear_value_head_dim"])
        conv = int(cfg.get("linear_conv_kernel_dim") or 4) * (2 * nk * dk + nv * dv)
        gdn = h * (2 * nk * dk + 2 * nv * dv) + 2 * h * nv + nv * dv * h + conv
        attn_total = (layers - linear) * attn + linear * gdn
    return round((emb + attn_total + mlp_total) / 1e9, 6)


def _nas_blocks(cfg: Mapping[str, Any]) -> tuple[int, int, list[int]] | None:
    """(layers with attention, their K/V heads, each layer's MLP width) of a NAS-pruned DeciLM config
    (Llama-3.x-Nemotron ``block_configs``): a block's attention may be removed (``no_op``) or grouped
    ``n_heads_in_group`` query heads per K/V head, its MLP ``ffn_mult`` wide, built as DeciLM's code does:
    ``int(2 x ffn_mult x hidden / 3)`` rounded up to a multiple of 256. None for other configs."""
    blocks = cfg.get("block_configs")
    if not isinstance(blocks, list) or not blocks:
        return None
    h, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    attn_layers, groups, widths = 0, [], []
    for b in blocks:
        a = (b or {}).get("attention") or {}
        f = (b or {}).get("ffn") or {}
        if not a.get("no_op") and not a.get("replace_with_linear"):
            attn_layers += 1
            groups.append(int(a.get("n_heads_in_group") or 1))
        mult = f.get("ffn_mult")
        widths.append(0 if f.get("no_op") or f.get("replace_with_linear") or not mult
                      else round_up(int(2 * float(mult) * h / 3), 256))
    group = max(set(groups), key=groups.count) if groups else 1
    return attn_layers, max(1, heads // group), widths


def _linear_state(cfg: Mapping[str, Any], layers: int) -> tuple[int, int] | None:
    """See ``ModelSpec.linear_state``; None for models without Gated DeltaNet layers."""
    if not _linear_attention_layers(cfg, layers):
        return None
    nk, dk = int(cfg["linear_num_key_heads"]), int(cfg["linear_key_head_dim"])
    nv, dv = int(cfg["linear_num_value_heads"]), int(cfg["linear_value_head_dim"])
    kernel = int(cfg.get("linear_conv_kernel_dim") or 4)
    return (kernel - 1) * (2 * nk * dk + nv * dv), nv * dk * dv


def _linear_attention_layers(cfg: Mapping[str, Any], layers: int) -> int:
    """Layers of linear attention (Gated DeltaNet) in a Qwen3-Next / Qwen3.5 config, else 0."""
    if "linear_num_value_heads" not in cfg:
        return 0
    types = cfg.get("layer_types")
    if isinstance(types, list) and types:
        return sum(1 for t in types[:layers] if str(t) == "linear_attention")
    every = int(cfg.get("full_attention_interval") or 0)
    return layers - layers // every if every else 0


# Families whose config's intermediate_size counts the gate and the up projection together, so
# each MLP matrix is half as wide: Qwen-1 (model_type "qwen", QWenLMHeadModel). vLLM's qwen.py
# builds QWenMLP with intermediate_size // 2 (ffn_hidden_size // 2 in the first version, v0.1.4),
# as the checkpoint's w1 / w2 / c_proj shapes are. No other catalogue family does this.
_HALF_WIDTH_MLP_TYPES = {"qwen"}


# MLPs of two matrices (up, down) instead of the gated three: GPT-2 and its descendants, OPT, Phi-1/2,
# Falcon, GPT-NeoX / Pythia, GPT-J, BLOOM, MPT, StarCoder (their modelling code in transformers / vLLM).
_UNGATED_MLP_TYPES = {"gpt2", "biogpt", "starcoder2", "gpt_bigcode", "opt", "phi", "falcon", "gpt_neox", "gptj",
                      "bloom", "mpt"}
# Decoders with learned absolute position embeddings (no rotary): their table counts as weights.
_LEARNED_POSITION_TYPES = {"opt", "gpt2", "gpt_bigcode", "biogpt"}
# Config classes whose tie_word_embeddings defaults to True (transformers' PretrainedConfig default, kept
# by these families) when config.json leaves the key out: lm_head shares the embedding matrix. Llama,
# Mistral, Qwen2/3, Phi-3, GPT-NeoX and most newer families default to False.
_TIED_BY_DEFAULT = {"gpt2", "biogpt", "opt", "falcon", "bloom", "gpt_bigcode", "starcoder2", "mpt", "gemma", "gemma2",
                    "gemma3", "gemma3_text", "cohere", "smollm3"}


def _tied(cfg: Mapping[str, Any]) -> bool:
    mtype = str(cfg.get("model_type", ""))
    return bool(cfg.get("tie_word_embeddings", mtype in _ENCODER_TYPES or mtype in _TIED_BY_DEFAULT))


def _kv_heads(cfg: Mapping[str, Any], heads: int) -> int:
    """KV heads: GQA fields, or one shared K/V head for multi-query models (Falcon-7B, GPT-BigCode)."""
    n = cfg.get("num_key_value_heads") or cfg.get("multi_query_group_num")
    if not n and cfg.get("new_decoder_architecture"):  # Falcon-40B/180B: grouped K/V heads
        n = cfg.get("num_kv_heads")
    if not n and cfg.get("multi_query"):
        n = 1
    return int(n or heads)


def _mlp_width(cfg: Mapping[str, Any]) -> int | None:
    """The width of each dense MLP matrix as vLLM builds it (None when the config has none)."""
    inter = cfg.get("intermediate_size") or cfg.get("ffn_hidden_size") or cfg.get("ffn_dim") or cfg.get("n_inner")
    if not inter:
        return None
    return int(inter) // 2 if str(cfg.get("model_type", "")) in _HALF_WIDTH_MLP_TYPES else int(inter)


_ENCODER_TYPES = {"bert", "xlm-roberta", "roberta", "distilbert", "electra", "mpnet", "nomic_bert", "deberta-v2"}


def _dtype_of(cfg: Mapping[str, Any]) -> str | None:
    """config.json's torch_dtype (newer transformers write ``dtype``); None when absent."""
    d = cfg.get("torch_dtype") or cfg.get("dtype")
    if not d:
        return None
    d = str(d).replace("torch.", "")
    return {"half": "float16", "fp16": "float16", "bf16": "bfloat16", "float": "float32"}.get(d, d)


def _find_dtype(config: Mapping[str, Any], text: Mapping[str, Any] | None) -> str | None:
    # Like vLLM: the root config, then the text config, then the vision config of a multimodal model.
    found = _dtype_of(config)
    if found is None and text is not None:
        found = _dtype_of(text)
    vision = config.get("vision_config")
    if found is None and isinstance(vision, Mapping):
        found = _dtype_of(vision)
    return found


def _quant_of(qc: Mapping[str, Any]) -> tuple[str | None, float | None, int | None]:
    """(method, bits, group size) of a quantization_config; bits None when not modelled."""
    method = qc.get("quant_method") or qc.get("quantization_method")
    if not method:
        return None, None, None
    method = str(method).lower()
    bits = qc.get("bits") or qc.get("w_bit") or qc.get("num_bits") or qc.get("weight_bits")
    group = qc.get("group_size") or qc.get("q_group_size")
    if method == "bitsandbytes":
        four = BNB_4BIT_DQ_BITS if qc.get("bnb_4bit_use_double_quant") else BNB_4BIT_BITS
        bits = four if qc.get("load_in_4bit") else 8 if qc.get("load_in_8bit") else bits
    elif method == "compressed-tensors":
        for g in (qc.get("config_groups") or {}).values():
            w = (g or {}).get("weights") or {}
            bits = w.get("num_bits") or bits
            group = w.get("group_size") or group
    elif method == "modelopt":
        algo = str(qc.get("quant_algo") or (qc.get("quantization") or {}).get("quant_algo") or "").upper()
        bits = 8 if "FP8" in algo else 4.5 if "FP4" in algo else bits  # NVFP4: 4 bits + an FP8 scale per 16
    elif method in ("fp8", "fbgemm_fp8"):
        bits = 8
    if bits is None and method in QUANT_BITS:
        bits = QUANT_BITS[method]
    return method, float(bits) if bits else None, int(group) if group and int(group) > 0 else None


def _layer_counts(cfg: Mapping[str, Any], layers: int) -> tuple[int | None, int | None]:
    """(sliding-window layers, layers with a KV cache) from ``layer_types`` or the known patterns."""
    types = cfg.get("layer_types")
    sliding = cfg.get("sliding_window")
    if cfg.get("use_sliding_window") is False:  # Qwen2 configs carry a window they do not use
        sliding = None
    if isinstance(types, list) and types:
        names = [str(t) for t in types[:layers]]
        attn = [t for t in names if "attention" in t and "linear" not in t]
        slide = sum(1 for t in attn if "sliding" in t or "local" in t)
        kv_layers = len(attn) if len(attn) < len(names) else None
        return (slide if sliding else None), kv_layers
    if not sliding:
        return None, None
    mtype = str(cfg.get("model_type", ""))
    pattern = cfg.get("sliding_window_pattern")
    if mtype.startswith(("gemma3", "gemma4")) or pattern:
        p = int(pattern or 6)  # Gemma-3 and -4: five local layers, then a global one
        return layers - layers // p, None
    if mtype in ("gemma2", "gpt_oss", "cohere2"):
        return layers - layers // 2, None
    return None, None  # every layer slides (Mistral-7B-v0.1, Phi-3-mini-4k, Starcoder2)


def _vision_of(cfg: Mapping[str, Any], text_hidden: int) -> VisionSpec | None:
    """The vision tower of a multimodal config, estimated from its ``vision_config``."""
    vc = cfg.get("vision_config")
    if not isinstance(vc, Mapping):
        return None
    mtype = str(cfg.get("model_type", ""))
    h = int(vc.get("hidden_size") or vc.get("embed_dim") or vc.get("width") or 1024)
    layers = int(vc.get("depth") or vc.get("num_hidden_layers") or vc.get("layers") or 24)
    inter = int(vc.get("intermediate_size") or h * float(vc.get("mlp_ratio") or 4))
    patch = int(vc.get("patch_size") or 14)
    gated = mtype in ("qwen2_5_vl",)
    params = layers * (4 * h * h + (3 if gated else 2) * h * inter) + 3 * patch * patch * h
    merge = int(vc.get("spatial_merge_size") or 1)
    out_h = int(vc.get("out_hidden_size") or text_hidden)
    params += (h * merge * merge) ** 2 + h * merge * merge * out_h  # merger / projector: two layers after the merge
    family = "other"
    tokens = patches = levels = 0
    if mtype in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe"):
        family, tokens = "qwen2_vl", 16384  # max_pixels 12845056 -> 16384 merged tokens per image
        patches = tokens * merge * merge
        if mtype.startswith("qwen3"):
            # DeepStack (vLLM qwen3_vl.py): one more merger, shaped like the main one, per listed layer
            family, levels = "qwen3_vl", len(vc.get("deepstack_visual_indexes") or ())
            params += levels * ((h * merge * merge) ** 2 + h * merge * merge * out_h)
    elif mtype.startswith("gemma3"):
        family, tokens = "gemma3", int(cfg.get("mm_tokens_per_image") or 256)
        patches = (int(vc.get("image_size") or 896) // patch) ** 2
    elif mtype in ("llava", "llava_next", "llava_onevision"):
        side = int(vc.get("image_size") or 336) // patch
        tiles = 1
        pins = cfg.get("image_grid_pinpoints")
        if mtype != "llava" and isinstance(pins, list) and pins:
            size = int(vc.get("image_size") or 336)
            tiles = 1 + max(int(p[0]) // size * (int(p[1]) // size) for p in pins if isinstance(p, list))
        family, tokens, patches = "llava", side * side * tiles, side * side * tiles
    elif mtype == "phi3_v":
        family, tokens, patches = "phi3_v", 17 * 144 + 16, 17 * 577  # 16 crops + the global view
    elif mtype == "mllama":
        # Llama-3.2-Vision: the tile encoder plus its gated global layers; each tile is (560/14)^2 patches
        # and a class token, padded to a multiple of 8; the gated tile-position table holds every aspect
        # ratio x tile x patch; the projector maps the concatenated intermediate layers to the text width.
        tiles = int(vc.get("max_num_tiles") or 4)
        per_tile = (int(vc.get("image_size") or 560) // patch) ** 2 + 1
        ratios = len(vc.get("supported_aspect_ratios") or ()) + 1
        glob = int(vc.get("num_global_layers") or 0)
        layers += glob
        params = layers * (4 * h * h + 2 * h * inter) + 3 * patch * patch * h
        params += ratios * tiles * per_tile * h + 2 * ratios * tiles * h + per_tile * h
        params += int(vc.get("vision_output_dim") or h) * text_hidden
        family, tokens, patches = "mllama", 1, tiles * round_up(per_tile, 8)
    return VisionSpec(family=family, params_b=round(params / 1e9, 4), num_layers=layers, hidden_size=h,
                      intermediate_size=inter, patches_per_item=patches, tokens_per_item=tokens,
                      deepstack_levels=levels, modelled=family != "other")


_NON_VISION_TOWERS = ("audio_config", "speech_config", "whisper_config")


MAX_ROPE_FACTOR = 1024.0  # published stretches are 2-64 (DeepSeek's yarn 40, gpt-oss 32); beyond this is not one


def _rope_terms(rope: Mapping[str, Any]) -> tuple[str, float | None, int | None]:
    """(kind, factor, original_max_position_embeddings) of one rope setting as a config writes it: factor None
    unless a number in (0, MAX_ROPE_FACTOR] (NaN and infinity, which Python's json reads, are none), original None
    unless a positive integer."""
    kind = str(rope.get("rope_type") or rope.get("type") or "")
    factor = rope.get("factor")
    stretch = float(factor) if isinstance(factor, (int, float)) and not isinstance(factor, bool) and \
        0 < factor <= MAX_ROPE_FACTOR else None
    original = rope.get("original_max_position_embeddings")
    start = original if isinstance(original, int) and not isinstance(original, bool) and original > 0 else None
    return kind, stretch, start


def rope_scaled_length(positions: int, rope_scaling: Any) -> int | None:
    """The default max_model_len vLLM derives from a config whose ``rope_scaling`` stretches the
    positions, or None when it does not: every rope type but su/longrope/llama3 multiplies by its
    ``factor`` (absent: 1), and yarn starts from ``original_max_position_embeddings``
    (vLLM's ``_get_and_verify_max_len``; docs/fit-check.md, "Default max_model_len")."""
    if not isinstance(rope_scaling, Mapping):
        return None
    kind, factor, original = _rope_terms(rope_scaling)
    if kind in ("su", "longrope", "llama3") or factor is None or factor <= 1:
        return None  # not a stretch to act on
    base = positions
    if kind == "yarn":  # vLLM requires original_max_position_embeddings for yarn
        if original is None:
            return None
        base = original
    scaled = int(base * factor)
    return scaled if scaled != positions else None


# Decoders without rotary embeddings (learned absolute positions, or ALiBi): no cos/sin table.
_NO_ROPE_TYPES = _LEARNED_POSITION_TYPES | {"bloom", "mpt"}


def _rope_table_positions(rope: Any, positions: int) -> int:
    """Rows of the cos/sin table vLLM's get_rope builds for one rope setting (``rotary_embedding/`` in the PyPI
    source archives): max_position for the default, llama3, ntk and mrope tables; max_position x factor for linear
    and dynamic scaling; original_max_position x factor for yarn and deepseek_yarn; original + max_position for
    longrope (its short and long tables)."""
    if not isinstance(rope, Mapping):
        return positions
    kind, stretch, original = _rope_terms(rope)
    factor = stretch if stretch is not None and stretch >= 1 else 1.0
    if kind in ("linear", "dynamic"):
        return int(positions * factor)
    if kind in ("yarn", "deepseek_yarn"):
        return int((original or positions) * factor)
    if kind in ("longrope", "su"):
        return (original or positions) + positions
    return positions


def _rope_cache(cfg: Mapping[str, Any], mtype: str, positions: int, head_dim: int | None,
                heads: int, h: int) -> tuple[int, int | None]:
    """(rope_cache_positions, rotary_dim) of a config: Gemma-3's sliding layers add a second, unscaled table
    (``rope_local_base_freq``); a per-layer-type ``rope_parameters`` (Gemma-4) one table per type."""
    if mtype in _NO_ROPE_TYPES:
        return 0, None
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling")
    if isinstance(rope, Mapping) and rope and all(isinstance(v, Mapping) for v in rope.values()):
        rows = sum(_rope_table_positions(v, positions) for v in rope.values())
    else:
        rows = _rope_table_positions(rope, positions)
        if cfg.get("rope_local_base_freq"):
            rows += positions
    width = int(head_dim or h // heads)
    factor = cfg.get("partial_rotary_factor") or cfg.get("rotary_pct")
    rotary = int(cfg["qk_rope_head_dim"]) if cfg.get("qk_rope_head_dim") else \
        int(width * factor) if isinstance(factor, (int, float)) and 0 < factor < 1 else None
    return rows, rotary


def model_from_config(config: Mapping[str, Any], id: str) -> ModelSpec:
    """A :class:`ModelSpec` from a Hugging Face ``config.json`` mapping (pure; no I/O)."""
    cfg: dict[str, Any] = dict(config)
    text = cfg.get("text_config") or cfg.get("language_config")
    if isinstance(text, Mapping):  # multimodal wrappers keep the language model here
        cfg = {**cfg, **{k: v for k, v in text.items() if v is not None}}
    for src, dst in (("n_layer", "num_hidden_layers"), ("n_embd", "hidden_size"), ("n_head", "num_attention_heads"),
                     ("num_layers", "num_hidden_layers"), ("n_positions", "max_position_embeddings"),
                     ("seq_length", "max_position_embeddings"), ("ffn_hidden_size", "intermediate_size"),
                     ("ffn_dim", "intermediate_size"), ("n_inner", "intermediate_size"),
                     ("padded_vocab_size", "vocab_size")):
        if cfg.get(src) is not None and cfg.get(dst) is None:
            cfg[dst] = cfg[src]
    blocks = _nemotron_block_list(cfg)
    if cfg.get("num_hidden_layers") is None and blocks:
        cfg["num_hidden_layers"] = len(blocks)  # transformers 5 derives it from the list
    missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads") if k not in cfg]
    if missing:
        raise ValueError(f"{id}: config.json lacks {', '.join(missing)}; describe the model under `models:`")
    root_type = str(config.get("model_type", ""))
    mtype = str(cfg.get("model_type", ""))
    heads = int(cfg["num_attention_heads"])
    h = int(cfg["hidden_size"])
    layers = int(cfg["num_hidden_layers"])
    arch = (config.get("architectures") or cfg.get("architectures") or [""])[0]
    method, bits, group = _quant_of(cfg.get("quantization_config") or config.get("quantization_config") or {})
    sliding = cfg.get("sliding_window")
    if cfg.get("use_sliding_window") is False:
        sliding = None
    sliding_layers, kv_layers = _layer_counts(cfg, layers)
    linear_state = _linear_state(cfg, layers)
    if linear_state and kv_layers is None:  # Qwen3-Next: no layer_types, every full_attention_interval-th attends
        kv_layers = layers - _linear_attention_layers(cfg, layers)
    nas = _nas_blocks(cfg)
    if nas is not None:
        kv_layers = nas[0] if nas[0] < layers else None
        cfg["num_key_value_heads"], cfg["intermediate_size"] = nas[1], max(nas[2]) or None
    mix = hybrid_layer_mix(cfg)
    if mix is not None:
        kv_layers = mix["attention"] or None
    experts = int(cfg.get("num_local_experts") or cfg.get("n_routed_experts") or cfg.get("num_experts") or 0)
    inter = _mlp_width(cfg)
    top_k = None
    if experts:
        top_k = int(cfg.get("num_experts_per_tok") or cfg.get("num_experts_per_token") or cfg.get("moe_topk") or 2)
        width = int(cfg.get("moe_intermediate_size") or inter or 4 * h)
        inter = width * (top_k + int(cfg.get("n_shared_experts") or 0))
    encoder = mtype in _ENCODER_TYPES
    vision = _vision_of(config, h)
    params = cfg.get("num_parameters") or cfg.get("n_params")
    params_b = float(params) / 1e9 if params else estimate_params_b(cfg) + (vision.params_b if vision else 0.0)
    latent = None
    if "kv_lora_rank" in cfg:
        latent = int(cfg["kv_lora_rank"]) + int(cfg.get("qk_rope_head_dim", 64))
    head_dim = cfg.get("head_dim")
    if latent and not head_dim:
        head_dim = int(cfg.get("qk_nope_head_dim", 128)) + int(cfg.get("qk_rope_head_dim", 64))
    dtype = _find_dtype(config, text if isinstance(text, Mapping) else None)
    positions = int(cfg.get("max_position_embeddings") or cfg.get("model_max_length") or 2048)
    rope_rows, rotary = _rope_cache(cfg, mtype, positions, int(head_dim) if head_dim else None, heads, h)
    other = next((k.split("_")[0] for k in _NON_VISION_TOWERS if isinstance(config.get(k), Mapping)), None)
    return ModelSpec(
        id=id,
        architecture=arch,
        model_type=root_type if vision else mtype,
        params_b=params_b,
        num_layers=layers,
        hidden_size=h,
        num_attention_heads=heads,
        num_kv_heads=_kv_heads(cfg, heads),
        head_dim=int(head_dim) if head_dim else None,
        intermediate_size=int(inter) if inter else None,
        max_position_embeddings=positions,
        rope_scaled_context=rope_scaled_length(positions, cfg.get("rope_scaling")),
        vocab_size=int(cfg.get("vocab_size", 32000)),
        tie_word_embeddings=_tied(cfg),
        native_dtype=dtype or "float32",
        torch_dtype_missing=dtype is None,
        quantization=method,
        quant_bits=bits,
        quant_group_size=group,
        encoder_only=encoder,
        sliding_window=int(sliding) if sliding else None,
        sliding_layers=sliding_layers,
        kv_layers=kv_layers,
        num_experts=experts or None,
        experts_per_token=top_k,
        vision=vision,
        multimodal_unmodelled=other,
        attn_softcapping=bool(cfg.get("attn_logit_softcapping")),
        kv_latent_dim=latent,
        global_kv_heads=int(cfg["num_global_key_value_heads"]) if cfg.get("num_global_key_value_heads") and
        sliding else None,
        global_head_dim=int(cfg["global_head_dim"]) if cfg.get("global_head_dim") and sliding else None,
        mamba=_mamba_of(cfg, mix),
        linear_state=linear_state,
        linear_ssm_dtype=str(cfg["mamba_ssm_dtype"]) if cfg.get("mamba_ssm_dtype") and linear_state else None,
        rope_cache_positions=rope_rows,
        rotary_dim=rotary,
        source=f"config.json of {id}" + ("" if params else " (parameters estimated from shapes)"),
    )


def _cfg_model(config: dict[str, Any], id: str, aliases: tuple[str, ...], source: str) -> ModelSpec:
    """A catalogue entry read from the published config.json fields (through model_from_config, so
    the catalogue and a local copy of the same file give the same model)."""
    return model_from_config(config, id).model_copy(update={"aliases": aliases, "source": source})


def _build_published() -> list[ModelSpec]:
    """Models whose published config.json is kept whole (``configs.json`` beside this module: id,
    aliases, where the file was read, the file's fields): Qwen3-VL, Qwen3.5, Gemma-4, Kimi-K2, MiniMax-M2,
    Nemotron, base Qwen2.5 / Llama-3.1, Qwen1.5 / Qwen-1 72B, LLaMA-1 and Vicuna v1.3 (shapes). Read once,
    at import (~47 kB, ~3 ms)."""
    rows = json.loads(Path(__file__).with_name("configs.json").read_text())
    return [_cfg_model(r["config"], r["id"], tuple(r["aliases"]), "config.json: " + r["source"]) for r in rows]


def _build_v3() -> list[ModelSpec]:
    """Models users start vLLM with most that the catalogue lacked (2026-11): vLLM's quick-start OPT,
    Llama-2, Phi-2/3/4, Mistral-Nemo / Small-24B / Ministral, QwQ, Qwen3 0.6B/1.7B, the DeepSeek-R1
    distills, Falcon, GLM-4, InternLM2.5, Yi, Vicuna, Granite 3.1, Hermes-3, TinyLlama, SmolLM2. Fields are
    the published config.json values (read from the hub file or verbatim copies of it; each ``source``
    says which); parameter counts follow from the shapes."""
    llama = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "tie_word_embeddings": False}
    q2 = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "tie_word_embeddings": False,
          "torch_dtype": "bfloat16"}
    mistral = {"architectures": ["MistralForCausalLM"], "model_type": "mistral", "tie_word_embeddings": False,
               "torch_dtype": "bfloat16", "head_dim": 128}
    phi3 = {"architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "tie_word_embeddings": False,
            "torch_dtype": "bfloat16"}
    l31_rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}

    def shape(layers: int, hidden: int, heads: int, kv: int, inter: int, vocab: int, ctx: int) -> dict[str, Any]:
        return {"num_hidden_layers": layers, "hidden_size": hidden, "num_attention_heads": heads,
                "num_key_value_heads": kv, "intermediate_size": inter, "vocab_size": vocab,
                "max_position_embeddings": ctx}

    hub = _CFG
    rows: list[tuple[str, dict[str, Any], tuple[str, ...], str]] = [
        ("facebook/opt-125m", {"architectures": ["OPTForCausalLM"], "model_type": "opt", "hidden_size": 768,
                               "ffn_dim": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                               "vocab_size": 50272, "max_position_embeddings": 2048, "torch_dtype": "float16"},
         ("opt-125m",), hub + " (vLLM's quick-start model; lm_head tied)"),
        ("facebook/opt-1.3b", {"architectures": ["OPTForCausalLM"], "model_type": "opt", "hidden_size": 2048,
                               "ffn_dim": 8192, "num_hidden_layers": 24, "num_attention_heads": 32,
                               "vocab_size": 50272, "max_position_embeddings": 2048, "torch_dtype": "float16"},
         ("opt-1.3b",), hub),
        ("meta-llama/Llama-2-7b-chat-hf", {**llama, **shape(32, 4096, 32, 32, 11008, 32000, 4096),
                                           "torch_dtype": "float16"},
         ("meta-llama/Llama-2-7b-hf", "llama-2-7b", "llama-2-7b-chat", "lmsys/vicuna-7b-v1.5", "vicuna-7b"),
         hub + " (Vicuna-7B v1.5 is this shape)"),
        ("meta-llama/Llama-2-13b-chat-hf", {**llama, **shape(40, 5120, 40, 40, 13824, 32000, 4096),
                                            "torch_dtype": "float16"},
         ("meta-llama/Llama-2-13b-hf", "llama-2-13b", "llama-2-13b-chat"), hub),
        ("meta-llama/Meta-Llama-3-70B-Instruct", {**llama, **shape(80, 8192, 64, 8, 28672, 128256, 8192),
                                                  "torch_dtype": "bfloat16"},
         ("meta-llama/Meta-Llama-3-70B", "llama-3-70b"), hub + " (Llama-3-70B: 8192 context)"),
        ("NousResearch/Hermes-3-Llama-3.1-8B", {**llama, **shape(32, 4096, 32, 8, 14336, 128256, 131072),
                                                "torch_dtype": "bfloat16", "rope_scaling": l31_rope},
         ("hermes-3-8b",), hub + " (Llama-3.1-8B shape)"),
        ("deepseek-ai/DeepSeek-R1-Distill-Llama-8B", {**llama, **shape(32, 4096, 32, 8, 14336, 128256, 131072),
                                                      "torch_dtype": "bfloat16", "rope_scaling": l31_rope},
         ("deepseek-r1-distill-llama-8b",), hub),
        ("deepseek-ai/DeepSeek-R1-Distill-Llama-70B", {**llama, **shape(80, 8192, 64, 8, 28672, 128256, 131072),
                                                       "torch_dtype": "bfloat16", "rope_scaling": l31_rope},
         ("deepseek-r1-distill-llama-70b",), hub),
        ("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", {**q2, **shape(28, 1536, 12, 2, 8960, 151936, 131072)},
         ("deepseek-r1-distill-qwen-1.5b",), hub),
        ("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", {**q2, **shape(28, 3584, 28, 4, 18944, 152064, 131072)},
         ("deepseek-r1-distill-qwen-7b",), hub),
        ("deepseek-ai/DeepSeek-R1-Distill-Qwen-14B", {**q2, **shape(48, 5120, 40, 8, 13824, 152064, 131072)},
         ("deepseek-r1-distill-qwen-14b",), hub),
        ("Qwen/QwQ-32B", {**q2, **shape(64, 5120, 40, 8, 27648, 152064, 131072)}, ("qwq-32b",), hub),
        ("Qwen/Qwen2.5-7B-Instruct-1M", {**q2, **shape(28, 3584, 28, 4, 18944, 152064, 1010000)},
         ("qwen2.5-7b-1m",), hub + " (dual-chunk attention config; 1,010,000 positions)"),
        ("Qwen/Qwen3-0.6B", {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "head_dim": 128,
                             "tie_word_embeddings": True, "torch_dtype": "bfloat16",
                             **shape(28, 1024, 16, 8, 3072, 151936, 40960)}, ("qwen3-0.6b",), hub),
        ("Qwen/Qwen3-1.7B", {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "head_dim": 128,
                             "tie_word_embeddings": True, "torch_dtype": "bfloat16",
                             **shape(28, 2048, 16, 8, 6144, 151936, 40960)}, ("qwen3-1.7b",), hub),
        ("mistralai/Mistral-Nemo-Instruct-2407", {**mistral, **shape(40, 5120, 32, 8, 14336, 131072, 131072)},
         ("mistral-nemo", "mistralai/Mistral-Nemo-Base-2407"),
         hub + " (131072 positions in the current file; snapshots before its update say 1024000: pass "
         "--max-model-len)"),
        ("mistralai/Mistral-Small-24B-Instruct-2501", {**mistral, **shape(40, 5120, 32, 8, 32768, 131072, 32768)},
         ("mistral-small-24b",), hub),
        ("mistralai/Ministral-8B-Instruct-2410", {**mistral, **shape(36, 4096, 32, 8, 12288, 131072, 32768),
                                                  "sliding_window": 32768}, ("ministral-8b",), hub),
        ("microsoft/phi-4", {**phi3, **shape(40, 5120, 40, 10, 17920, 100352, 16384)}, ("phi-4",), hub),
        ("microsoft/Phi-3-medium-4k-instruct", {**phi3, **shape(40, 5120, 40, 10, 17920, 32064, 4096)},
         ("phi-3-medium", "phi-3-medium-4k"), hub),
        ("microsoft/phi-2", {"architectures": ["PhiForCausalLM"], "model_type": "phi", "tie_word_embeddings": False,
                             "torch_dtype": "float16", **shape(32, 2560, 32, 32, 10240, 51200, 2048)},
         ("phi-2",), hub + " (two-matrix MLP)"),
        ("tiiuae/falcon-7b-instruct", {"architectures": ["FalconForCausalLM"], "model_type": "falcon",
                                       "hidden_size": 4544, "num_hidden_layers": 32, "num_attention_heads": 71,
                                       "multi_query": True, "new_decoder_architecture": False, "vocab_size": 65024,
                                       "max_position_embeddings": 2048, "torch_dtype": "bfloat16"},
         ("tiiuae/falcon-7b", "falcon-7b"), hub + " (multi-query: one K/V head; lm_head tied)"),
        ("THUDM/glm-4-9b-chat", {"architectures": ["ChatGLMModel"], "model_type": "chatglm", "hidden_size": 4096,
                                 "ffn_hidden_size": 13696, "num_layers": 40, "num_attention_heads": 32,
                                 "multi_query_group_num": 2, "kv_channels": 128, "padded_vocab_size": 151552,
                                 "seq_length": 131072, "tie_word_embeddings": False, "torch_dtype": "bfloat16"},
         ("glm-4-9b-chat", "glm-4-9b"), hub),
        ("internlm/internlm2_5-7b-chat", {"architectures": ["InternLM2ForCausalLM"], "model_type": "internlm2",
                                          "tie_word_embeddings": False, "torch_dtype": "bfloat16",
                                          **shape(32, 4096, 32, 8, 14336, 92544, 32768)},
         ("internlm2.5-7b-chat",), hub + " (dynamic NTK rope: no stretch of the default length)"),
        ("01-ai/Yi-34B-Chat", {**llama, **shape(60, 7168, 56, 8, 20480, 64000, 4096), "torch_dtype": "bfloat16"},
         ("yi-34b-chat", "01-ai/Yi-34B", "01-ai/Yi-1.5-34B-Chat", "01-ai/Yi-1.5-34B", "yi-1.5-34b-chat"),
         hub + " (Yi-1.5-34B-Chat: a re-save naming it has these layer shapes and 4096 positions)"),
        ("ibm-granite/granite-3.1-8b-instruct", {"architectures": ["GraniteForCausalLM"], "model_type": "granite",
                                                 "tie_word_embeddings": True, "torch_dtype": "bfloat16",
                                                 **shape(40, 4096, 32, 8, 12800, 49155, 131072)},
         ("granite-3.1-8b",), hub),
        ("TinyLlama/TinyLlama-1.1B-Chat-v1.0", {**llama, **shape(22, 2048, 32, 4, 5632, 32000, 2048),
                                                "torch_dtype": "bfloat16"}, ("tinyllama-1.1b",), hub),
        ("meta-llama/Llama-3.2-11B-Vision-Instruct",
         {"architectures": ["MllamaForConditionalGeneration"], "model_type": "mllama", "torch_dtype": "bfloat16",
          "text_config": {"model_type": "mllama_text_model", "tie_word_embeddings": False, "rope_scaling": l31_rope,
                          "cross_attention_layers": [3, 8, 13, 18, 23, 28, 33, 38],
                          **shape(40, 4096, 32, 8, 14336, 128256, 131072)},
          "vision_config": {"model_type": "mllama_vision_model", "hidden_size": 1280, "intermediate_size": 5120,
                            "num_hidden_layers": 32, "num_global_layers": 8, "attention_heads": 16,
                            "image_size": 560, "patch_size": 14, "max_num_tiles": 4, "vision_output_dim": 7680,
                            "supported_aspect_ratios": [[1, 1], [1, 2], [1, 3], [1, 4], [2, 1], [2, 2], [3, 1],
                                                        [4, 1]]}},
         ("meta-llama/Llama-3.2-11B-Vision", "llama-3.2-11b-vision"),
         "the Instruct config.json fields as a mirror's to_dict() and the safetensors notes quote them "
         "(tests/data/model_configs/meta-llama--Llama-3.2-11B-Vision.json); 40 text layers = 32 self-attention "
         "+ 8 cross-attention"),
        ("HuggingFaceTB/SmolLM2-1.7B-Instruct", {**llama, **shape(24, 2048, 32, 32, 8192, 49152, 8192),
                                                 "tie_word_embeddings": True, "torch_dtype": "bfloat16"},
         ("smollm2-1.7b",), hub),
    ]
    return [_cfg_model(cfg, id, aliases, src) for id, cfg, aliases, src in rows]


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


# Files that hold the quantisation beside a config.json without one: older AutoGPTQ and AutoAWQ repositories,
# and NVIDIA ModelOpt <= 0.29 (``hf_quant_config.json``, which vLLM reads whenever config.json has no
# quantization_config: transformers_utils/config.py; nvidia/DeepSeek-V3.1-NVFP4 and the Nemotron-3 FP8 / NVFP4
# releases ship their NVFP4 / FP8 settings only there).
_SIDE_QUANT_FILES = ("quantize_config.json", "quant_config.json", "hf_quant_config.json")


def _side_quant(name: str, q: Mapping[str, Any]) -> dict[str, Any]:
    """A quantization_config from one of ``_SIDE_QUANT_FILES`` (ModelOpt's file: ``{"producer": {"name":
    "modelopt"}, "quantization": {"quant_algo": "NVFP4", ...}}``, read by :func:`_quant_of` as it stands)."""
    out = dict(q)
    if name == "hf_quant_config.json":
        producer = out.get("producer")
        name_of = producer.get("name") if isinstance(producer, Mapping) else None
        out.setdefault("quant_method", str(name_of or "modelopt").lower())
    else:
        out.setdefault("quant_method", "gptq" if name == "quantize_config.json" else "awq")
    return out


def _json_object(data: bytes, where: str) -> dict[str, Any]:
    """``data`` parsed as a JSON object; ValueError naming ``where`` (a file or URL) otherwise."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: not a JSON object")
    return obj


def _small_json_object(path: Path) -> dict[str, Any]:
    """A JSON object from a file of at most ``MAX_HUB_JSON_BYTES``; ValueError naming the file otherwise."""
    if path.stat().st_size > MAX_HUB_JSON_BYTES:
        raise ValueError(f"{path}: larger than {MAX_HUB_JSON_BYTES} bytes; not a quantisation config")
    return _json_object(path.read_bytes(), str(path))


def _read_local(path: Path, id: str) -> ModelSpec:
    cfg = json.loads((path / "config.json").read_text())
    if "quantization_config" not in cfg:
        for name in _SIDE_QUANT_FILES:
            side = path / name
            if side.is_file():
                cfg["quantization_config"] = _side_quant(name, _small_json_object(side))
                break
    spec = model_from_config(cfg, id)
    ck = checkpoint_from_dir(path)
    return spec.model_copy(update={"checkpoint": ck}) if ck else spec


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _cache_file(model_id: str, cache_dir: str | os.PathLike[str] | None) -> Path:
    base = Path(cache_dir).expanduser() if cache_dir else HUB_CACHE_DIR.expanduser()
    return base / (model_id.replace("/", "--") + ".json")


def hub_endpoint() -> str:
    """The hub's base URL: ``HF_ENDPOINT`` as huggingface_hub reads it, else huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def _with_hub_checkpoint(spec: ModelSpec, model_id: str, cache: Path, allow_network: bool) -> ModelSpec:
    """Attach the hub checkpoint's size: from the cache, or (online) from its safetensors headers.
    Failing to read it is not an error: the weights then come from the parameter count."""
    ck_cache = cache.with_name(cache.stem + ".checkpoint.json")
    if not ck_cache.is_file() and not allow_network:
        return spec
    try:
        ck = checkpoint_from_hub(model_id, ck_cache, endpoint=hub_endpoint())
    except Exception:
        ck = None
    return spec.model_copy(update={"checkpoint": ck}) if ck else spec


def _get_json(url: str, headers: Mapping[str, str], *, missing_ok: bool = False) -> dict[str, Any] | None:
    """GET a small JSON object from the hub, streamed and refused beyond ``MAX_HUB_JSON_BYTES``; None for
    a 404 when ``missing_ok``."""
    import httpx

    with httpx.stream("GET", url, timeout=HUB_TIMEOUT_S, follow_redirects=True, headers=dict(headers)) as resp:
        if missing_ok and resp.status_code == 404:
            return None
        resp.raise_for_status()
        body = bytearray()
        for chunk in resp.iter_bytes():
            body += chunk
            if len(body) > MAX_HUB_JSON_BYTES:
                raise ValueError(f"{url} is larger than {MAX_HUB_JSON_BYTES} bytes; not a config file")
    return _json_object(bytes(body), url)


def _fetch_hub(model_id: str, cache: Path) -> dict[str, Any]:
    headers = {}
    token = os.environ.get("HF_TOKEN")  # gated repos (meta-llama) need the user's token
    if token:
        headers["Authorization"] = f"Bearer {token}"
    base = f"{hub_endpoint()}/{model_id}/resolve/main"
    cfg = _get_json(f"{base}/config.json", headers)
    assert cfg is not None  # without missing_ok a 404 raises
    if "quantization_config" not in cfg:  # ModelOpt <= 0.29 keeps it beside config.json (_SIDE_QUANT_FILES)
        side = _get_json(f"{base}/hf_quant_config.json", headers, missing_ok=True)
        if side is not None:
            cfg["quantization_config"] = _side_quant("hf_quant_config.json", side)
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
            spec = model_from_config(json.loads(cache.read_text()), ref)
            return _with_hub_checkpoint(spec, ref, cache, allow_network)
        if allow_network:
            try:
                spec = model_from_config(_fetch_hub(ref, cache), ref)
            except Exception as exc:
                raise UnknownModelError(
                    f"model {ref!r}: could not fetch its config.json from the hub ({type(exc).__name__}: {exc}). "
                    + _HOW_TO_FIX) from None
            return _with_hub_checkpoint(spec, ref, cache, allow_network)
    same = _by_repo_name(ref) if _HUB_ID.match(ref) else _gguf_file(ref)
    if same is not None:
        return same
    close = suggest(ref)
    did = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    where = "not in the catalogue"
    if path.is_dir():
        where += f", and directory {str(path)!r} has no config.json"
    elif not allow_network and _HUB_ID.match(ref):
        where += ", not in the hub-config cache, and network lookups are off"
    if ref.lower().endswith("-gguf"):
        where += " (a GGUF repository holds one file per quantisation type: give the .gguf file vLLM serves, " \
                 "e.g. Qwen3-8B-Q4_K_M.gguf, whose name says the model and the type)"
    raise UnknownModelError(f"unknown model {ref!r}: {where}.{did} " + _HOW_TO_FIX)


# Suffixes re-uploaders add to a quantised copy (Unsloth's "-bnb-4bit" / "-unsloth-bnb-4bit", "-AWQ",
# "-GPTQ-Int4", "-FP8", NVIDIA's "-NVFP4", llm-compressor's "-W4A16" / "-W8A8"): (pattern, vLLM
# quantization method, bits).
_COPY_SUFFIXES: tuple[tuple[re.Pattern[str], str, float], ...] = (
    (re.compile(r"[-_](?:unsloth[-_])?bnb[-_]4bit$", re.I), "bitsandbytes", BNB_4BIT_DQ_BITS),
    (re.compile(r"[-_](?:qat[-_])?(?:int4[-_])?(?:auto)?awq(?:[-_]int4|[-_]4bit)?$", re.I), "awq", 4),
    (re.compile(r"[-_]gptq[-_](?:int8|8bit)$", re.I), "gptq", 8),  # Qwen's official "-GPTQ-Int8"
    (re.compile(r"[-_]gptq(?:[-_]int4|[-_]4bit)?$", re.I), "gptq", 4),
    (re.compile(r"[-_]fp8(?:[-_](?:dynamic|block))?$", re.I), "fp8", 8),
    (re.compile(r"[-_]nvfp4$", re.I), "modelopt", 4.5),  # NVIDIA's ModelOpt NVFP4: an FP8 scale per 16
    (re.compile(r"[-_](?:quantized\.)?w4a16$", re.I), "compressed-tensors", 4),
    (re.compile(r"[-_](?:quantized\.)?w8a8$", re.I), "compressed-tensors", 8),
)


# llama.cpp file types in a GGUF file name ("Llama-3.2-3B-Instruct-Q8_0.gguf") and their bits per weight
# over a whole 7B model (llama.cpp's quantize table: block scales included, K-quant mixes averaged).
_GGUF_BITS = {"Q2_K": 3.35, "Q3_K_S": 3.5, "Q3_K_M": 3.91, "Q3_K_L": 4.27, "Q4_0": 4.5, "Q4_1": 5.0,
              "Q4_K_S": 4.58, "Q4_K_M": 4.84, "Q5_0": 5.5, "Q5_1": 6.0, "Q5_K_S": 5.54, "Q5_K_M": 5.68,
              "Q6_K": 6.56, "Q8_0": 8.5, "IQ4_XS": 4.25, "IQ4_NL": 4.5, "F16": 16.0, "BF16": 16.0}
_GGUF_NAME = re.compile(r"[-_.](" + "|".join(sorted(_GGUF_BITS, key=len, reverse=True)) + r")$", re.I)


def _gguf_file(ref: str) -> ModelSpec | None:
    """A GGUF file named after a catalogue model and its llama.cpp type (the name vLLM is given with
    ``--quantization gguf``): the catalogue shape at that type's bits per weight."""
    name = ref.replace("\\", "/").rsplit("/", 1)[-1]
    if not name.lower().endswith(".gguf"):
        return None
    m = _GGUF_NAME.search(name[:-5])
    base = _name_index().get(name[:m.start()].lower()) if m else None
    if m is None or base is None or base.quantized_params_b is not None:  # an FP8 release converts too
        return None
    return _quant(base, ref, "gguf", _GGUF_BITS[m.group(1).upper()], group=None,
                  dtype=base.native_dtype or "float16").model_copy(update={"matched_by_name": ref})


@functools.cache
def _name_index() -> dict[str, ModelSpec]:
    """Catalogue models by repository name (the part after the org), ids before aliases; built once."""
    idx: dict[str, ModelSpec] = {}
    for m in _CATALOG:
        idx.setdefault(m.name.lower(), m)
    for m in _CATALOG:
        for a in m.aliases:
            if "/" in a:
                idx.setdefault(a.rsplit("/", 1)[-1].lower(), m)
    return idx


def _by_repo_name(ref: str) -> ModelSpec | None:
    """Another org's copy of a catalogue model: same repository name (Unsloth, community mirrors and
    re-uploads keep it), optionally with a quantisation suffix. The shape is the catalogue model's;
    ``matched_by_name`` says so, and the fit-check reports it."""
    names = _name_index()
    name = ref.rsplit("/", 1)[-1]
    hit = names.get(name.lower())
    if hit is None and name.lower().endswith("-base"):  # Qwen3's base releases: the chat model's shape
        hit = names.get(name[:-5].lower())
    for tuned in ("-instruct", "-it", "-chat"):  # a pretrained release and its tuned one share the shape
        if hit is None:
            hit = names.get(name.lower() + tuned)
    if hit is not None:
        return hit.model_copy(update={"matched_by_name": ref})
    for pattern, method, bits in _COPY_SUFFIXES:
        m = pattern.search(name)
        base = names.get(name[:m.start()].lower()) if m else None
        if base is None:
            continue
        if base.quantization == method:  # the suffix names what the catalogue entry already is
            return base.model_copy(update={"matched_by_name": ref})
        known = quantized_variant(base, method)
        if known is not None and (known.quant_bits == bits or method not in ("awq", "gptq")):  # not Int4 for Int8
            return known.model_copy(update={"matched_by_name": ref})
        if base.quantization is None or base.quantized_params_b is None:  # re-quantised from the release
            # AutoAWQ / AutoGPTQ save float16 whatever the base model was; FP8 re-saves keep bfloat16
            dtype = "float16" if method in ("awq", "gptq") else "bfloat16" if method == "fp8" else \
                (base.native_dtype or "float16")
            grouped = method in ("awq", "gptq") or (method == "compressed-tensors" and bits < 8)
            return _quant(base, ref, method, bits, group=128 if grouped else None,
                          dtype=dtype).model_copy(update={"matched_by_name": ref})
    return None


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
