"""Fit-check: will each vLLM server start on its GPU(s), and with how much KV cache?

Pure functions over the catalogues; no I/O. The memory model follows vLLM's own start-up
accounting *for the vLLM version the server runs* (``biofleet.catalog.vllm_rules``; every
rule with its source and version range is in docs/fit-check.md):

    budget   = gpu_memory_utilization x visible GiB                     (per GPU / TP rank)
    weights  = the checkpoint's bytes when it is at hand, else parameters x bytes per
               parameter (quantised layers at their bits plus group scales; embeddings,
               lm_head and vision towers 16-bit)                          / TP
    overhead = activation peak of the profiling pass (the larger of the forward pass over
               the profiling batch, the sampler warm-up over max_num_seqs x vocab logits,
               and for vision-language models the encoder on the largest images)
             + non-torch memory (cuBLAS workspace; NCCL buffers when TP > 1)
             + CUDA graphs, from vLLM 0.20 on (earlier builds capture them outside the budget)
    KV       = budget - weights - overhead  ->  tokens = KV / per-token bytes of every layer,
               in whole 16-token blocks; sliding-window layers hold only their window (V1 >= 0.9.1)

On top of the per-server budget, every GPU must hold the budgets of all its servers, one CUDA
context per process and the CUDA graphs captured outside the budgets; vLLM V1 (>= 0.9.1)
refuses to start when the free memory is below its budget.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from biofleet.catalog.gpus import MAX_GPU_GIB, GpuSpec
from biofleet.catalog.models import (
    BNB_4BIT_BITS,
    BNB_4BIT_DQ_BITS,
    ModelSpec,
    language_model_only,
    quantized_variant,
    rope_scaled_length,
)
from biofleet.catalog.vllm_rules import (
    DEFAULT_VLLM_VERSION,
    MAX_TOKENS,
    VllmRules,
    ceil_div,
    check_vllm_version,
    hybrid_kv_group_size,
    hybrid_kv_group_slots,
    mamba2_state_bytes,
    mamba_ssm_dtype,
    model_runner_v2,
    mxfp4_expert_bytes,
    mxfp4_moe_backend,
    parse_vllm_version,
    rules_for,
    v0_mamba_batch,
)

__all__ = [
    "BLOCK_SIZE",
    "CUDA_CONTEXT_GIB",
    "UTIL_SUM_WARN",
    "Finding",
    "FitReport",
    "GpuFit",
    "NodeInput",
    "Resolved",
    "ServerFit",
    "ServerInput",
    "activation_gib",
    "check",
    "check_server_on_gpu",
    "cuda_graph_gib",
    "default_max_num_batched_tokens",
    "effective_dtype",
    "kv_bytes_per_token",
    "non_torch_gib",
    "resolve",
    "weights_gib",
]

GiB = 1024 ** 3
BLOCK_SIZE = 16  # vLLM's default KV block size (tokens)
UTIL_SUM_WARN = 0.95  # kept for callers; the GPU check itself adds up budgets, contexts and graphs
LOW_CONCURRENCY = 2.0  # fewer full-length sequences than this: warn
OVERCOMMIT_WARN_GIB = 0.25  # less headroom than this on a GPU: warn

# One process's CUDA context (GpuSpec.cuda_context_gib: 0.51 GiB measured on H100 / H200) is not
# in vLLM's budget (the profiler's baseline is taken after the context exists), so every
# co-located server adds one. This constant is the H100 figure, kept for callers.
CUDA_CONTEXT_GIB = 0.51
# Non-torch memory the profiling pass adds (cuBLAS workspace, allocator slack): 0.24-0.27 GiB in
# 0.19 logs at TP 1 on H100s (0.67 - 0.51 GiB measured after a cuBLAS warm-up; 0.13-0.14 in 0.11 H100
# logs), and as much on L4 / A10G in 0.22-0.28 (the logged KV of cases 1047, 6017, 6018); 0.02-0.10 GiB in
# V0 and V1 <= 0.18 logs (an RTX 3090 on 0.17.1, cases 1055-1066: 0.52-0.64 GiB left for activations and
# non-torch memory together; 0.18 on 4 x RTX 3090 and an RTX PRO 6000, cases 14008, 11022).
# With TP > 1 NCCL and custom all-reduce buffers add ~1.85 GiB per rank
# (0.19 logs 2.07-2.21 GiB; PR #10511's TP 2 log 3.58 - 1.79 GiB).
# On PCIe-only cards vLLM runs no custom all-reduce (custom_all_reduce.py: off without P2P and on
# more than two PCIe-only GPUs) and NCCL keeps no NVLink buffers: TP > 1 adds ~0.25 GiB (logs: L40S x2
# 0.30 and A100-PCIe x4 0.34 GiB against 0.07 at TP 1, RTX 4090 x2 0.25 GiB).
NON_TORCH_GIB, NON_TORCH_NEW_GIB, NCCL_GIB, NCCL_PCIE_GIB = 0.07, 0.25, 1.85, 0.25
# CUDA graphs: 0.46-0.54 GiB logged for 28-36-layer models with 256 sequences, ~0.9 GiB for
# 32-layer models at H100 defaults (1024 sequences, 0.19 logs).
GRAPH_BASE_GIB, GRAPH_PER_LAYER_GIB, GRAPH_BIG_BATCH = 0.15, 0.012, 1.7
GRAPH_FULL_SEQS, GRAPH_SMALL_FLOOR = 128, 0.1  # fewer sequences than this: a smaller graph pool (cuda_graph_gib)
# Forward pass of the profiling batch, bytes per token: gate/up output + activated copy (6 B x
# MLP width / TP) and residual, norm, attention output, QKV (10 B x hidden). 16-bit; x2 for fp32.
ACT_BYTES_PER_INTER, ACT_BYTES_PER_HIDDEN = 6, 10
MOE_WORKSPACE_BYTES = 8  # per token x routed MLP width / TP: fused-MoE buffers kept beside the sampler
AWQ_SPLIT_K_OUTPUTS = 9  # vLLM < 0.3 awq_gemm: 8 split-k partial outputs + their sum (case 2011)
MAX_CPU_OFFLOAD_GB = 65536.0  # --cpu-offload-gb beyond this is no host's memory
MAX_LORAS, MAX_LORA_RANK = 256, 1024  # --max-loras / --max-lora-rank beyond these are no real setting
ROPE_TABLE_NOTED_GIB = 1.0  # RoPE tables this large get an info finding (Llama-4's 2.5 GiB; most models: MiB)
# Vision encoder per patch: MLP output and activation (4 B x width), attention and residuals (12 B x hidden).
VISION_BYTES_PER_INTER, VISION_BYTES_PER_HIDDEN = 4, 12
# Qwen3-VL's dummy video in vLLM 0.11-0.12 (qwen3_vl.py): 24,576 frames of 32 x 32 pixels, 2 x 2 patches of 16 px
# each, merged in pairs of frames: 49,152 encoder positions, 12,288 tokens, counted as 12.5 x 12,288 = 153,600
QWEN3_VL_VIDEO_PATCHES, QWEN3_VL_VIDEO_TOKENS, QWEN3_VL_VIDEO_BUDGET = 49152, 12288, 153600

Severity = Literal["error", "warning", "info"]

_DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}
_DTYPE_ALIASES = {"half": "float16", "fp16": "float16", "float16": "float16", "bf16": "bfloat16",
                  "bfloat16": "bfloat16", "float": "float32", "float32": "float32", "fp32": "float32"}
_FP16_UNSTABLE = ("gemma2", "gemma3", "gemma3_text")  # vLLM keeps these out of float16
# Which --quantization values a checkpoint quantised one way accepts.
_COMPATIBLE = {
    "awq": {"awq", "awq_marlin"},
    "gptq": {"gptq", "gptq_marlin", "marlin", "gptq_marlin_24"},
    "fp8": {"fp8"},
    "fbgemm_fp8": {"fbgemm_fp8", "fp8"},
    "compressed-tensors": {"compressed-tensors"},
    "bitsandbytes": {"bitsandbytes"},
    "mxfp4": {"mxfp4"},
    "gguf": {"gguf"},
    "modelopt": {"modelopt", "modelopt_fp4", "nvfp4"},
}
_WEIGHT_QUANT_GROUPED = {"awq", "gptq", "compressed-tensors"}  # a 16-bit scale (+ packed zero) per group
_ONLINE_QUANT_BITS = {"fp8": 8.0, "bitsandbytes": BNB_4BIT_DQ_BITS}  # quantised at load time from 16-bit weights
_MARLIN = {"awq_marlin", "gptq_marlin", "marlin", "gptq_marlin_24"}
_FA_BACKENDS = {"FLASH_ATTN", "FLASH_ATTN_VLLM_V1", "FLASHINFER", "FLASHINFER_VLLM_V1"}
_NO_VLLM_ARCH = {"BioGptForCausalLM"}  # no vLLM implementation known


# --------------------------------------------------------------------------- inputs

class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ServerInput(_Frozen):
    """One vLLM (or mock) server as the fit-check sees it."""

    name: str
    model: ModelSpec
    kind: Literal["generate", "embed"] = "generate"
    engine: Literal["vllm", "mock"] = "vllm"
    vllm_version: str = DEFAULT_VLLM_VERSION  # the build the server runs: picks the memory rules
    dtype: str = "auto"  # auto | float16 | half | bfloat16 | float32
    quantization: str | None = None  # the --quantization flag requested
    max_model_len: int | None = Field(default=None, gt=0, le=MAX_TOKENS)  # None: the model's context length
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)  # None: that vLLM version's default
    tensor_parallel_size: int = Field(default=1, ge=1, le=64)
    # vLLM --pipeline-parallel-size: stages of tensor_parallel_size GPUs each (usually one node per stage); the
    # fit-check checks the heaviest stage on its GPUs (see pipeline_stage)
    pipeline_parallel_size: int = Field(default=1, ge=1, le=64)
    kv_cache_dtype: str = "auto"  # auto | fp8 | fp8_e4m3 | fp8_e5m2
    mamba_ssm_cache_dtype: str = "auto"  # auto | float16 | bfloat16 | float32 (Mamba hybrids' SSM state)
    enforce_eager: bool = False
    max_num_seqs: int | None = Field(default=None, gt=0, le=MAX_TOKENS)
    max_num_batched_tokens: int | None = Field(default=None, gt=0, le=MAX_TOKENS)
    # free memory on its GPU(s) before it starts (shared GPUs)
    gpu_free_gib: float | None = Field(default=None, ge=0, le=MAX_GPU_GIB)
    # vLLM --cpu-offload-gb: GiB of each GPU's share of the decoder layers' weights kept in CPU memory
    cpu_offload_gb: float = Field(default=0.0, ge=0, le=MAX_CPU_OFFLOAD_GB)
    env: Mapping[str, str] = Field(default_factory=dict)
    # vLLM's --rope-scaling / --hf-overrides '{"rope_scaling": ...}': replaces the config's, so it sets the
    # longest max_model_len vLLM accepts (YaRN x4 takes Qwen3 from 40,960 to 131,072 tokens)
    rope_scaling: Mapping[str, Any] | None = None
    # vLLM --language-model-only, or --limit-mm-per-prompt with images and every modality named at 0: a model served
    # text-only (from TEXT_ONLY_FROM its vision tower is neither loaded nor profiled; see vision_dropped_b)
    language_model_only: bool = False
    # --limit-mm-per-prompt with video at 0: no video item in the encoder's profiling pass (Qwen3-VL, 0.11-0.12)
    video_off: bool = False
    vision_dropped_b: float = Field(default=0.0, ge=0)  # set by the check: the tower text-only mode left out
    # vLLM --max-model-len auto (-1), from 0.14 (PR #29431): the model's context when one request of it fits the KV
    # cache, else the longest that does; the check fits max_model_len the same way (see _auto_length)
    max_model_len_auto: bool = False
    # vLLM --enable-lora / --max-loras / --max-lora-rank: buffers for that many adapters of that rank on every
    # linear layer, allocated with the weights (see lora_gib)
    enable_lora: bool = False
    max_loras: int = Field(default=1, ge=1, le=MAX_LORAS)
    max_lora_rank: int = Field(default=16, ge=1, le=MAX_LORA_RANK)

    @field_validator("vllm_version")
    @classmethod
    def _version(cls, v: str) -> str:
        return check_vllm_version(v)

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, v: str) -> str:
        v = v.strip().lower()
        if v != "auto" and v not in _DTYPE_ALIASES:
            raise ValueError(f"dtype must be auto, float16, half, bfloat16 or float32 (got {v!r})")
        return v

    @field_validator("quantization")
    @classmethod
    def _quant(cls, v: str | None) -> str | None:
        if v is None or v.strip().lower() in ("", "none", "null"):
            return None
        v = v.strip().lower()
        return v if v == "compressed-tensors" else v.replace("-", "_")

    @field_validator("mamba_ssm_cache_dtype")
    @classmethod
    def _ssm(cls, v: str) -> str:
        v = v.strip().lower()
        if v not in ("auto", "float16", "bfloat16", "float32"):
            raise ValueError(f"mamba_ssm_cache_dtype must be auto, float16, bfloat16 or float32 (got {v!r})")
        return v

    @field_validator("kv_cache_dtype")
    @classmethod
    def _kv(cls, v: str) -> str:
        v = v.strip().lower()
        if v not in ("auto", "fp8", "fp8_e4m3", "fp8_e5m2", "float16", "bfloat16", "half"):
            raise ValueError(f"kv_cache_dtype must be auto, fp8, fp8_e4m3 or fp8_e5m2 (got {v!r})")
        return v

    @model_validator(mode="after")
    def _rope_override(self) -> ServerInput:
        if self.rope_scaling is not None:
            stretched = rope_scaled_length(self.model.max_position_embeddings, self.rope_scaling)
            object.__setattr__(self, "model", self.model.model_copy(update={"rope_scaled_context": stretched}))
        return self

    @model_validator(mode="after")
    def _text_only(self) -> ServerInput:
        v = self.model.vision
        if self.language_model_only and v is not None and parse_vllm_version(self.vllm_version) >= TEXT_ONLY_FROM:
            object.__setattr__(self, "vision_dropped_b", v.params_b)
            object.__setattr__(self, "model", language_model_only(self.model))
        return self


ROPE_OVERRIDE_MAX_CHARS = 4096  # a rope_scaling object is a few fields; anything longer is not one
# vLLM's text-only mode for every multimodal family: PR #22299 (Aug 2025, in 0.10.1) for the families it names and
# PR #26000 (Qwen3-VL, 0.11.1), made one mechanism for every model by PR #32605 (merged 2026-01-19, first in 0.15)
TEXT_ONLY_FROM = (0, 15, 0)


def _flag_values(args: Sequence[str], flags: Collection[str], prefixes: tuple[str, ...] = ()
                 ) -> Iterator[tuple[str, str]]:
    """(flag, value) for each of ``flags`` (and each flag starting with one of ``prefixes``, vLLM's dotted
    ``--limit-mm-per-prompt.image`` form) in a server's extra vLLM arguments: ``--flag VALUE`` or ``--flag=VALUE``
    (an empty value when the flag ends the list)."""
    for i, arg in enumerate(args):
        flag, eq, value = arg.partition("=")
        if flag in flags or (prefixes and flag.startswith(prefixes)):
            yield flag, value if eq else (args[i + 1] if i + 1 < len(args) else "")


def _json_object(text: str) -> dict[str, Any] | None:
    """A JSON object given as a flag's value, of at most ``ROPE_OVERRIDE_MAX_CHARS``; None for anything else (vLLM
    refuses such a value at start-up)."""
    import json

    if len(text) > ROPE_OVERRIDE_MAX_CHARS:
        return None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested past the decoder's depth
        return None
    return data if isinstance(data, dict) else None


def cpu_offload_override(args: Sequence[str]) -> float:
    """The ``--cpu-offload-gb`` a server's extra vLLM arguments set (``--cpu-offload-gb X``, ``--flag=X``), or 0.
    A value that is not a number in [0, ``MAX_CPU_OFFLOAD_GB``] is not one (vLLM refuses it at start-up)."""
    found = 0.0
    for _, text in _flag_values(args, ("--cpu-offload-gb", "--cpu_offload_gb")):
        try:
            gb = float(text[:32])
        except ValueError:
            continue
        if 0 <= gb <= MAX_CPU_OFFLOAD_GB:
            found = gb
    return found


def lora_override(args: Sequence[str]) -> dict[str, Any]:
    """``enable_lora`` / ``max_loras`` / ``max_lora_rank`` as a server's extra vLLM arguments set them
    (``--enable-lora``, ``--max-loras N``, ``--max-lora-rank R``); a value out of range is left at vLLM's default."""
    found: dict[str, Any] = {"enable_lora": any(a.partition("=")[0] in ("--enable-lora", "--enable_lora")
                                                and a.partition("=")[2].lower() not in ("false", "0")
                                                for a in args)}
    for key, top in (("max_loras", MAX_LORAS), ("max_lora_rank", MAX_LORA_RANK)):
        for _, text in _flag_values(args, ("--" + key.replace("_", "-"), "--" + key)):
            if text[:8].isdigit() and 1 <= int(text[:8]) <= top:
                found[key] = int(text[:8])
    return found


def _mm_limits(args: Sequence[str]) -> dict[str, str] | None:
    """The per-modality limits a server's extra vLLM arguments set with ``--limit-mm-per-prompt`` (a JSON object
    such as ``'{"image": 0}'`` of at most ``ROPE_OVERRIDE_MAX_CHARS``, or the dotted ``--limit-mm-per-prompt.image 0``
    form), each as text; None when a value is not such an object (vLLM would read it otherwise, or refuse it)."""
    whole = ("--limit-mm-per-prompt", "--limit_mm_per_prompt")
    limits: dict[str, str] = {}
    for flag, text in _flag_values(args, whole, prefixes=tuple(f + "." for f in whole)):
        if flag not in whole:
            limits[flag.partition(".")[2]] = text.strip()  # one modality's limit
            continue
        data = _json_object(text)
        if not data:
            return None
        limits.update((str(k), str(x).strip()) for k, x in data.items())
    return limits


def language_model_only_override(args: Sequence[str]) -> bool:
    """Whether a server's extra vLLM arguments serve a multimodal model text-only: ``--language-model-only``, or
    ``--limit-mm-per-prompt`` with images and every other modality it names at 0 (a modality it leaves out keeps
    vLLM's default limit, so ``{"video": 0}`` alone still takes images)."""
    if "--language-model-only" in args:
        return True
    limits = _mm_limits(args)
    return limits is not None and "image" in limits and all(x == "0" for x in limits.values())


def video_off_override(args: Sequence[str]) -> bool:
    """Whether a server's extra vLLM arguments limit videos to 0 per prompt (``--limit-mm-per-prompt``)."""
    return (_mm_limits(args) or {}).get("video") == "0"


def rope_override(args: Sequence[str]) -> Mapping[str, Any] | None:
    """The rope_scaling a server's extra vLLM arguments set (``--rope-scaling JSON``, or ``--hf-overrides JSON``
    with a ``rope_scaling`` key; ``--flag=JSON`` too), or None. Text that is not a JSON object of at most
    ``ROPE_OVERRIDE_MAX_CHARS`` is not an override (vLLM itself refuses it at start-up)."""
    found: Mapping[str, Any] | None = None
    for flag, text in _flag_values(args, ("--rope-scaling", "--rope_scaling", "--hf-overrides", "--hf_overrides")):
        data: Any = _json_object(text)
        if data is not None and flag.startswith("--hf"):
            data = data.get("rope_scaling")
        if isinstance(data, dict):
            found = data
    return found


class NodeInput(_Frozen):
    """One node: its GPU type and count, and each server with the GPU indices it uses."""

    label: str
    gpu: GpuSpec
    gpu_count: int = Field(default=1, ge=1)
    servers: tuple[tuple[ServerInput, tuple[int, ...]], ...] = ()


# --------------------------------------------------------------------------- outputs

class Finding(_Frozen):
    severity: Severity
    code: str  # stable kebab-case identifier
    message: str
    fix: str = ""

    def to_json_dict(self) -> dict[str, Any]:
        return {"severity": self.severity, "code": self.code, "message": self.message, "fix": self.fix}


def _r2(x: float) -> float:
    return round(x, 2)


class ServerFit(_Frozen):
    name: str
    node: str
    gpus: tuple[int, ...]
    ok: bool
    model: str
    engine: str
    dtype: str  # effective dtype
    quantization: str | None  # effective weight quantisation (checkpoint or requested)
    weights_gib: float
    overhead_gib: float  # activation + non-torch + CUDA graphs counted in the budget
    activation_gib: float
    non_torch_gib: float
    cuda_graph_gib: float  # estimated size, whether or not it is in the budget
    sampler_warmup_gib: float = 0.0  # V1's sampler warm-up after graph capture (the profile's sampler pass again)
    graphs_in_budget: bool
    budget_gib: float
    utilization: float
    kv_cache_gib: float  # may be negative: the deficit
    kv_bytes_per_token: int
    kv_cache_tokens: int
    max_concurrency: float | None  # full-length requests at once; None without a KV cache
    max_model_len: int
    max_num_batched_tokens: int
    inputs: Mapping[str, Any] = Field(default_factory=dict)  # what was resolved / assumed, for the user
    findings: tuple[Finding, ...] = ()

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "node": self.node, "gpus": list(self.gpus), "ok": self.ok, "model": self.model,
            "engine": self.engine, "dtype": self.dtype, "quantization": self.quantization,
            "budget_gib": _r2(self.budget_gib), "weights_gib": _r2(self.weights_gib),
            "overhead_gib": _r2(self.overhead_gib), "activation_gib": _r2(self.activation_gib),
            "non_torch_gib": _r2(self.non_torch_gib), "cuda_graph_gib": _r2(self.cuda_graph_gib),
            "graphs_in_budget": self.graphs_in_budget, "sampler_warmup_gib": _r2(self.sampler_warmup_gib),
            "kv_cache_gib": _r2(self.kv_cache_gib), "kv_bytes_per_token": self.kv_bytes_per_token,
            "kv_cache_tokens": self.kv_cache_tokens,
            "max_concurrency": None if self.max_concurrency is None else _r2(self.max_concurrency),
            "max_model_len": self.max_model_len, "max_num_batched_tokens": self.max_num_batched_tokens,
            "inputs": dict(self.inputs),
            "findings": [f.to_json_dict() for f in self.findings],
        }


class GpuFit(_Frozen):
    node: str
    index: int
    gpu: str
    visible_gib: float
    util_sum: float
    servers: tuple[str, ...]
    used_gib: float  # budgets + CUDA contexts + graphs outside the budgets of its vLLM servers
    findings: tuple[Finding, ...] = ()

    def to_json_dict(self) -> dict[str, Any]:
        return {"node": self.node, "index": self.index, "gpu": self.gpu, "visible_gib": _r2(self.visible_gib),
                "util_sum": round(self.util_sum, 3), "servers": list(self.servers),
                "used_gib": _r2(self.used_gib), "findings": [f.to_json_dict() for f in self.findings]}


class FitReport(_Frozen):
    ok: bool
    servers: tuple[ServerFit, ...] = ()
    gpus: tuple[GpuFit, ...] = ()
    findings: tuple[Finding, ...] = ()

    def all_findings(self) -> list[Finding]:
        return [*self.findings, *(f for g in self.gpus for f in g.findings),
                *(f for s in self.servers for f in s.findings)]

    def codes(self) -> set[str]:
        return {f.code for f in self.all_findings()}

    def server(self, name: str) -> ServerFit:
        for s in self.servers:
            if s.name == name:
                return s
        raise KeyError(name)

    def to_json_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "servers": [s.to_json_dict() for s in self.servers],
                "gpus": [g.to_json_dict() for g in self.gpus], "findings": [f.to_json_dict() for f in self.findings]}


# --------------------------------------------------------------------------- resolution

@dataclass(frozen=True)
class Resolved:
    """A server's settings as vLLM would resolve them on this GPU (defaults filled in)."""

    rules: VllmRules
    dtype: str
    dtype_reason: str
    utilization: float
    max_model_len: int
    batched_tokens: int
    max_num_seqs: int
    big_gpu: bool


def _big_gpu(gpu: GpuSpec) -> bool:
    # vLLM raises its scheduler defaults on cards with >= 70 GiB whose device name does not
    # contain "A100" (EngineArgs usage-context defaults), so the name matters, not only the size.
    return gpu.visible_gib >= 70 and "A100" not in gpu.name.upper()


def _rules(server: ServerInput, gpu: GpuSpec | None) -> VllmRules:
    m = server.model
    return rules_for(server.vllm_version, gpu.compute_capability if gpu else (9, 0),
                     v0_model=m.mamba is not None or (m.vision is not None and m.vision.family == "mllama"),
                     pipeline_parallel=server.pipeline_parallel_size > 1,
                     v0_requested=_env_flag(server, "VLLM_USE_V1") == "0",
                     v1_requested=_env_flag(server, "VLLM_USE_V1") == "1",
                     mrv2=model_runner_v2(server.vllm_version, m.architecture, bool(m.num_experts),
                                          _weight_method(server) is not None,
                                          m.mamba is not None or m.linear_state is not None,
                                          generate=server.kind == "generate" and not m.encoder_only,
                                          env=_env_flag(server, "VLLM_USE_V2_MODEL_RUNNER")))


# vLLM environment switches the fit-check reads, with the releases whose envs.py reads them, each with int()
# (PyPI source archives): "2" is on, "yes" stops vLLM at start-up with a ValueError
_INT_FLAGS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int] | None]] = {
    "VLLM_USE_V1": ((0, 7, 0), (0, 11, 1)),  # gone from 0.11.1 (V1 only)
    "VLLM_USE_V2_MODEL_RUNNER": ((0, 12, 0), None),
}


def _env_flag(server: ServerInput, name: str) -> str:
    """The server's setting of vLLM environment switch ``name`` as vLLM reads it (``bool(int(value))``): "0",
    "1", or "" when unset or not an integer (``_plan_findings`` refuses the latter)."""
    raw = str(server.env.get(name, "")).strip()
    try:
        return "1" if int(raw) else "0"
    except ValueError:
        return ""


def mamba_state_gib(server: ServerInput, dtype: str) -> tuple[float, str]:
    """(GiB of Mamba state one sequence holds on one rank over all Mamba layers, the SSM state's dtype)."""
    mb = server.model.mamba
    if mb is None:
        return 0.0, ""
    return _state_layer_bytes(server, dtype) * mb.layers / GiB, _ssm_dtype(server, dtype)


def _ssm_dtype(server: ServerInput, dtype: str) -> str:
    m = server.model
    return mamba_ssm_dtype(server.mamba_ssm_cache_dtype, dtype, server.vllm_version, m.model_type,
                           m.mamba.config_ssm_dtype if m.mamba else m.linear_ssm_dtype)


def _state_layer_bytes(server: ServerInput, dtype: str) -> int:
    """One Mamba2 or Gated DeltaNet layer's state for one sequence on one rank (0 for other models)."""
    m, tp = server.model, server.tensor_parallel_size
    ssm = _DTYPE_BYTES[_ssm_dtype(server, dtype)]
    if m.mamba is not None:
        mb = m.mamba
        return mamba2_state_bytes(mb.heads, mb.head_dim, mb.n_groups, mb.state_size, mb.conv_kernel, tp,
                                  _DTYPE_BYTES[dtype], ssm)
    if m.linear_state is not None:
        conv, recurrent = m.linear_state
        return conv // tp * _DTYPE_BYTES[dtype] + recurrent // tp * ssm
    return 0


def state_page_bytes(server: ServerInput, dtype: str, rules: VllmRules | None = None) -> int:
    """Bytes of one state page on one rank in V1's hybrid KV cache: one Mamba2 / Gated DeltaNet layer's state
    for one sequence, rounded up to a whole attention block (vLLM raises the attention block size in steps of
    16 tokens until an attention page holds a state page, and pads the state page to it); 0 for other models."""
    state = _state_layer_bytes(server, dtype)
    if not state:
        return 0
    step = BLOCK_SIZE * _layer_token_bytes(server, dtype, rules or _rules(server, None), full=True)
    return math.ceil(state / step) * step


def effective_dtype(server: ServerInput, gpu: GpuSpec | None = None) -> str:
    """The dtype vLLM serves with (see :func:`_resolve_dtype`)."""
    return _resolve_dtype(server, gpu, _rules(server, gpu))[0]


def _resolve_dtype(server: ServerInput, gpu: GpuSpec | None, rules: VllmRules) -> tuple[str, str]:
    """(dtype, why) following vLLM's ``_get_and_verify_dtype`` for this version.

    ``auto`` takes config.json's torch_dtype; a config without one counts as float32, and
    float32 models are served in 16 bits: float16 in older builds (bfloat16 for Gemma-2/3),
    from 0.9 the GPU's preferred 16-bit type (bfloat16 on CC >= 8.0, float16 below; pooling
    models prefer float16; Gemma-2/3 never float16). From 0.9 a config dtype the GPU cannot
    run falls back to that preferred type instead of failing."""
    m = server.model
    if server.dtype != "auto":
        return _DTYPE_ALIASES[server.dtype], "as requested"
    native = _DTYPE_ALIASES.get(m.native_dtype, "bfloat16")
    why = "config.json has no torch_dtype (read as float32)" if m.torch_dtype_missing else \
        f"config.json torch_dtype {native}"
    bf16_ok = gpu is None or gpu.supports_bf16
    if rules.auto_dtype_fallback:
        supported = ["bfloat16", "float16", "float32"] if bf16_ok else ["float16", "float32"]
        if m.model_type in _FP16_UNSTABLE:
            supported.remove("float16")
        pooling = server.kind == "embed" or m.encoder_only
        preferred = "float16" if pooling and "float16" in supported else supported[0]
        if native == "float32":
            return preferred, f"{why}; float32 checkpoints are served in {preferred}"
        if native in supported:
            return native, why
        return preferred, f"{why}, which this GPU cannot run: vLLM falls back to {preferred}"
    if native == "float32":
        served = "bfloat16" if m.model_type in _FP16_UNSTABLE else "float16"
        return served, f"{why}; float32 checkpoints are served in {served}"
    return native, why


def resolve(server: ServerInput, gpu: GpuSpec) -> Resolved:
    """Fill in the defaults of the server's vLLM version on this GPU."""
    rules = _rules(server, gpu)
    dtype, why = _resolve_dtype(server, gpu, rules)
    max_len = server.max_model_len or server.model.context_length
    big = _big_gpu(gpu)
    tokens = server.max_num_batched_tokens or rules.default_max_num_batched_tokens(big, max_len)
    if server.model.encoder_only and not server.max_num_batched_tokens:
        tokens = max(tokens, max_len)  # encoder-only pooling models run whole sequences, never chunked
    return Resolved(rules=rules, dtype=dtype, dtype_reason=why,
                    utilization=server.gpu_memory_utilization or rules.default_utilization,
                    max_model_len=max_len, batched_tokens=tokens,
                    max_num_seqs=server.max_num_seqs or rules.default_max_num_seqs(big), big_gpu=big)


def default_max_num_batched_tokens(gpu: GpuSpec, vllm_version: str = DEFAULT_VLLM_VERSION,
                                   max_model_len: int = 8192) -> int:
    """The profiling batch vLLM uses when ``--max-num-batched-tokens`` is not given."""
    return rules_for(vllm_version, gpu.compute_capability).default_max_num_batched_tokens(_big_gpu(gpu),
                                                                                           max_model_len)


# --------------------------------------------------------------------------- physics

def _weight_method(server: ServerInput) -> str | None:
    """How the weights are stored in memory: the checkpoint's quantisation, else an online one."""
    if server.model.quantization:
        return server.model.quantization
    if server.quantization in _ONLINE_QUANT_BITS:
        return server.quantization
    return None


def _weights_source(server: ServerInput) -> str:
    ck = server.model.checkpoint
    if ck is not None and not (server.model.quantization is None and server.quantization in _ONLINE_QUANT_BITS):
        return f"checkpoint: {ck.source}"
    return "parameters x bytes per parameter"


def _mxfp4_experts(m: ModelSpec) -> tuple[int, int] | None:
    """(expert-layers, per-expert intermediate size) of an MXFP4 MoE checkpoint, from its shapes."""
    if m.quantization != "mxfp4" or not (m.num_experts and m.quantized_params_b):
        return None
    count = m.num_experts * m.num_layers
    inter = round(m.quantized_params_b * 1e9 / (count * 3 * m.hidden_size))
    return count, inter


def weights_gib(server: ServerInput, dtype: str | None = None, gpu: GpuSpec | None = None) -> float:
    """Weights per GPU (GiB) for the server's dtype / quantisation and tensor parallel size, less what
    ``--cpu-offload-gb`` keeps in CPU memory: vLLM offloads the decoder layers' parameters one by one until
    that many GiB per GPU are offloaded (``maybe_offload_to_cpu`` in ``make_layers``); the token embeddings,
    the lm_head and a vision tower stay on the GPU (case 16002: 70 of Llama-3-70B's 131 GiB offloaded,
    61.29 GiB logged on the GPU).

    The checkpoint's own size wins when it is known (local directory or ``--online``): its
    floating-point tensors scaled to the served dtype, packed / FP8 tensors as stored."""
    return _on_gpu(server, _loaded_weights_gib(server, dtype, gpu)) + lora_gib(server, dtype)


def lora_gib(server: ServerInput, dtype: str | None = None) -> float:
    """Per GPU, the LoRA buffers ``--enable-lora`` allocates while the model loads (so vLLM's "Model loading
    took" includes them): every linear layer of the decoder gets, per slice (q, k, v; gate, up), ``max_loras``
    A matrices of rank x input and B matrices of output x rank in the LoRA dtype (the model's), a column-parallel
    layer's output and a row-parallel layer's input split over the tensor-parallel ranks (vLLM
    ``BaseLinearLayerWithLoRA.create_lora_weights``). The embedding / lm_head LoRA buffers (a few MiB) and, for
    MoE models, the experts' are not counted (a finding says so)."""
    if not server.enable_lora:
        return 0.0
    m, tp = server.model, server.tensor_parallel_size
    h, hd = m.hidden_size, m.head_dim or m.hidden_size // m.num_attention_heads
    q, kv = m.num_attention_heads * hd, (m.num_kv_heads or m.num_attention_heads) * hd
    column = [(h, q), (h, kv), (h, kv)]  # (input, output): q, k, v slices of qkv_proj
    row = [(q, h)]  # o_proj
    if m.intermediate_size and not m.num_experts:
        column += [(h, m.intermediate_size)] * 2  # gate_proj, up_proj slices of gate_up_proj
        row += [(m.intermediate_size, h)]  # down_proj
    per_rank = sum(i + o / tp for i, o in column) + sum(i / tp + o for i, o in row)
    dbytes = _DTYPE_BYTES[dtype or effective_dtype(server)]
    return m.num_layers * per_rank * server.max_lora_rank * server.max_loras * dbytes / GiB


def _on_gpu(server: ServerInput, loaded: float) -> float:
    """What stays on each GPU of ``loaded`` GiB of weights after ``--cpu-offload-gb`` (see :func:`weights_gib`)."""
    if not server.cpu_offload_gb:
        return loaded
    m = server.model
    stay = ((m.embedding_params_b + (m.vision.params_b if m.vision else 0.0)) * 1e9 * 2
            / server.tensor_parallel_size / GiB)
    return loaded - min(server.cpu_offload_gb, max(loaded - stay, 0.0))


def rope_cache_gib(m: ModelSpec, dtype: str) -> float:
    """The RoPE cos/sin tables vLLM registers as buffers while the model loads (so "Model loading took" counts
    them), on every rank, in the model's dtype: rows (:attr:`ModelSpec.rope_cache_positions`) x the rotated width.
    Tens of MiB for most models; Gemma-3's linear x8 table is 1,048,576 rows (0.5 GiB at head_dim 256: case 7005,
    -12 % -> 0 %), Llama-4's 10,485,760 (2.5 GiB: case 1009, -4.8 % -> 0 %)."""
    if m.encoder_only or m.rope_cache_positions == 0:
        return 0.0
    rows = m.max_position_embeddings if m.rope_cache_positions is None else m.rope_cache_positions
    width = m.rotary_dim or (64 if m.kv_latent_dim else m.head_dim or m.hidden_size // m.num_attention_heads)
    return rows * width * _DTYPE_BYTES[dtype] / GiB


def _loaded_weights_gib(server: ServerInput, dtype: str | None = None, gpu: GpuSpec | None = None) -> float:
    dtype = dtype or effective_dtype(server)
    return _checkpoint_weights_gib(server, dtype, gpu) + rope_cache_gib(server.model, dtype)


def _checkpoint_weights_gib(server: ServerInput, dtype: str, gpu: GpuSpec | None) -> float:
    m = server.model
    dbytes = _DTYPE_BYTES[dtype]
    method = _weight_method(server)
    ck = m.checkpoint
    online = m.quantization is None and server.quantization in _ONLINE_QUANT_BITS
    bnb_fp32 = method == "bitsandbytes" and _rules(server, gpu).bnb_absmax_fp32
    if ck is not None and not online:
        if ck.float_bytes is not None and ck.float_dtype in _DTYPE_BYTES:
            packed = ck.other_bytes * m.quant_storage_factor
            if bnb_fp32 and m.quant_bits == BNB_4BIT_DQ_BITS:  # the stored 8-bit absmax, loaded as fp32
                packed *= BNB_4BIT_BITS / BNB_4BIT_DQ_BITS
            total = packed + ck.float_bytes * dbytes / _DTYPE_BYTES[ck.float_dtype]
        elif m.quantization:
            total = float(ck.total_bytes)
        else:
            total = ck.total_bytes * dbytes / _DTYPE_BYTES.get(_DTYPE_ALIASES.get(m.native_dtype, "bfloat16"), 2)
        return total / server.tensor_parallel_size / GiB
    params = m.params_b * 1e9
    if method is None or m.encoder_only or (m.quantization and m.quant_bits is None):
        total = params * dbytes  # unknown quantisation methods: counted unquantised (a warning says so)
    else:
        if m.quantization:  # checkpoint stores the quantised layers
            bits = float(m.quant_bits or 16)
            if m.quantization in _WEIGHT_QUANT_GROUPED and m.quant_group_size:
                zero = bits if m.quantization in ("awq", "gptq") else 0.0  # packed zero points (asymmetric)
                bits += (16 + zero) / m.quant_group_size
        else:
            bits = _ONLINE_QUANT_BITS[method]
        if bnb_fp32 and bits == BNB_4BIT_DQ_BITS:
            bits = BNB_4BIT_BITS
        # a checkpoint's vision tower stays 16-bit (its quantiser skipped it); quantising at load time (bitsandbytes,
        # fp8) takes the tower's linear layers too, which the VL families build with the quant config
        vision = (m.vision.params_b if m.vision and not online else 0.0) * 1e9
        experts = _mxfp4_experts(m)
        if experts and m.quantized_params_b:  # gpt-oss: MXFP4 experts as the version's kernel stores them
            count, inter = experts
            tp = server.tensor_parallel_size
            backend = mxfp4_moe_backend(server.vllm_version, gpu.compute_capability if gpu else (9, 0))
            # the rest (attention, router, embeddings, lm_head, sinks) is bf16; expert biases are in the rule
            rest = max(params - m.quantized_params_b * 1e9 - count * (2 * inter + m.hidden_size), 0.0)
            return (rest * 2 / tp + count * mxfp4_expert_bytes(m.hidden_size, inter, tp, backend)) / GiB
        if m.quantized_params_b:  # e.g. Meta's 405B FP8: only the MLPs are quantised
            rest = max(params - m.quantized_params_b * 1e9, 0.0)
            quantized = m.quantized_params_b * 1e9 * m.quant_storage_factor
        else:  # embeddings and lm_head stay 16-bit, except in a GGUF file (vLLM keeps its embeddings quantised)
            rest = min((0.0 if m.quantization == "gguf" else m.embedding_params_b * 1e9) + vision, params)
            quantized = params - rest
        total = quantized * bits / 8 + rest * 2  # the unquantised rest stays 16-bit
    return total / server.tensor_parallel_size / GiB


def _kv_element_bytes(server: ServerInput, dtype: str) -> int:
    return 1 if server.kv_cache_dtype.startswith("fp8") else _DTYPE_BYTES[dtype]


def _layer_token_bytes(server: ServerInput, dtype: str, rules: VllmRules, full: bool = False) -> int:
    """KV bytes per token of ONE attention layer on one TP rank (``full``: a full-attention layer of a
    model whose global layers have their own K/V shape, Gemma-4)."""
    m = server.model
    el = _kv_element_bytes(server, dtype)
    if m.kv_latent_dim and rules.mla_latent_kv:
        return m.kv_latent_dim * el  # MLA: one latent vector per layer, replicated on every rank
    # Before 0.7.1 vLLM ran MLA models as multi-head attention: every head's K (nope + rope, 192)
    # and V padded to the same width were cached, split over the TP ranks like any MHA model.
    assert m.num_kv_heads is not None and m.head_dim is not None
    heads, dim = m.num_kv_heads, m.head_dim
    if full and m.global_kv_heads and m.global_head_dim:
        heads, dim = m.global_kv_heads, m.global_head_dim  # Gemma-4 caches K and V for these too (k_eq_v)
    kv_rank = max(1, heads // server.tensor_parallel_size)
    return 2 * kv_rank * dim * el


def _slot_bytes(server: ServerInput, dtype: str, rules: VllmRules) -> tuple[int, int]:
    """(bytes per token of a full-attention layer, of a sliding-window layer) on one TP rank."""
    return _layer_token_bytes(server, dtype, rules, full=True), _layer_token_bytes(server, dtype, rules)


def _kv_layers(m: ModelSpec) -> tuple[int, int]:
    """(layers with a KV cache, of which sliding-window layers)."""
    layers = m.kv_layers or m.num_layers
    if not m.sliding_window:
        return layers, 0
    return layers, min(layers, m.sliding_layers if m.sliding_layers is not None else layers)


def _state_layers(m: ModelSpec) -> int:
    """Layers that keep a per-sequence state instead of a KV cache: Mamba2 mixers (not Nemotron-H's MLP / MoE
    layers, which keep neither), or the layers beside the attention ones of a Gated DeltaNet model."""
    if m.mamba is not None:
        return m.mamba.layers
    return m.num_layers - _kv_layers(m)[0] if m.linear_state is not None else 0


def _kv_slots(server: ServerInput, rules: VllmRules) -> tuple[int, int]:
    """(full-attention slots, sliding-window slots) the KV cache is divided over: the real layers,
    or with the hybrid KV manager (V1 >= 0.9.1) the padded group slots (``hybrid_kv_group_slots``)."""
    layers, sliding = _kv_layers(server.model)
    m = server.model
    stateful = _state_layers(m)
    if rules.hybrid_kv and stateful and not sliding:
        # Mamba / Gated DeltaNet layers are KV-cache groups of their own, their state in pages as large as an
        # attention layer's (vLLM raises the attention block size to match), so the printed token count divides
        # the cache over every layer slot: Qwen3.5-27B (16 attention + 48 linear layers) prints a quarter of what
        # its attention layers hold (case 14009, 0.19: 114,464 tokens logged)
        full, state = hybrid_kv_group_slots((layers, stateful), rules.kv_group_near_equal_ratio)
        return full + state, 0
    if not (rules.hybrid_kv and sliding and m.sliding_window):
        return layers - sliding, sliding
    full, slide = hybrid_kv_group_slots((layers - sliding, sliding), rules.kv_group_near_equal_ratio)
    return full, slide


def kv_bytes_per_token(server: ServerInput, dtype: str | None = None) -> int:
    """KV-cache bytes per token on one TP rank over all layers (0 for encoder-only models)."""
    if server.model.encoder_only:
        return 0
    layers, sliding = _kv_layers(server.model)
    full_b, slide_b = _slot_bytes(server, dtype or effective_dtype(server), _rules(server, None))
    return (layers - sliding) * full_b + sliding * slide_b


def _request_kv_bytes(server: ServerInput, res: Resolved, check: bool = True) -> int:
    """KV bytes one ``max_model_len`` request occupies: as vLLM checks it at start-up (``check``), or as the
    cache is allocated (the concurrency vLLM prints).

    The check (``check_enough_kv_cache_memory``) sums every layer's ``max_memory_usage_bytes``: from V1 0.8.3 a
    sliding-window layer counts ``min(window - 1 + batched tokens, max_model_len)`` tokens plus one block
    (``SlidingWindowSpec``). The allocation gives sliding layers their window only with the hybrid KV manager
    (0.9.1), in its padded group slots (``_kv_slots``); before, every layer the full length."""
    full_b, slide_b = _slot_bytes(server, res.dtype, res.rules)
    layers, sliding = _kv_layers(server.model)
    full_blocks = math.ceil(res.max_model_len / BLOCK_SIZE)
    windowed = res.rules.sliding_window_check if check else res.rules.hybrid_kv
    if not (windowed and sliding and server.model.sliding_window):
        return ((layers - sliding) * full_b + sliding * slide_b) * full_blocks * BLOCK_SIZE
    full_slots, slide_slots = (layers - sliding, sliding) if check else _kv_slots(server, res.rules)
    kept = min(server.model.sliding_window - 1 + res.batched_tokens, res.max_model_len)
    slide_blocks = math.ceil(kept / BLOCK_SIZE) + 1
    return (full_slots * full_blocks * full_b + slide_slots * min(slide_blocks, full_blocks + 1) * slide_b) * BLOCK_SIZE


def activation_gib(server: ServerInput, gpu: GpuSpec, max_model_len: int | None = None) -> float:
    """Peak activation memory of vLLM's profiling pass, per rank (GiB)."""
    res = resolve(server, gpu)
    if max_model_len is not None and max_model_len != res.max_model_len:
        res = resolve(server.model_copy(update={"max_model_len": max_model_len}), gpu)
    return _activation(server, res)


def _activation(server: ServerInput, res: Resolved) -> float:
    """The larger of: the forward pass over the profiling batch; the sampler warm-up (logits of
    ``min(max_num_seqs, batch)`` rows over the vocabulary, at the era's bytes per logit) plus
    fused-MoE buffers that stay allocated beside it, with (V1) the dummy encoder outputs held through both; the
    vision encoder on the largest items the encoder budget holds. Fitted on the logged activation peaks
    (docs/fit-check.md)."""
    m = server.model
    tp = server.tensor_parallel_size
    tokens = res.batched_tokens
    if m.vision is not None and res.rules.engine == "V0" and m.vision.family != "mllama":
        # V0 lengthens a dummy sequence, never cuts it, to hold its image's tokens
        tokens = max(tokens, _encoder_items(server, res) * m.vision.tokens_per_item)
    scale = _DTYPE_BYTES[res.dtype] / 2
    inter = m.intermediate_size or 4 * m.hidden_size
    forward = tokens * (ACT_BYTES_PER_INTER * inter / tp + ACT_BYTES_PER_HIDDEN * m.hidden_size) * scale
    if res.rules.awq_split_k_gemm and m.quantization == "awq":
        # vLLM < 0.3 ran every AWQ layer through awq_gemm with split_k = 8 partial fp16 outputs, summed after:
        # 9 x tokens x width for the widest layer: the merged gate/up (an expert's is not split over TP:
        # 0.2's quantised Mixtral keeps whole experts on each rank and runs every expert on every token)
        widest = 2 * inter / (m.experts_per_token or 1) if m.num_experts else 2 * inter / tp
        forward += AWQ_SPLIT_K_OUTPUTS * tokens * widest * 2
    peak = forward
    if not m.encoder_only and server.kind == "generate":
        sampler = _sampler_bytes(server, res, tokens)
        if m.num_experts and res.rules.engine == "V1":
            sampler += MOE_WORKSPACE_BYTES * tokens * inter / tp
        peak = max(peak, sampler)
    if m.vision is None:
        return peak / GiB
    return max(peak + _held_encoder_bytes(server, res), _encoder_bytes(server, res)) / GiB


# A compiled start whose compile cache is empty (the first start of a model and configuration where vLLM's cache
# directory, ~/.cache/vllm/torch_compile_cache, lacks it) peaks, while vLLM compiles inside its profiling pass, at
# about one 16-bit vocabulary x hidden matrix on each rank plus 4 bytes x tokens x hidden. Measured with vLLM 0.23.0
# on an H200 (scripts/device/vllm_startup.py, tests/data/device/vllm023_h200.jsonl: Qwen3-8B at 8,192 tokens
# peaked 1.29 GiB on both model runners, where the forward pass and the sampler account for 0.88 and the matrix is
# 1.16) and in logs of 0.24-0.29: 19210 1.28 GiB against 0.44 for the same command after an "AOT compile cache hit"
# (19212); 20014 1.23 GiB at 512 tokens; 20010; 6016-6018 1.04 GiB for Qwen2.5-7B's 1.02 GiB matrix; twins 19002 /
# 19003 (0.24) 89,040 and 95,936 KV tokens for one command. Eager starts (20011 / 20012) and 0.10 (1039) do not
# show it. Which state a log had is rarely stated, and as many logs are warm as cold (19003, 19004, 20005,
# 1065): the KV figures are the warm start's, and a plan that only the warm start fits is warned (first-start-
# kv-short), since its first start fails once and saves the compiled artifacts, so the next start fits.
COLD_COMPILE_BYTES_PER_TOKEN_HIDDEN = 4


def cold_compile_bytes(server: ServerInput, tokens: int) -> float:
    """The profiled peak of a compiled V1 start (>= 0.17) with an empty compile cache, in bytes on one rank."""
    m = server.model
    return (m.vocab_size / server.tensor_parallel_size * m.hidden_size * 2
            + COLD_COMPILE_BYTES_PER_TOKEN_HIDDEN * tokens * m.hidden_size)


def first_start_extra_gib(server: ServerInput, res: Resolved, activation_gib: float) -> float:
    """How much more a first (cold compile cache) start profiles than ``activation_gib``: 0 where it does not."""
    if not res.rules.cold_compile_copy or server.enforce_eager:
        return 0.0
    return max(0.0, cold_compile_bytes(server, res.batched_tokens) / GiB - activation_gib)


def _sampler_bytes(server: ServerInput, res: Resolved, tokens: int | None = None, warmup: bool = False) -> float:
    """The sampler's logits pass: ``min(max_num_seqs, tokens)`` rows of the vocabulary at the era's bytes per
    logit, in the profile or (``warmup``) in the warm-up after the graphs (0 for embedding servers)."""
    m = server.model
    if m.encoder_only or server.kind != "generate":
        return 0.0
    rows = min(res.max_num_seqs, res.batched_tokens if tokens is None else tokens)
    r = res.rules
    return rows * m.vocab_size * (r.sampler_bytes_per_logit if warmup else r.profile_sampler_bytes_per_logit)


def sampler_warmup_gib(server: ServerInput, res: Resolved) -> float:
    """What V1 allocates again when it warms the sampler up after capturing the CUDA graphs (the rows and
    settings of the profiling pass: ``GPUWorker.compile_or_warm_up_model``, from 0.8); 0 for V0, which has
    no such step. The profile's freed peak holds it unless the graphs took that memory."""
    if res.rules.engine != "V1":
        return 0.0
    return _sampler_bytes(server, res, warmup=True) / GiB


class _EncoderProfile(NamedTuple):
    modality: str  # what the dummy items are: "image" (the largest), or Qwen3-VL's "video"
    items: int  # dummy items the encoder runs on
    patches: int  # encoder positions per item
    held_rows: int  # rows of each item's output the runner keeps through the text pass and the sampler (V1)


def _encoder_profile(server: ServerInput, res: Resolved) -> _EncoderProfile:
    """The vision encoder's profiling pass. V1 fills its encoder budget (``max(batched tokens, tokens per
    item)``) with the modality of the most tokens per item (an image; for Qwen3-VL on 0.11-0.12 a video, see
    ``QWEN3_VL_VIDEO_PATCHES``) and keeps the outputs in its encoder cache through the text pass, padded as
    ``VllmRules.mm_profile_pad`` says; V0's decoder-only runner cuts the dummy sequences to ``batched tokens //
    tokens per image`` (at least one), one image each: the same count. V0's encoder-decoder runner (mllama)
    gives every one of the ``max_num_seqs`` dummy sequences an image of the most tiles; V1 never ran mllama."""
    v, rules = server.model.vision, res.rules
    if v is None or not v.modelled or v.tokens_per_item <= 0 or not rules.encoder_profiled:
        return _EncoderProfile("image", 0, 0, 0)
    if v.family == "mllama":
        return _EncoderProfile("image", res.max_num_seqs if rules.engine == "V0" else 0, v.patches_per_item, 0)
    modality, tokens, patches, rows = "image", v.tokens_per_item, v.patches_per_item, v.tokens_per_item
    if v.family == "qwen3_vl" and rules.qwen3_vl_video_profile and not server.video_off:
        modality, tokens, patches, rows = "video", QWEN3_VL_VIDEO_BUDGET, QWEN3_VL_VIDEO_PATCHES, QWEN3_VL_VIDEO_TOKENS
    budget = max(res.batched_tokens, tokens)
    items = max(1, min(budget // tokens, res.max_num_seqs))
    if rules.engine != "V1":
        rows = 0
    elif rules.mm_profile_pad != "none":
        rows = budget if rules.mm_profile_pad == "budget" else tokens
    return _EncoderProfile(modality, items, patches, rows)


def _encoder_items(server: ServerInput, res: Resolved) -> int:
    return _encoder_profile(server, res).items


def _encoder_bytes(server: ServerInput, res: Resolved) -> float:
    """The encoder's own peak over the profiling pass: its activations on every dummy item."""
    v, p = server.model.vision, _encoder_profile(server, res)
    if v is None or not p.items:
        return 0.0
    # the tower's MLP is column- / row-parallel in vLLM (siglip.py, qwen2_5_vl.py: each rank holds inter / TP of
    # it); mllama's V0 encoder is left whole (case 17008 peaked above the whole-tower count at TP 4)
    inter = v.intermediate_size / (server.tensor_parallel_size if v.family != "mllama" else 1)
    per_patch = VISION_BYTES_PER_INTER * inter + VISION_BYTES_PER_HIDDEN * v.hidden_size
    return p.items * p.patches * per_patch * _DTYPE_BYTES[res.dtype] / 2


def _vision_inputs(server: ServerInput, res: Resolved) -> dict[str, Any]:
    p = _encoder_profile(server, res)
    return {"modality": p.modality, "items": p.items, "patches_per_item": p.patches,
            "outputs_held_gib": round(_held_encoder_bytes(server, res) / GiB, 3)}


def _held_encoder_bytes(server: ServerInput, res: Resolved) -> float:
    """The dummy encoder outputs V1 keeps while the text pass and the sampler run: items x rows x the output's
    width (the text model's hidden size, once more per DeepStack level)."""
    v, p = server.model.vision, _encoder_profile(server, res)
    if v is None:
        return 0.0
    width = server.model.hidden_size * (1 + v.deepstack_levels)
    return p.items * p.held_rows * width * _DTYPE_BYTES[res.dtype]


def non_torch_gib(server: ServerInput, rules: VllmRules | None = None, gpu: GpuSpec | None = None) -> float:
    """Memory outside torch's allocator that the profiler counts, per rank (the larger figure from V1 0.19).
    With TP > 1 the
    communication buffers depend on the link between the GPUs (``GpuSpec.nvlink``): NVLink-
    connected ranks (and unknown cards) get the NVLink figure, PCIe-only cards the small one."""
    rules = rules or _rules(server, gpu)
    if not rules.non_torch_counted:
        return 0.0  # before 0.2.5 only torch.cuda.max_memory_allocated was read
    base = NON_TORCH_NEW_GIB if rules.engine == "V1" and rules.version >= (0, 19, 0) else NON_TORCH_GIB
    if server.tensor_parallel_size == 1:
        return base
    return base + (NCCL_PCIE_GIB if gpu is not None and gpu.nvlink is False else NCCL_GIB)


def held_by_others_gib(server: ServerInput, gpu: GpuSpec) -> float:
    """Memory other processes hold on the server's GPU before it starts (visible - ``gpu_free_gib``)."""
    return max(0.0, gpu.visible_gib - server.gpu_free_gib) if server.gpu_free_gib is not None else 0.0


def state_blocks(server: ServerInput, res: Resolved, kv_gib: float) -> int | None:
    """The blocks a hybrid model's V1 KV cache holds (``KVCacheConfig.num_blocks``): the cache is split into as many
    pools as a KV-cache group has layers, each of ``num_blocks`` pages of :func:`state_page_bytes`
    (``kv_cache_utils.get_num_blocks``: KV // page // group size). Each decode sequence needs one for its state, and
    vLLM >= 0.20 refuses to capture CUDA graphs for more sequences than there are (``compilation.py``; NeMo-RL's
    A/B of 0.17.1 against 0.20.0). Case 18202 (Qwen3.6-35B-A3B FP8, 0.25.2) logged 95 blocks at 1.44x concurrency
    for 131,072 tokens: 95 / 1.44 = 66 blocks a request = 63 attention blocks of 2,096 tokens + 3 state groups,
    which is the float32 state's page (see ``mamba_ssm_dtype``). None where the check does not apply."""
    if res.rules.engine != "V1" or res.rules.version < (0, 20, 0) or kv_gib <= 0:
        return None
    page = state_page_bytes(server, res.dtype, res.rules)
    if not page:
        return None
    layers, _ = _kv_layers(server.model)
    size = hybrid_kv_group_size((layers, _state_layers(server.model)), res.rules.kv_group_near_equal_ratio) or layers
    return int(kv_gib * GiB // (size * page))


def cuda_graph_gib(server: ServerInput, max_num_seqs: int = 256) -> float:
    """Estimated CUDA-graph pool of one rank (0 with enforce_eager)."""
    if server.enforce_eager:
        return 0.0
    size = GRAPH_BASE_GIB + GRAPH_PER_LAYER_GIB * server.model.num_layers
    if max_num_seqs >= 512:
        return size * GRAPH_BIG_BATCH
    # vLLM captures batch sizes up to max_num_seqs only (V0 `_get_max_graph_batch_size`, V1's capture-size list
    # cut at it), and the pool holds the largest's buffers: below GRAPH_FULL_SEQS it shrinks with the batch
    # (logged: 0.04-0.14 GiB at 1 sequence, cases 6003 / 12101 / 14002 / 1039; 0.10-0.11 at 16, 1032 / 14006;
    # 0.22 / 0.29 at 64, 1019 / 16117)
    return size * min(1.0, GRAPH_SMALL_FLOOR + (1 - GRAPH_SMALL_FLOOR) * max_num_seqs / GRAPH_FULL_SEQS)


# --------------------------------------------------------------------------- checks

def _f(severity: Severity, code: str, message: str, fix: str = "") -> Finding:
    return Finding(severity=severity, code=code, message=message, fix=fix)


def _capability(server: ServerInput, gpu: GpuSpec, res: Resolved) -> list[Finding]:
    m, out = server.model, []
    cc = gpu.cc_str
    dtype = res.dtype
    if not gpu.vllm_supported:
        out.append(_f("error", "gpu-unsupported",
                      f"{gpu.name} has compute capability {cc}; vLLM needs >= 7.0 (Pascal and older are refused)",
                      "use a GPU with compute capability >= 7.0 (V100, T4 or newer), or serve this model with "
                      "an engine that supports Pascal (e.g. llama.cpp)"))
    if gpu.unified_memory:
        # vLLM's MemorySnapshot on integrated GPUs (utils/mem_utils.py, PyPI source archives): from 0.12 the free
        # memory is the OS's MemAvailable, before it cudaMemGetInfo's free system memory (page cache not counted)
        reads = "the OS's available memory (psutil)" if res.rules.version >= (0, 12, 0) else \
            "cudaMemGetInfo, which leaves out the page cache"
        out.append(_f("warning", "unified-memory",
                      f"{gpu.name} shares its memory with the CPU: vLLM {res.rules.label} reads the free memory from "
                      f"{reads}, so what other programs hold, load or release while it starts moves its KV cache "
                      "(one DGX Spark server logged seven times the KV cache these figures, which assume nothing "
                      "else, give); the KV figures here are a guide only",
                      "give what is free with --gpu-free-gib, and stop other GPU programs while vLLM starts"))
    if dtype == "bfloat16" and not gpu.supports_bf16:
        why = f"dtype auto picks {m.native_dtype} from config.json (vLLM {res.rules.label} does not fall back)" \
            if server.dtype == "auto" else "dtype bfloat16"
        fix = ("use dtype float32 (Gemma-2/3 are numerically unstable in float16) or a GPU with compute "
               "capability >= 8.0" if m.model_type in _FP16_UNSTABLE else "use dtype float16")
        out.append(_f("error", "bf16-unsupported",
                      f"{why}, but bfloat16 needs compute capability >= 8.0 and {gpu.name} has {cc}", fix))
    elif server.dtype == "auto" and "falls back" in res.dtype_reason:
        out.append(_f("info", "dtype-fallback", f"dtype auto: {res.dtype_reason} (vLLM {res.rules.label})",
                      f"set dtype {dtype} to make it explicit"))
    if m.torch_dtype_missing and server.dtype == "auto":
        out.append(_f("info", "torch-dtype-missing",
                      f"{m.id}: config.json has no torch_dtype; vLLM reads it as float32 and serves {dtype}",
                      "set dtype explicitly if the checkpoint is stored in another type"))
    if dtype == "float16" and m.model_type in _FP16_UNSTABLE:
        out.append(_f("warning", "fp16-unstable",
                      f"{m.id} is numerically unstable in float16; several vLLM versions refuse it",
                      "use dtype bfloat16 (CC >= 8.0) or float32"))
    backend = (server.env.get("VLLM_ATTENTION_BACKEND") or "").strip().upper()
    if backend in _FA_BACKENDS and not gpu.supports_flash_attn2:
        out.append(_f("error", "attention-backend-unsupported",
                      f"VLLM_ATTENTION_BACKEND={backend} needs compute capability >= 8.0; {gpu.name} has {cc}",
                      "unset VLLM_ATTENTION_BACKEND (vLLM then picks XFormers/Triton/FlexAttention on this GPU)"))
    if m.attn_softcapping and not gpu.supports_flash_attn2:
        out.append(_f("warning", "softcap-unsupported",
                      f"{m.id} uses attention logit soft-capping; on compute capability {cc} older vLLM "
                      "builds refuse it (XFormers) or hang",
                      "use a recent vLLM (soft-capping on Turing/Volta since PR #11252) or a GPU with CC >= 8.0"))
    if m.architecture in _NO_VLLM_ARCH:
        out.append(_f("warning", "architecture-unsupported",
                      f"{m.id} ({m.architecture}) has no known vLLM implementation",
                      "serve it with the engine its model card names, or pick a vLLM-supported model"))
    if m.encoder_only and server.kind == "generate":
        out.append(_f("error", "kind-mismatch", f"{m.id} is an encoder-only embedding model and cannot generate",
                      "set kind: embed"))
    out += _quant_findings(server, gpu, dtype, res.rules)
    if server.kv_cache_dtype.startswith("fp8") and not gpu.supports_fp8:
        out.append(_f("warning", "fp8-kv-cache-old-gpu",
                      f"kv_cache_dtype {server.kv_cache_dtype} on compute capability {cc} (< 8.9): only some "
                      "attention backends accept an FP8 KV cache there",
                      "use kv_cache_dtype auto, or verify with your vLLM version"))
    return out


def _quant_findings(server: ServerInput, gpu: GpuSpec, dtype: str, rules: VllmRules) -> list[Finding]:
    m, req, ck, out = server.model, server.quantization, server.model.quantization, []
    cc = gpu.cc_str
    marlin = gpu.compute_capability >= rules.marlin_min_cc
    need_marlin = ".".join(map(str, rules.marlin_min_cc))
    if ck and m.quant_bits is None:
        assumed = "its checkpoint size" if m.checkpoint else "16 bits per parameter (an upper bound)"
        out.append(_f("warning", "quant-method-unknown",
                      f"{m.id} is quantised with {ck!r}, a method the fit-check does not model; its weights are "
                      f"counted from {assumed}",
                      "" if m.checkpoint else "point --model at the checkpoint directory, or use --online, so "
                      "the weights come from the safetensors; or describe quant_bits under models:"))
    if req and ck is None and req in ("awq", "awq_marlin", "gptq", "gptq_marlin", "marlin", "gptq_marlin_24"):
        method = "awq" if req.startswith("awq") else "gptq"
        variant = quantized_variant(m, method)
        fix = (f"use {variant.id} with quantization {method}" if variant else
               f"drop quantization {req} (the checkpoint is not {method.upper()}), or point model at "
               f"{_an(method)} {method.upper()} checkpoint of {m.id} and describe it under models:")
        out.append(_f("error", f"{method}-checkpoint-mismatch",
                      f"quantization {req} needs {_an(method)} {method.upper()}-quantised checkpoint; "
                      f"{m.id} is not quantised", fix))
    elif req and ck and req not in _COMPATIBLE.get(ck, {ck}) and m.matched_by_name:
        out.append(_f("info", "quant-method-by-name",
                      f"{m.id}: its method ({ck}) was read from the repository name; "
                      f"quantization {req} as given is taken to be the checkpoint's",
                      "point --model at the checkpoint's config.json, or use --online, to check it"))
    elif req and ck and req not in _COMPATIBLE.get(ck, {ck}):
        out.append(_f("error", "quant-checkpoint-mismatch",
                      f"quantization {req} requested, but {m.id} is a {ck} checkpoint",
                      f"use quantization {ck} or leave it unset (vLLM reads it from config.json)"))
    elif req is None and ck:
        out.append(_f("info", "quant-auto-detected",
                      f"{m.id} is a {ck} checkpoint; vLLM detects it from config.json",
                      f"set quantization {ck} to make it explicit"))
    elif req and ck is None and req not in _ONLINE_QUANT_BITS:
        out.append(_f("warning", "quant-unknown", f"quantization {req} on an unquantised checkpoint is not modelled; "
                      "weights are estimated unquantised"))
    # kernel the GPU will run: an explicit flag wins; otherwise the checkpoint's format
    kernel = req or ck
    if kernel is None:
        return out
    # an AWQ checkpoint without the flag runs awq_marlin where Marlin runs (bf16 fine), plain awq elsewhere
    if kernel == "awq" and (req is not None or not marlin):
        if gpu.compute_capability < (7, 5):
            out.append(_f("error", "quant-unsupported-on-gpu",
                          f"AWQ kernels need compute capability >= 7.5; {gpu.name} has {cc}",
                          "use a GPTQ checkpoint (GPTQ runs on Volta) or a Turing-or-newer GPU"))
        if dtype == "bfloat16":
            out.append(_f("error", "quant-dtype-mismatch",
                          "the AWQ kernel runs in float16 only; bfloat16 was requested",
                          "use dtype float16" +
                          (" (or quantization awq_marlin, which accepts bfloat16)" if marlin else "")))
    if kernel in _MARLIN and not marlin:
        plain = "awq" if kernel.startswith("awq") else "gptq"
        out.append(_f("error", "quant-unsupported-on-gpu",
                      f"{kernel} (Marlin kernels) needs compute capability >= {need_marlin} in vLLM "
                      f"{rules.label}; {gpu.name} has {cc}",
                      f"use quantization {plain}" + (", or vLLM >= 0.14 (Marlin on Turing)"
                                                     if gpu.compute_capability >= (7, 5) else "")))
    if kernel in ("fp8", "fbgemm_fp8"):
        if gpu.compute_capability < (8, 0):
            out.append(_f("error", "fp8-unsupported",
                          f"FP8 weights need compute capability >= 8.9 (native) or >= 8.0 (weight-only Marlin); "
                          f"{gpu.name} has {cc} (only the newest vLLM builds run FP8 on Turing)",
                          "use an AWQ/GPTQ checkpoint, or an L4/H100-class GPU"))
        elif not gpu.supports_fp8:
            out.append(_f("warning", "fp8-weight-only",
                          f"{gpu.name} (CC {cc}) has no FP8 compute; vLLM runs FP8 weights weight-only via Marlin "
                          "(slower, same memory)", "use an L4/L40S/H100 for native FP8"))
    if kernel == "compressed-tensors" and m.quant_bits is not None:
        need = (7, 5) if m.quant_bits >= 8 else rules.marlin_min_cc  # WNA16 runs on Marlin
        if gpu.compute_capability < need:
            out.append(_f("error", "quant-unsupported-on-gpu",
                          f"this compressed-tensors scheme ({m.quant_bits:g}-bit) needs compute capability >= "
                          f"{need[0]}.{need[1]}; {gpu.name} has {cc}", "use an AWQ/GPTQ checkpoint"))
    if kernel == "mxfp4" and not gpu.supports_marlin:
        out.append(_f("error", "quant-unsupported-on-gpu",
                      f"MXFP4 needs compute capability >= 8.0 (weight-only via Marlin); {gpu.name} has {cc}",
                      "use a GPU with compute capability >= 8.0"))
    return out


# Unsloth's "dynamic" 4-bit re-uploads ("...-unsloth-bnb-4bit"), as opposed to its plain "-bnb-4bit" copies
_DYNAMIC_4BIT = re.compile(r"[-_]unsloth[-_]bnb[-_]4bit$", re.I)


def _model_coverage(server: ServerInput, res: Resolved) -> list[Finding]:
    """Warnings for the parts of a model the fit-check does not count."""
    m, out = server.model, []
    v = m.vision
    if v is not None and not _encoder_items(server, res):
        why = f"the {m.model_type or 'unknown'} vision encoder's profiling pass is not modelled" + \
            (" for this engine" if v.modelled else "")
        out.append(_f("warning", "vision-not-modelled",
                      f"{m.id}: vision tower weights are counted ({v.params_b:g}B parameters) but its activation "
                      f"peak is not ({why}); the KV cache may be smaller than shown",
                      "keep headroom, or limit images with --limit-mm-per-prompt"))
    if server.vision_dropped_b:
        out.append(_f("info", "language-model-only",
                      f"{m.id} served text-only: vLLM {res.rules.label} loads no vision tower "
                      f"({server.vision_dropped_b:g}B parameters left out) and profiles no encoder"))
    elif server.language_model_only and v is not None:
        out.append(_f("warning", "language-model-only-unsure",
                      f"text-only mode in vLLM {res.rules.label} leaves the vision tower out for some families only "
                      f"(PR #22299, 0.10.1; every family from 0.15): {m.id}'s tower is counted",
                      "use vLLM >= 0.15 for the memory text-only mode saves"))
    if m.matched_by_name:
        # a catalogue entry keeps its id; a copy quantised by its suffix carries the copy's id (see _by_repo_name)
        what = m.id if m.id != m.matched_by_name else f"{m.base_model} quantised with {m.quantization}"
        out.append(_f("info", "model-matched-by-name",
                      f"{m.matched_by_name} is not in the catalogue; its repository name matches {what}, whose "
                      "shape is used", "point --model at a local copy of its config.json, or use --online, "
                      "if it differs"))
        if _DYNAMIC_4BIT.search(m.matched_by_name):
            out.append(_f("warning", "dynamic-4bit-layers",
                          f"{m.matched_by_name} is an Unsloth dynamic 4-bit copy: it keeps some layers in 16 bits "
                          "(its config.json's llm_int8_skip_modules names them), which the weights here count in 4 "
                          "bits; copies like it loaded 8-50 % more (Qwen2.5-3B: 2.22-2.44 GiB against 1.92)",
                          "give --model a local copy (its safetensors give the size) or use --online, or keep that "
                          "headroom"))
    if m.multimodal_unmodelled:
        out.append(_f("warning", "modality-not-counted",
                      f"{m.id} has a {m.multimodal_unmodelled} tower that is neither counted in the weights nor "
                      "in the activation peak", "keep headroom for it"))
    if m.kv_layers and m.kv_layers < m.num_layers and m.mamba is None and m.linear_state is None:
        out.append(_f("warning", "linear-attention-state",
                      f"{m.id}: {m.num_layers - m.kv_layers} of {m.num_layers} layers use linear attention; "
                      "their per-sequence recurrent state is not counted", "keep headroom for it"))
    return out


def _plan_findings(server: ServerInput, gpus_on_node: int) -> list[Finding]:
    m, tp, out = server.model, server.tensor_parallel_size, []
    version = parse_vllm_version(server.vllm_version)
    for name, (first, gone) in _INT_FLAGS.items():
        read = first <= version and (gone is None or version < gone)
        if read and name in server.env and not _env_flag(server, name):
            out.append(_f("error", "env-flag-invalid",
                          f"{name}={str(server.env[name]).strip()!r}: vLLM reads it as an integer (int()) and stops "
                          "at start-up with a ValueError", f"set {name} to 0 or 1, or leave it out"))
    if m.num_attention_heads % tp:
        out.append(_f("error", "tp-not-divisible",
                      f"tensor_parallel_size {tp} does not divide {m.id}'s {m.num_attention_heads} attention heads",
                      f"use tensor_parallel_size {_divisors_hint(m, gpus_on_node)}"))
    elif not m.kv_latent_dim and m.num_kv_heads and m.num_kv_heads % tp and tp % m.num_kv_heads:
        out.append(_f("error", "tp-not-divisible",
                      f"tensor_parallel_size {tp} neither divides nor is a multiple of {m.id}'s "
                      f"{m.num_kv_heads} KV heads", f"use tensor_parallel_size {_divisors_hint(m, gpus_on_node)}"))
    if tp > gpus_on_node:
        out.append(_f("error", "tp-exceeds-node",
                      f"tensor_parallel_size {tp} needs {tp} GPUs on one node; the node has {gpus_on_node}",
                      f"raise gpus_per_node to {tp}, or lower tensor_parallel_size (biofleet does not split "
                      "a server across nodes)"))
    max_len = server.max_model_len
    if max_len and max_len > m.context_length:
        out.append(_f("error", "max-len-exceeds-model",
                      f"max_model_len {max_len} exceeds {m.id}'s context length {m.context_length}",
                      f"cut max_model_len to {m.context_length}"))
    return out


def _divisors_hint(m: ModelSpec, gpus_on_node: int) -> str:
    kv = m.num_kv_heads or m.num_attention_heads
    ok = [t for t in range(1, max(gpus_on_node, 1) + 1) if m.num_attention_heads % t == 0
          and (m.kv_latent_dim or kv % t == 0 or t % kv == 0)]
    ok = ok or [1]
    return " or ".join(str(t) for t in ok[-3:])


def _an(method: str) -> str:
    return "an" if method.lower().startswith(("a", "e", "i", "o", "u", "f")) else "a"


def _ceil2(x: float) -> float:
    return math.ceil(x * 100 - 1e-9) / 100


def _floor2(x: float) -> float:
    return math.floor(x * 100 + 1e-9) / 100


def _inputs(server: ServerInput, gpu: GpuSpec, res: Resolved, graphs: float, cold: float) -> dict[str, Any]:
    m, r = server.model, res.rules
    return {
        "vllm_version": r.label,
        "engine": r.engine + ("" if not r.v1_fallback else " (VLLM_USE_V1=0)" if _env_flag(server, "VLLM_USE_V1") == "0"
                              else " (V1 falls back to V0)"),
        "model_runner": ("V2" if r.model_runner_v2 else "V1") if r.engine == "V1" else None,
        "gpu": gpu.name, "gpu_visible_gib": _r2(gpu.visible_gib), "gpu_visible_source": gpu.note,
        "gpu_interconnect": {True: "NVLink", False: "PCIe only", None: "unknown (NVLink assumed)"}[gpu.nvlink],
        "compute_capability": gpu.cc_str, "gpu_memory_utilization": res.utilization,
        "dtype": res.dtype, "dtype_reason": res.dtype_reason,
        "quantization": _weight_method(server), "quant_bits": m.quant_bits,
        "weights_source": _weights_source(server), "tensor_parallel_size": server.tensor_parallel_size,
        "pipeline_parallel_size": server.pipeline_parallel_size,
        "max_model_len": res.max_model_len, "max_num_batched_tokens": res.batched_tokens,
        "max_num_seqs": res.max_num_seqs, "kv_cache_dtype": server.kv_cache_dtype,
        "enforce_eager": server.enforce_eager, "cuda_graphs": ("none (enforce_eager)" if server.enforce_eager else
                                                               "inside the budget" if r.graphs_in_budget else
                                                               f"outside the budget (~{graphs:.2f} GiB)"),
        "sampler_bytes_per_logit": r.sampler_bytes_per_logit,
        "sliding_window_kv": ("per-layer (hybrid KV manager)" if r.hybrid_kv else "full length in every layer")
        if m.sliding_window else None,
        "kv_layer_slots": sum(_kv_slots(server, r)) if not m.encoder_only else 0,
        "vision_encoder_items": _encoder_items(server, res) if m.vision else None,
        "vision_profile": _vision_inputs(server, res) if m.vision else None,
        "gpu_free_gib": server.gpu_free_gib,
        "cpu_offload_gb": server.cpu_offload_gb or None,
        "lora": {"max_loras": server.max_loras, "max_lora_rank": server.max_lora_rank,
                 "gib_per_gpu": round(lora_gib(server, res.dtype), 3)} if server.enable_lora else None,
        "mamba_state": _mamba_inputs(server, res) if m.mamba else None,
        # a first start's extra profiled peak while vLLM compiles into an empty cache (None: eager or before 0.17)
        "first_start_extra_gib": _r2(cold) if r.cold_compile_copy and not server.enforce_eager else None,
    }


def _mamba_inputs(server: ServerInput, res: Resolved) -> dict[str, Any]:
    state, ssm = mamba_state_gib(server, res.dtype)
    v0 = res.rules.engine == "V0"
    return {"mamba_layers": server.model.mamba.layers if server.model.mamba else 0, "ssm_dtype": ssm,
            "gib_per_sequence": round(state, 4),
            "allocated": (f"up front for {v0_mamba_batch(res.max_num_seqs, server.enforce_eager)} sequences "
                          "(V0 MambaCacheManager)") if v0 else "per request, in the KV-cache pool (V1)"}


def _pipeline_finding(server: ServerInput, gpu: GpuSpec) -> Finding:
    pp, tp, m = server.pipeline_parallel_size, server.tensor_parallel_size, server.model
    if pp > m.num_layers:
        return _f("error", "pipeline-stages-exceed-layers",
                  f"{server.name}: pipeline_parallel_size {pp} exceeds {m.id}'s {m.num_layers} layers",
                  f"use at most {m.num_layers} pipeline stages")
    v0 = _rules(server, gpu).engine == "V0"
    return _f("info", "pipeline-stage-checked",
              f"{server.name}: {pp} pipeline stages x {tp} GPU(s); the heaviest stage is checked: "
              f"{ceil_div(m.num_layers, pp)} of {m.num_layers} layers and the embeddings, on each of its GPUs"
              + (f"; V0 splits the KV cache over {pp} virtual engines: token and concurrency figures count one "
                 "engine's share" if v0 else ""),
              "start every stage on a node like this one (vLLM over Ray or --nnodes); biofleet's job "
              "scripts launch single-node servers")


def _fit_server(server: ServerInput, gpu: GpuSpec, node: str, gpus: tuple[int, ...], gpus_on_node: int,
                extra: Sequence[Finding] = ()) -> ServerFit:
    m = server.model
    res = resolve(server, gpu)
    max_len = res.max_model_len
    findings: list[Finding] = list(extra) + _plan_findings(server, gpus_on_node)
    if gpu.mig and server.tensor_parallel_size > 1:
        findings.append(_f("error", "mig-no-tensor-parallel",
                           f"{gpu.name} is a MIG instance: a process sees one instance and instances share no "
                           f"link, so tensor_parallel_size {server.tensor_parallel_size} cannot run on them",
                           "use tensor_parallel_size 1 on a larger instance (or the whole card)"))
    if gpu.name == "custom" and _big_gpu(gpu) and res.rules.engine == "V1" and \
            (server.max_num_seqs is None or server.max_num_batched_tokens is None):
        findings.append(_f("info", "scheduler-defaults-by-name",
                           f"vLLM picks its scheduler defaults by device name: a card of {gpu.visible_gib:g} GiB not "
                           "named A100 gets 1,024 sequences and 8,192 batched tokens (assumed here), an A100 256 and "
                           "2,048", "give the card's name with --gpu-name (or pick it with --gpu), or set "
                           "max_num_seqs and max_num_batched_tokens"))
    dtype = res.dtype
    method = _weight_method(server)
    if server.engine == "mock":
        return ServerFit(name=server.name, node=node, gpus=gpus, ok=not any(f.severity == "error" for f in findings),
                         model=m.id, engine="mock", dtype=dtype, quantization=method, weights_gib=0.0,
                         overhead_gib=0.0, activation_gib=0.0, non_torch_gib=0.0, cuda_graph_gib=0.0,
                         graphs_in_budget=True, budget_gib=0.0, utilization=0.0, kv_cache_gib=0.0,
                         kv_bytes_per_token=0, kv_cache_tokens=0, max_concurrency=None, max_model_len=max_len,
                         max_num_batched_tokens=0, findings=tuple(findings))
    findings += _capability(server, gpu, res)
    findings += _model_coverage(server, res)
    rope = rope_cache_gib(m, dtype)
    if rope >= ROPE_TABLE_NOTED_GIB:
        rows = m.max_position_embeddings if m.rope_cache_positions is None else m.rope_cache_positions
        findings.append(_f("info", "rope-table",
                           f"{rope:.2f} GiB of the weights are the RoPE cos/sin tables vLLM builds as {m.id} loads "
                           f"({rows:,} positions from max_position_embeddings and rope scaling in config.json), on "
                           "every GPU whatever the tensor parallelism; a max_position_embeddings beyond what the "
                           "model was trained for costs this memory for nothing"))
    if res.rules.v1_fallback:
        new_gpu = gpu.compute_capability >= (8, 0)
        if _env_flag(server, "VLLM_USE_V1") == "0":
            why = "because the server sets VLLM_USE_V1=0"
        elif m.mamba and new_gpu:
            why = f"for {m.id}'s Mamba layers (V1 took hybrid models from 0.10.2)"
        elif server.pipeline_parallel_size > 1 and new_gpu and res.rules.version < (0, 9, 0):
            why = "for pipeline parallelism (V1 took it in 0.9)"
        else:
            why = f"on compute capability {gpu.cc_str} (V1 needs >= 8.0 before 0.10.2)"
        findings.append(_f("info", "v1-falls-back-to-v0",
                           f"vLLM {res.rules.label} runs the V0 engine {why}: whole-sequence profiling, CUDA graphs "
                           "outside the budget"))
    budget = res.utilization * gpu.visible_gib
    loaded = _loaded_weights_gib(server, dtype, gpu)
    on_gpu, lora = _on_gpu(server, loaded), lora_gib(server, dtype)
    w = on_gpu + lora
    if server.enable_lora:
        findings.append(_f("info", "lora-buffers",
                           f"--enable-lora: {lora:.2f} GiB per GPU of LoRA buffers ({server.max_loras} adapter(s) of "
                           f"rank up to {server.max_lora_rank} on every linear layer), counted with the weights",
                           "lower --max-loras or --max-lora-rank to the adapters you serve"))
        if server.model.num_experts:
            findings.append(_f("warning", "lora-experts-not-counted",
                               f"{server.model.id} is a mixture of experts: the LoRA buffers of its experts (vLLM "
                               "versions that apply LoRA to them) are not counted, only the attention layers'"))
    if server.cpu_offload_gb:
        findings.append(_f("info", "cpu-offload",
                           f"--cpu-offload-gb {server.cpu_offload_gb:g}: {loaded - on_gpu:.2f} of {loaded:.2f} GiB "
                           f"of weights per GPU stay in CPU memory ({on_gpu:.2f} on the GPU); every forward pass "
                           "reads them over PCIe",
                           "" if loaded - on_gpu >= server.cpu_offload_gb - 0.01 else
                           "the embeddings, lm_head and any vision tower stay on the GPU: that is all it can offload"))
    act = _activation(server, res)
    nt = non_torch_gib(server, res.rules, gpu)
    held = held_by_others_gib(server, gpu)
    if held and res.rules.others_count_as_own:
        nt += held
        findings.append(_f("warning", "others-memory-counted",
                           f"vLLM {res.rules.label} reads the {held:.2f} GiB other processes hold on the GPU as its "
                           f"own non-torch memory: the KV cache gets that much less of the {res.utilization:.2f} "
                           "budget", "free the GPU, raise gpu_memory_utilization by that share, or run vLLM "
                           ">= 0.9.1, which measures from the memory in use at start-up"))
    graphs = cuda_graph_gib(server, res.max_num_seqs)
    overhead = act + nt + (graphs if res.rules.graphs_in_budget else 0.0)
    state, _ = mamba_state_gib(server, dtype)
    if state and res.rules.engine == "V0":  # MambaCacheManager: allocated in the profiling pass, for the padded batch
        overhead += state * v0_mamba_batch(res.max_num_seqs, server.enforce_eager)
    kv = budget - w - overhead
    per_tok = kv_bytes_per_token(server, dtype)
    # V0's scheduler splits the blocks over pipeline_parallel_size virtual engines (num_gpu_blocks //= pp):
    # one request sees a 1/pp share of the KV cache
    engines = server.pipeline_parallel_size if res.rules.engine == "V0" else 1
    if per_tok:
        # vLLM prints KV / (bytes per token over every layer slot, padding slots included)
        full_b, slide_b = _slot_bytes(server, dtype, res.rules)
        full_slots, slide_slots = _kv_slots(server, res.rules)
        slot_tok = full_slots * full_b + slide_slots * slide_b
        tokens = max(0, int(kv / engines * GiB // slot_tok) // BLOCK_SIZE * BLOCK_SIZE)
        # V1 keeps each request's Mamba state in the KV-cache pool beside its attention blocks
        held = state if res.rules.engine == "V1" else 0.0
        one_seq = _request_kv_bytes(server, res) / GiB + held
        alloc_seq = _request_kv_bytes(server, res, check=False) / GiB + held
        conc: float | None = max(kv / engines, 0.0) / alloc_seq if alloc_seq else None
        if res.rules.kv_tokens_from_concurrency and alloc_seq > 0:
            # what 0.20.1+ prints: (blocks / blocks one request needs) x max_model_len, sliding layers capped by
            # their window; the same figure as before for models without sliding layers
            tokens = int(tokens * slot_tok / (alloc_seq * GiB) * res.max_model_len)
    else:
        tokens, conc, one_seq = 0, None, 0.0
    findings += _memory_findings(server, gpu, res, w, overhead, kv / engines, one_seq, tokens, per_tok, budget)
    cold = first_start_extra_gib(server, res, act)
    cold_kv = kv / engines - cold  # what a first start leaves for the KV cache
    if per_tok and cold and kv / engines >= one_seq > 0 and cold_kv < one_seq:
        short = one_seq - cold_kv
        findings.append(_f(
            "warning", "first-start-kv-short",
            f"the first start with an empty compile cache profiles {cold:.2f} GiB more while vLLM {res.rules.label} "
            f"compiles the model, which leaves {max(cold_kv, 0.0):.2f} GiB of KV cache, less than one "
            f"{max_len}-token request needs ({one_seq:.2f} GiB): that start fails, after saving the compiled model "
            "to ~/.cache/vllm, and the next one fits",
            "start it once beforehand on the same cache directory, lower max_model_len, or raise "
            f"gpu_memory_utilization by {math.ceil(short / gpu.visible_gib * 100) / 100:.2f}"))
    blocks = state_blocks(server, res, kv)
    if blocks is not None and 0 < blocks < res.max_num_seqs and not server.enforce_eager and kv > one_seq > 0:
        findings.append(_f(
            "error", "state-blocks-below-max-num-seqs",
            f"{m.id} keeps a recurrent state per decode sequence in each of its Mamba / linear-attention layers: "
            f"the {kv:.2f} GiB KV cache holds ~{blocks} state blocks, fewer than max_num_seqs {res.max_num_seqs}; "
            f"vLLM {res.rules.label} stops before CUDA-graph capture (\"max_num_seqs ({res.max_num_seqs}) exceeds "
            "available Mamba cache blocks\")",
            f"set max_num_seqs to at most {max(1, blocks - blocks // 20)} (a margin of 5 %), or raise "
            "gpu_memory_utilization"))
    return ServerFit(
        name=server.name, node=node, gpus=gpus, ok=not any(f.severity == "error" for f in findings), model=m.id,
        engine=server.engine, dtype=dtype, quantization=method, weights_gib=w, overhead_gib=overhead,
        activation_gib=act, non_torch_gib=nt, cuda_graph_gib=graphs, graphs_in_budget=res.rules.graphs_in_budget,
        sampler_warmup_gib=sampler_warmup_gib(server, res),
        budget_gib=budget, utilization=res.utilization,
        kv_cache_gib=kv if per_tok else min(kv, 0.0),  # encoder-only: no KV cache, only a possible deficit
        kv_bytes_per_token=per_tok, kv_cache_tokens=tokens, max_concurrency=conc, max_model_len=max_len,
        max_num_batched_tokens=res.batched_tokens, inputs=_inputs(server, gpu, res, graphs, cold),
        findings=tuple(findings),
    )


def _memory_findings(server: ServerInput, gpu: GpuSpec, res: Resolved, w: float, overhead: float, kv: float,
                     one_seq: float, tokens: int, per_tok: int, budget: float) -> list[Finding]:
    m, util, out = server.model, res.utilization, []
    max_len = res.max_model_len
    where = f"{util:.2f} x {gpu.visible_gib:.2f} GiB = {budget:.2f} GiB"
    max_util = (gpu.visible_gib - gpu.cuda_context_gib) / gpu.visible_gib
    images = _encoder_items(server, res)
    encoder = _encoder_bytes(server, res) / GiB

    def fixes(allow_len_cut: bool, requests: float = 1.0) -> str:
        """What makes ``requests`` full-length requests fit (one for the errors, LOW_CONCURRENCY for the warning)."""
        opts = []
        need_util = _ceil2((w + overhead + requests * one_seq) / gpu.visible_gib)
        if m.vision is not None and m.vision.family == "mllama" and images > 1 and encoder >= overhead / 2:
            # V0 profiles one image per dummy sequence: fewer sequences, fewer images in the peak
            spare = budget - w - max(overhead - encoder, 0.0) - one_seq
            n = min(images - 1, int(spare / (encoder / images)))
            if n >= 1:
                n = 1 << (n.bit_length() - 1)  # a power of two below the edge: the estimate is not exact
                opts.append(f"lower max_num_seqs to {n} (profiling runs the vision encoder on one image per "
                            f"sequence: {encoder:.1f} GiB for {images})")
        if need_util <= max_util:
            opts.append(f"raise gpu_memory_utilization to {need_util:.2f}")
        fit_len = 0
        if per_tok and kv > 0 and one_seq > 0:
            fit_len = int(max_len * kv / (requests * one_seq)) // BLOCK_SIZE * BLOCK_SIZE
        if allow_len_cut and fit_len >= 256:
            opts.append(f"cut max_model_len to {min(fit_len, max_len)}")
        if not m.quantization and _weight_method(server) is None:
            for method in ("awq", "gptq"):
                v = quantized_variant(m, method)
                if v is not None and (method != "awq" or gpu.compute_capability >= (7, 5)):
                    opts.append(f"use {v.id} with quantization {method}")
                    break
            else:
                if need_util > max_util:
                    opts.append(f"a 4-bit AWQ/GPTQ checkpoint of {m.id} (describe it under models:)")
        if per_tok and server.kv_cache_dtype == "auto" and allow_len_cut and gpu.supports_fp8:
            opts.append("use kv_cache_dtype fp8 (halves the KV cache)")
        if not opts or need_util > max_util:
            opts.append("a GPU with more memory or tensor_parallel_size > 1")
        return " or ".join(opts)

    if m.encoder_only:
        if kv < 0:
            out.append(_f("error", "weights-exceed-budget",
                          f"weights {w:.2f} GiB + overhead {overhead:.2f} GiB exceed the budget {where}",
                          fixes(False)))
        return out
    if w >= budget:
        out.append(_f("error", "no-kv-memory",
                      f"weights alone ({w:.2f} GiB) exceed the budget {where}; nothing is left for the KV cache",
                      fixes(False)))
    elif kv <= 0:
        out.append(_f("error", "no-kv-memory",
                      f"weights {w:.2f} GiB + activations/graphs/context {overhead:.2f} GiB leave {kv:.2f} GiB of "
                      f"the budget {where} for the KV cache", fixes(False)))
    elif kv < one_seq:
        out.append(_f("error", "kv-cache-too-small",
                      f"KV cache of {kv:.2f} GiB holds {tokens} tokens; one max_model_len {max_len} request needs "
                      f"{one_seq:.2f} GiB", fixes(True)))
    elif kv / one_seq < LOW_CONCURRENCY and not server.max_model_len_auto:  # auto: max-model-len-auto says it
        out.append(_f("warning", "low-concurrency",
                      f"KV cache of {kv:.2f} GiB holds {tokens} tokens: only {kv / one_seq:.2f} requests of "
                      f"{max_len} tokens at once", fixes(True, LOW_CONCURRENCY)))
    return out


def check_server_on_gpu(server: ServerInput, gpu: GpuSpec, gpus_on_node: int | None = None) -> FitReport:
    """One server on ``tensor_parallel_size`` GPUs of a node of ``gpus_on_node`` identical GPUs
    (default: as many as the server's tensor parallelism needs)."""
    count = max(gpus_on_node if gpus_on_node is not None else server.tensor_parallel_size, 1)
    idx = tuple(range(min(server.tensor_parallel_size, count)))
    node = NodeInput(label=f"{gpu.name}-node", gpu=gpu, gpu_count=count, servers=((server, idx),))
    return check([node])


def _gpu_findings(label: str, index: int, gpu: GpuSpec, fits: Sequence[tuple[ServerInput, ServerFit]]
                  ) -> tuple[float, list[Finding]]:
    """Everything on one GPU must fit in its visible memory: each vLLM server's budget, one CUDA
    context per process, the CUDA graphs captured outside the budget (before 0.20), and what
    other processes already hold. V1 (>= 0.9.1) checks free >= budget at start-up and refuses."""
    real = [(s, f) for s, f in fits if s.engine == "vllm"]
    if not real:
        return 0.0, []
    visible = gpu.visible_gib
    outside = sum(f.cuda_graph_gib for _, f in real if not f.graphs_in_budget)
    ctx = gpu.cuda_context_gib
    used = sum(f.budget_gib for _, f in real) + ctx * len(real) + outside
    free = min((s.gpu_free_gib for s, _ in real if s.gpu_free_gib is not None), default=None)
    held = max(held_by_others_gib(s, gpu) for s, _ in real)
    if all(_rules(s, gpu).others_count_as_own for s, _ in real):
        held = 0.0  # already inside each server's budget (read as its non-torch memory)
    names = " + ".join(f"{s.name} {f.utilization:.2f}" for s, f in real)
    out: list[Finding] = []
    if free is not None and free > visible + 0.01:
        out.append(_f("error", "gpu-free-above-visible",
                      f"{label} GPU {index}: gpu_free_gib {free:.2f} is more than the {visible:.2f} GiB CUDA reports "
                      "for the card", "give the free memory nvidia-smi or torch.cuda.mem_get_info() shows, or the "
                      "card's visible size with --gpu-visible-gib"))
    for s, f in real if len(real) > 1 else ():
        if not _rules(s, gpu).others_count_as_own or f.kv_cache_gib <= 0:
            continue
        # this server, started after the others, reads their memory (budget and context each) as its own
        others = sum(g.budget_gib + ctx for t, g in real if t is not s)
        if f.kv_cache_gib - others <= 0:
            out.append(_f("error", "colocated-memory-counted",
                          f"{label} GPU {index}: vLLM {_rules(s, gpu).label} reads the {others:.2f} GiB the other "
                          f"servers on this GPU hold as {s.name}'s own memory; started after them it has "
                          f"{f.kv_cache_gib - others:.2f} GiB for its KV cache",
                          "run vLLM >= 0.9.1 (it measures from the memory in use at start-up), or one server "
                          "per GPU"))
    refuses = all(_rules(s, gpu).free_memory_check for s, _ in real)
    parts = f"budgets {sum(f.budget_gib for _, f in real):.2f} GiB + {len(real)} CUDA context(s) " \
            f"{ctx * len(real):.2f} GiB" + (f" + CUDA graphs outside the budgets {outside:.2f} GiB"
                                                          if outside else "")
    if free is not None and held > 0:
        parts += f" + {held:.2f} GiB held by other processes (free {free:.2f} GiB)"
    total = used + held
    # V1 >= 0.9.1 compares the free memory at start-up (after its context) with the budget
    refused = refuses and total - outside > visible
    how = "vLLM refuses to start when the free memory is below its budget" if refused else \
        "the last server runs out of memory while it allocates its KV cache or captures CUDA graphs"
    # one server: the activations its profile measured are free again when the KV cache (sized without them) is
    # allocated and the graphs are captured, so it starts as long as the rest fits; they come back with a batch
    # as large as the profiling one (case 12000: 0.99 of an L4 started; 2006: 1.0 started, then ran out of memory
    # in its first generate()). Co-located servers are held to their whole budgets: each serves beside the others
    back = real[0][1].activation_gib if len(real) == 1 and not refused else 0.0
    # after the graphs, V1 warms the sampler up with the profile's rows again: it needs that memory back
    warm = real[0][1].sampler_warmup_gib if back else 0.0
    over = total - visible
    lower = max(0.0, min(f.utilization for _, f in real) - over / visible)
    if total - back > visible:
        if len(real) > 1:
            out.append(_f("error", "util-sum-too-high",
                          f"{label} GPU {index}: utilisations {names} need {parts} = {total:.2f} GiB of "
                          f"{visible:.2f} GiB; {how}",
                          f"lower the utilisations by {math.ceil(over / visible * 100) / 100:.2f} in total, or "
                          "move a server to another GPU"))
        elif free is not None and held > 0:
            out.append(_f("error", "gpu-free-memory-too-low",
                          f"{label} GPU {index}: {names} needs {parts} = {total:.2f} GiB of {visible:.2f} GiB; {how}",
                          f"lower gpu_memory_utilization to {lower:.2f} or free the GPU"))
        else:
            out.append(_f("error", "util-too-high",
                          f"{label} GPU {index}: utilisation {names} needs {parts} = {total:.2f} GiB of "
                          f"{visible:.2f} GiB; {how}", f"lower gpu_memory_utilization to {lower:.2f}"))
    elif total - back + warm > visible:
        fix_util = _floor2(max(0.0, real[0][1].utilization - (total - back + warm - visible) / visible))
        out.append(_f("error", "sampler-warmup-oom",
                      f"{label} GPU {index}: utilisation {names} leaves {visible - (total - back):.2f} GiB once the "
                      f"KV cache is allocated and the CUDA graphs captured ({parts}, less the {back:.2f} GiB of "
                      f"profiling activations); vLLM then warms the sampler up with the profile's requests again "
                      f"({warm:.2f} GiB) and runs out of memory (\"CUDA out of memory occurred when warming up "
                      f"sampler\")",
                      f"lower gpu_memory_utilization to {fix_util:.2f} "
                      "or max_num_seqs"))
    elif total > visible:
        out.append(_f("warning", "util-too-high-for-peak",
                      f"{label} GPU {index}: utilisation {names} needs {parts} = {total:.2f} GiB of "
                      f"{visible:.2f} GiB at its profiled peak; it starts (the {back:.2f} GiB of activations its "
                      "profile measured are free again while the KV cache is allocated), but a batch as large as "
                      "the profiling one can run out of memory", f"lower gpu_memory_utilization to {lower:.2f}"))
    elif visible - total < OVERCOMMIT_WARN_GIB:
        out.append(_f("warning", "util-sum-high",
                      f"{label} GPU {index}: {names} leave {visible - total:.2f} GiB of {visible:.2f} GiB "
                      f"({parts})", "keep a few hundred MiB free for the driver and allocator"))
    return total, out


def pipeline_stage(server: ServerInput) -> ServerInput:
    """The heaviest pipeline stage of a ``pipeline_parallel_size`` > 1 server, as a server of its own.

    vLLM splits the decoder layers evenly over the stages (the first ``L mod PP`` stages take one more);
    the first stage also holds the token embeddings (and a vision tower), the last the lm_head. The
    heaviest stage is ``ceil(L / PP)`` layers plus one vocab x hidden matrix (and the tower): its layers'
    share of the weights, KV-cache layers, Mamba state and CUDA graphs. Every stage runs the whole
    profiling batch, so activations are not divided; the sampler's warm-up is counted too."""
    pp = server.pipeline_parallel_size
    m = server.model
    if pp <= 1:
        return server
    layers = ceil_div(m.num_layers, pp)
    share = layers / m.num_layers
    tower = m.vision.params_b if m.vision else 0.0
    one_matrix = m.vocab_size * m.hidden_size / 1e9
    body = max(m.params_b - m.embedding_params_b - tower, 0.0)
    params = body * share + one_matrix + tower
    update: dict[str, Any] = {"num_layers": layers, "params_b": params, "tie_word_embeddings": True}
    if m.kv_layers:
        update["kv_layers"] = ceil_div(m.kv_layers, pp)
    if m.sliding_layers:
        update["sliding_layers"] = min(layers, ceil_div(m.sliding_layers, pp))
    if m.quantized_params_b:
        update["quantized_params_b"] = m.quantized_params_b * share
    if m.mamba:
        update["mamba"] = m.mamba.model_copy(update={"layers": ceil_div(m.mamba.layers, pp)})
    if m.checkpoint:
        f = params / m.params_b
        ck = m.checkpoint
        update["checkpoint"] = ck.model_copy(update={
            "total_bytes": max(1, int(ck.total_bytes * f)),
            "float_bytes": None if ck.float_bytes is None else int(ck.float_bytes * f)})
    return server.model_copy(update={"model": m.model_copy(update=update)})


AUTO_LENGTH_FROM = (0, 14, 0)  # PR #29431 (merged 2025-11): --max-model-len auto / -1


def _auto_length(server: ServerInput, node: NodeInput, idx: tuple[int, ...], extra: list[Finding]) -> ServerInput:
    """``server`` with the max_model_len vLLM's ``--max-model-len auto`` picks: the model's context when one request
    of it fits the KV cache the profile leaves, else the longest length that does (vLLM's binary search over
    ``estimate_max_model_len``; the profile itself does not depend on the length in V1). Says what it picked."""
    rules = _rules(server, node.gpu)
    if rules.version < AUTO_LENGTH_FROM:
        extra.append(_f("error", "max-model-len-auto-unsupported",
                        f"vLLM {rules.label} has no --max-model-len auto (from 0.14)",
                        "give max_model_len a number, or use vLLM >= 0.14"))
        return server.model_copy(update={"max_model_len_auto": False})
    full = server.model_copy(update={"max_model_len": None, "max_model_len_auto": False})
    probe = _fit_server(pipeline_stage(full), node.gpu, node.label, idx, node.gpu_count)
    res = resolve(full, node.gpu)
    context = res.max_model_len
    state, _ = mamba_state_gib(full, res.dtype)  # V1 keeps a request's Mamba state beside its blocks
    room = (probe.kv_cache_gib - state) * GiB

    def fits(length: int) -> bool:
        s = full.model_copy(update={"max_model_len": length})
        return _request_kv_bytes(s, resolve(s, node.gpu)) <= room

    if room <= 0 or fits(context):
        length = context
    else:  # the most whole blocks one request may take
        lo, hi = 0, context // BLOCK_SIZE
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(mid * BLOCK_SIZE) else (lo, mid - 1)
        length = lo * BLOCK_SIZE
    if room <= 0 or length <= 0:
        return full  # no room for one block: the check says so with the model's context
    whole = " (the model's full context)" if length == context else f" (the model's context is {context:,})"
    extra.append(_f("info", "max-model-len-auto",
                    f"--max-model-len auto: vLLM {rules.label} fits the context to {length:,} tokens{whole}",
                    "" if length == context else "set max_model_len explicitly to plan for a longer context"))
    return full.model_copy(update={"max_model_len": length, "max_model_len_auto": length < context})


def check(nodes: Sequence[NodeInput]) -> FitReport:
    """Fit-check every server on every node, then every GPU's combined memory."""
    servers: list[ServerFit] = []
    gpus: list[GpuFit] = []
    top: list[Finding] = []
    for node in nodes:
        per_gpu: dict[int, list[tuple[ServerInput, ServerFit]]] = {i: [] for i in range(node.gpu_count)}
        for server, idx in node.servers:
            extra: list[Finding] = []
            tp = server.tensor_parallel_size
            bad = [i for i in idx if i < 0 or i >= node.gpu_count]
            if bad:
                extra.append(_f("error", "gpu-index-out-of-range",
                                f"GPU index {', '.join(map(str, bad))} does not exist on {node.label} "
                                f"({node.gpu_count} GPU(s): 0-{node.gpu_count - 1})",
                                "place the server on an existing GPU or raise gpus_per_node"))
            if len(set(idx)) != len(idx):
                extra.append(_f("error", "gpu-index-duplicate", f"GPU indices {list(idx)} repeat a GPU",
                                "give each tensor-parallel rank its own GPU"))
            if server.engine == "vllm" and not idx:
                extra.append(_f("error", "no-gpu-assigned", f"{server.name} runs vLLM but has no GPU on {node.label}",
                                "place it on a GPU, or use engine: mock for a dry run"))
            elif idx and len(idx) != tp and tp <= node.gpu_count:
                extra.append(_f("error", "tp-gpu-count-mismatch",
                                f"tensor_parallel_size {tp} but the server is placed on {len(idx)} GPU(s) {list(idx)}",
                                f"place it on {tp} GPUs or set tensor_parallel_size {len(idx)}"))
            if server.pipeline_parallel_size > 1:
                extra.append(_pipeline_finding(server, node.gpu))
            if server.max_model_len_auto:
                server = _auto_length(server, node, tuple(idx), extra)
            fit = _fit_server(pipeline_stage(server), node.gpu, node.label, tuple(idx), node.gpu_count, extra)
            servers.append(fit)
            for i in idx:
                if i in per_gpu:
                    per_gpu[i].append((server, fit))
        for i, on in per_gpu.items():
            used, found = _gpu_findings(node.label, i, node.gpu, on)
            util = sum(f.utilization for s, f in on if s.engine == "vllm")
            gpus.append(GpuFit(node=node.label, index=i, gpu=node.gpu.name, visible_gib=node.gpu.visible_gib,
                               util_sum=util, servers=tuple(s.name for s, _ in on), used_gib=used,
                               findings=tuple(found)))
    if not nodes:
        top.append(_f("info", "nothing-to-check", "no GPU node in the plan"))
    ok = not any(f.severity == "error" for f in top) and all(s.ok for s in servers) and \
        not any(f.severity == "error" for g in gpus for f in g.findings)
    return FitReport(ok=ok, servers=tuple(servers), gpus=tuple(gpus), findings=tuple(top))
