"""Fit-check: will each vLLM server start on its GPU(s), and with how much KV cache?

Pure functions over the catalogues; no I/O. The memory model follows vLLM's own accounting
(see docs/fit-check.md and shared/calibration/vllm_memory_rules.md):

    budget  = gpu_memory_utilization x visible GiB                      (per GPU / TP rank)
    weights = parameters x bytes per parameter (quantised layers at their bits plus
              group scales/zeros; embeddings and lm_head stay 16-bit)   / TP
    overhead = activation peak (profiling pass over max_num_batched_tokens)
             + non-torch memory (CUDA context, cuBLAS; NCCL buffers when TP > 1)
             + CUDA graphs (unless enforce_eager)
    KV      = budget - weights - overhead  ->  tokens = KV / (2 x layers x kv_heads/TP x
              head_dim x bytes), rounded down to whole 16-token blocks

CUDA graphs are counted inside the budget (recent vLLM subtracts an estimate; older builds
put them on top of it, which co-located instances feel just the same). Sliding-window
layers are treated as full attention, so KV needs are never under-estimated.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator

from biofleet.catalog.gpus import GpuSpec
from biofleet.catalog.models import ModelSpec, quantized_variant

__all__ = [
    "ServerInput", "NodeInput", "Finding", "ServerFit", "GpuFit", "FitReport",
    "check", "check_server_on_gpu", "effective_dtype", "weights_gib", "kv_bytes_per_token",
    "activation_gib", "cuda_graph_gib", "non_torch_gib", "default_max_num_batched_tokens",
    "BLOCK_SIZE", "UTIL_SUM_WARN",
]

GiB = 1024 ** 3
BLOCK_SIZE = 16  # vLLM's default KV block size (tokens)
UTIL_SUM_WARN = 0.95  # co-located utilisations above this leave no room for CUDA contexts
LOW_CONCURRENCY = 2.0  # fewer full-length sequences than this: warn

# Calibrated against shared/calibration/vllm_memory_cases.jsonl (see docs/fit-check.md).
NON_TORCH_GIB = 0.10  # V0 logs print 0.01-0.10 GiB of non-torch memory on one GPU (#3, #15)
NCCL_GIB = 0.40  # extra per rank when TP > 1 (NCCL + custom all-reduce buffers; estimate)
GRAPH_BASE_GIB, GRAPH_PER_LAYER_GIB = 0.15, 0.012  # logs: 0.46-0.50 GiB for 28-layer 7B (#27, #33)
ACT_BYTES_PER_INTER = 6  # gate+up output (2 x I x 2 B) and the activated copy (I x 2 B) per token
ACT_BYTES_PER_HIDDEN = 6  # residual, norm output and attention output per token (2 B each)
LOGIT_BYTES = 4  # sampler profiling materialises fp32 logits for max_num_seqs rows

Severity = Literal["error", "warning", "info"]

_DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}
_DTYPE_ALIASES = {"half": "float16", "fp16": "float16", "float16": "float16", "bf16": "bfloat16",
                  "bfloat16": "bfloat16", "float": "float32", "float32": "float32", "fp32": "float32"}
# Which --quantization values a checkpoint quantised one way accepts.
_COMPATIBLE = {
    "awq": {"awq", "awq_marlin"},
    "gptq": {"gptq", "gptq_marlin", "marlin", "gptq_marlin_24"},
    "fp8": {"fp8"},
    "compressed-tensors": {"compressed-tensors"},
    "bitsandbytes": {"bitsandbytes"},
    "mxfp4": {"mxfp4"},
    "gguf": {"gguf"},
}
_WEIGHT_QUANT_GROUPED = {"awq", "gptq"}  # fp16 scale + packed zero per group of 128
_ONLINE_QUANT_BITS = {"fp8": 8.0, "bitsandbytes": 4.13}  # quantised at load time from 16-bit weights
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
    dtype: str = "auto"  # auto | float16 | half | bfloat16 | float32
    quantization: str | None = None  # the --quantization flag requested
    max_model_len: int | None = Field(None, gt=0)  # None: the model's context length
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    tensor_parallel_size: int = Field(1, ge=1)
    kv_cache_dtype: str = "auto"  # auto | fp8 | fp8_e4m3 | fp8_e5m2
    enforce_eager: bool = False
    max_num_seqs: int | None = Field(None, gt=0)
    max_num_batched_tokens: int | None = Field(None, gt=0)
    env: Mapping[str, str] = Field(default_factory=dict)

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
        return v.strip().lower().replace("-", "_") if v.strip().lower() != "compressed-tensors" else "compressed-tensors"

    @field_validator("kv_cache_dtype")
    @classmethod
    def _kv(cls, v: str) -> str:
        v = v.strip().lower()
        if v not in ("auto", "fp8", "fp8_e4m3", "fp8_e5m2", "float16", "bfloat16", "half"):
            raise ValueError(f"kv_cache_dtype must be auto, fp8, fp8_e4m3 or fp8_e5m2 (got {v!r})")
        return v


class NodeInput(_Frozen):
    """One node: its GPU type and count, and each server with the GPU indices it uses."""

    label: str
    gpu: GpuSpec
    gpu_count: int = Field(1, ge=1)
    servers: tuple[tuple[ServerInput, tuple[int, ...]], ...] = ()


# --------------------------------------------------------------------------- outputs

class Finding(_Frozen):
    severity: Severity
    code: str  # stable kebab-case identifier
    message: str
    fix: str = ""

    def to_json_dict(self) -> dict[str, Any]:
        return {"severity": self.severity, "code": self.code, "message": self.message, "fix": self.fix}


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
    overhead_gib: float  # activation + non-torch + CUDA graphs
    activation_gib: float
    non_torch_gib: float
    cuda_graph_gib: float
    budget_gib: float
    kv_cache_gib: float  # may be negative: the deficit
    kv_bytes_per_token: int
    kv_cache_tokens: int
    max_concurrency: float | None  # tokens / max_model_len; None without a KV cache
    max_model_len: int
    max_num_batched_tokens: int
    findings: tuple[Finding, ...] = ()

    def to_json_dict(self) -> dict[str, Any]:
        r2 = lambda x: round(x, 2)  # noqa: E731
        return {
            "name": self.name, "node": self.node, "gpus": list(self.gpus), "ok": self.ok, "model": self.model,
            "engine": self.engine, "dtype": self.dtype, "quantization": self.quantization,
            "budget_gib": r2(self.budget_gib), "weights_gib": r2(self.weights_gib),
            "overhead_gib": r2(self.overhead_gib), "activation_gib": r2(self.activation_gib),
            "non_torch_gib": r2(self.non_torch_gib), "cuda_graph_gib": r2(self.cuda_graph_gib),
            "kv_cache_gib": r2(self.kv_cache_gib), "kv_bytes_per_token": self.kv_bytes_per_token,
            "kv_cache_tokens": self.kv_cache_tokens,
            "max_concurrency": None if self.max_concurrency is None else r2(self.max_concurrency),
            "max_model_len": self.max_model_len, "max_num_batched_tokens": self.max_num_batched_tokens,
            "findings": [f.to_json_dict() for f in self.findings],
        }


class GpuFit(_Frozen):
    node: str
    index: int
    gpu: str
    visible_gib: float
    util_sum: float
    servers: tuple[str, ...]
    used_gib: float  # sum of the budgets of the vLLM servers on it
    findings: tuple[Finding, ...] = ()

    def to_json_dict(self) -> dict[str, Any]:
        return {"node": self.node, "index": self.index, "gpu": self.gpu, "visible_gib": round(self.visible_gib, 2),
                "util_sum": round(self.util_sum, 3), "servers": list(self.servers),
                "used_gib": round(self.used_gib, 2), "findings": [f.to_json_dict() for f in self.findings]}


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


# --------------------------------------------------------------------------- physics

def effective_dtype(server: ServerInput) -> str:
    """The dtype vLLM runs with: ``auto`` takes config.json's torch_dtype, except that float32
    checkpoints are cast down (to bfloat16 for Gemma-2/3, which vLLM keeps out of float16,
    otherwise to float16)."""
    if server.dtype != "auto":
        return _DTYPE_ALIASES[server.dtype]
    native = _DTYPE_ALIASES.get(server.model.native_dtype, "bfloat16")
    if native == "float32":
        return "bfloat16" if server.model.model_type in ("gemma2", "gemma3") else "float16"
    return native


def _weight_method(server: ServerInput) -> str | None:
    """How the weights are stored in memory: the checkpoint's quantisation, else an online one."""
    if server.model.quantization:
        return server.model.quantization
    if server.quantization in _ONLINE_QUANT_BITS:
        return server.quantization
    return None


def weights_gib(server: ServerInput) -> float:
    """Weights per GPU (GiB) for the server's dtype / quantisation and tensor parallel size."""
    m = server.model
    dbytes = _DTYPE_BYTES[effective_dtype(server)]
    method = _weight_method(server)
    params = m.params_b * 1e9
    if method is None or m.encoder_only:
        total = params * dbytes
    else:
        if m.quantization:  # checkpoint stores the quantised layers
            bits = float(m.quant_bits or 4)
            if m.quantization in _WEIGHT_QUANT_GROUPED and m.quant_group_size:
                bits += (16 + bits) / m.quant_group_size  # fp16 scale + packed zero per group
        else:
            bits = _ONLINE_QUANT_BITS[method]
        if m.quantized_params_b:  # e.g. gpt-oss: only the experts are quantised
            rest = max(params - m.quantized_params_b * 1e9, 0.0)
            quantized = m.quantized_params_b * 1e9 * m.quant_storage_factor
        else:  # embeddings and lm_head stay 16-bit
            rest = min(m.embedding_params_b * 1e9, params)
            quantized = params - rest
        total = quantized * bits / 8 + rest * 2  # the unquantised rest stays 16-bit
    return total / server.tensor_parallel_size / GiB


def kv_bytes_per_token(server: ServerInput) -> int:
    """KV-cache bytes per token on one TP rank (0 for encoder-only models)."""
    m = server.model
    if m.encoder_only:
        return 0
    el = 1 if server.kv_cache_dtype.startswith("fp8") else _DTYPE_BYTES[effective_dtype(server)]
    if m.kv_latent_dim:  # MLA: one latent vector per layer, replicated on every rank
        return m.num_layers * m.kv_latent_dim * el
    kv_rank = max(1, m.num_kv_heads // server.tensor_parallel_size)
    return 2 * m.num_layers * kv_rank * m.head_dim * el


def _big_gpu(gpu: GpuSpec) -> bool:
    # vLLM raises its scheduler defaults on >= 70 GiB cards other than A100 (EngineArgs defaults).
    return gpu.visible_gib >= 70 and not gpu.name.upper().startswith("A100")


def default_max_num_batched_tokens(gpu: GpuSpec) -> int:
    """V1 (chunked prefill) default for the OpenAI server: 8192 on H100-class, else 2048."""
    return 8192 if _big_gpu(gpu) else 2048


def _default_max_num_seqs(gpu: GpuSpec) -> int:
    return 1024 if _big_gpu(gpu) else 256


def activation_gib(server: ServerInput, gpu: GpuSpec, max_model_len: int | None = None) -> float:
    """Peak activation memory of vLLM's profiling pass, per rank (GiB).

    tokens x (6 B x MLP width / TP + 6 B x hidden) for 16-bit models, plus fp32 logits for
    max_num_seqs rows (the sampler warm-up). Calibrated on cases #15 and #27."""
    m = server.model
    tp = server.tensor_parallel_size
    tokens = _batched_tokens(server, gpu, max_model_len)
    scale = _DTYPE_BYTES[effective_dtype(server)] / 2
    per_token = ACT_BYTES_PER_INTER * (m.intermediate_size or 4 * m.hidden_size) / tp \
        + ACT_BYTES_PER_HIDDEN * m.hidden_size
    act = tokens * per_token * scale
    if not m.encoder_only and server.kind == "generate":
        seqs = min(server.max_num_seqs or _default_max_num_seqs(gpu), tokens)
        act += seqs * m.vocab_size * LOGIT_BYTES
    return act / GiB


def _batched_tokens(server: ServerInput, gpu: GpuSpec, max_model_len: int | None = None) -> int:
    if server.max_num_batched_tokens:
        return server.max_num_batched_tokens
    t = default_max_num_batched_tokens(gpu)
    if server.model.encoder_only or server.kind == "embed":
        # pooling models run without chunked prefill: a whole sequence per step
        t = max(t, max_model_len or server.model.context_length)
    return t


def non_torch_gib(server: ServerInput) -> float:
    return NON_TORCH_GIB + (NCCL_GIB if server.tensor_parallel_size > 1 else 0.0)


def cuda_graph_gib(server: ServerInput) -> float:
    if server.enforce_eager:
        return 0.0
    return GRAPH_BASE_GIB + GRAPH_PER_LAYER_GIB * server.model.num_layers


# --------------------------------------------------------------------------- checks

def _f(severity: Severity, code: str, message: str, fix: str = "") -> Finding:
    return Finding(severity=severity, code=code, message=message, fix=fix)


def _capability(server: ServerInput, gpu: GpuSpec) -> list[Finding]:
    m, out = server.model, []
    cc = gpu.cc_str
    if not gpu.vllm_supported:
        out.append(_f("error", "gpu-unsupported",
                      f"{gpu.name} has compute capability {cc}; vLLM needs >= 7.0 (Pascal and older are refused)",
                      "use a GPU with compute capability >= 7.0 (V100, T4 or newer), or serve this model with "
                      "an engine that supports Pascal (e.g. llama.cpp)"))
    dtype = effective_dtype(server)
    if dtype == "bfloat16" and not gpu.supports_bf16:
        why = f"dtype auto picks {m.native_dtype} from config.json" if server.dtype == "auto" else "dtype bfloat16"
        fix = ("use dtype float32 (Gemma-2 is numerically unstable in float16) or a GPU with compute "
               "capability >= 8.0" if m.model_type in ("gemma2", "gemma3") else "use dtype float16")
        out.append(_f("error", "bf16-unsupported",
                      f"{why}, but bfloat16 needs compute capability >= 8.0 and {gpu.name} has {cc}", fix))
    if dtype == "float16" and m.model_type in ("gemma2", "gemma3"):
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
    out += _quant_findings(server, gpu, dtype)
    if server.kv_cache_dtype.startswith("fp8") and not gpu.supports_fp8:
        out.append(_f("warning", "fp8-kv-cache-old-gpu",
                      f"kv_cache_dtype {server.kv_cache_dtype} on compute capability {cc} (< 8.9): only some "
                      "attention backends accept an FP8 KV cache there",
                      "use kv_cache_dtype auto, or verify with your vLLM version"))
    return out


def _quant_findings(server: ServerInput, gpu: GpuSpec, dtype: str) -> list[Finding]:
    m, req, ck, out = server.model, server.quantization, server.model.quantization, []
    cc = gpu.cc_str
    if req and ck is None and req in ("awq", "awq_marlin", "gptq", "gptq_marlin", "marlin", "gptq_marlin_24"):
        method = "awq" if req.startswith("awq") else "gptq"
        variant = quantized_variant(m, method)
        fix = (f"use {variant.id} with quantization {method}" if variant else
               f"drop quantization {req} (the checkpoint is not {method.upper()}), or point model at "
               f"{_an(method)} {method.upper()} checkpoint of {m.id} and describe it under models:")
        out.append(_f("error", f"{method}-checkpoint-mismatch",
                      f"quantization {req} needs {_an(method)} {method.upper()}-quantised checkpoint; {m.id} is not quantised",
                      fix))
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
    # an AWQ checkpoint without the flag runs awq_marlin on CC >= 8.0 (bf16 fine), plain awq below
    if kernel == "awq" and (req is not None or not gpu.supports_marlin):
        if gpu.compute_capability < (7, 5):
            out.append(_f("error", "quant-unsupported-on-gpu",
                          f"AWQ kernels need compute capability >= 7.5; {gpu.name} has {cc}",
                          "use a GPTQ checkpoint (GPTQ runs on Volta) or a Turing-or-newer GPU"))
        if dtype == "bfloat16":
            out.append(_f("error", "quant-dtype-mismatch",
                          "the AWQ kernel runs in float16 only; bfloat16 was requested",
                          "use dtype float16" +
                          (" (or quantization awq_marlin, which accepts bfloat16)" if gpu.supports_marlin else "")))
    if kernel in _MARLIN and not gpu.supports_marlin:
        plain = "awq" if kernel.startswith("awq") else "gptq"
        out.append(_f("error", "quant-unsupported-on-gpu",
                      f"{kernel} (Marlin kernels) needs compute capability >= 8.0 on most vLLM builds; "
                      f"{gpu.name} has {cc}", f"use quantization {plain}"))
    if kernel == "fp8":
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
        need = (7, 5) if m.quant_bits >= 8 else (8, 0)
        if gpu.compute_capability < need:
            out.append(_f("error", "quant-unsupported-on-gpu",
                          f"this compressed-tensors scheme ({m.quant_bits:g}-bit) needs compute capability >= "
                          f"{need[0]}.{need[1]}; {gpu.name} has {cc}", "use an AWQ/GPTQ checkpoint"))
    if kernel == "mxfp4" and not gpu.supports_marlin:
        out.append(_f("error", "quant-unsupported-on-gpu",
                      f"MXFP4 needs compute capability >= 8.0 (weight-only via Marlin); {gpu.name} has {cc}",
                      "use a GPU with compute capability >= 8.0"))
    return out


def _plan_findings(server: ServerInput, gpus_on_node: int) -> list[Finding]:
    m, tp, out = server.model, server.tensor_parallel_size, []
    if m.num_attention_heads % tp:
        out.append(_f("error", "tp-not-divisible",
                      f"tensor_parallel_size {tp} does not divide {m.id}'s {m.num_attention_heads} attention heads",
                      f"use tensor_parallel_size {_divisors_hint(m, gpus_on_node)}"))
    elif not m.kv_latent_dim and m.num_kv_heads % tp and tp % m.num_kv_heads:
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
    ok = [t for t in range(1, max(gpus_on_node, 1) + 1) if m.num_attention_heads % t == 0
          and (m.kv_latent_dim or m.num_kv_heads % t == 0 or t % m.num_kv_heads == 0)]
    ok = ok or [1]
    return " or ".join(str(t) for t in ok[-3:])


def _an(method: str) -> str:
    return "an" if method.lower().startswith(("a", "e", "i", "o", "u", "f")) else "a"


def _ceil2(x: float) -> float:
    return math.ceil(x * 100 - 1e-9) / 100


def _fit_server(server: ServerInput, gpu: GpuSpec, node: str, gpus: tuple[int, ...], gpus_on_node: int,
                extra: Sequence[Finding] = ()) -> ServerFit:
    m = server.model
    max_len = server.max_model_len or m.context_length
    findings: list[Finding] = list(extra) + _plan_findings(server, gpus_on_node)
    dtype = effective_dtype(server)
    method = _weight_method(server)
    if server.engine == "mock":
        return ServerFit(name=server.name, node=node, gpus=gpus, ok=not any(f.severity == "error" for f in findings),
                         model=m.id, engine="mock", dtype=dtype, quantization=method, weights_gib=0.0,
                         overhead_gib=0.0, activation_gib=0.0, non_torch_gib=0.0, cuda_graph_gib=0.0,
                         budget_gib=0.0, kv_cache_gib=0.0, kv_bytes_per_token=0, kv_cache_tokens=0,
                         max_concurrency=None, max_model_len=max_len, max_num_batched_tokens=0,
                         findings=tuple(findings))
    findings += _capability(server, gpu)
    util = server.gpu_memory_utilization
    budget = util * gpu.visible_gib
    w = weights_gib(server)
    act = activation_gib(server, gpu, max_len)
    nt = non_torch_gib(server)
    graphs = cuda_graph_gib(server)
    overhead = act + nt + graphs
    kv = budget - w - overhead
    per_tok = kv_bytes_per_token(server)
    if per_tok:
        tokens = max(0, int(kv * GiB // per_tok) // BLOCK_SIZE * BLOCK_SIZE)
        conc = tokens / max_len
        one_seq = math.ceil(max_len / BLOCK_SIZE) * BLOCK_SIZE * per_tok / GiB
    else:
        tokens, conc, one_seq = 0, None, 0.0
    findings += _memory_findings(server, gpu, w, overhead, kv, one_seq, tokens, max_len, per_tok, budget)
    return ServerFit(
        name=server.name, node=node, gpus=gpus, ok=not any(f.severity == "error" for f in findings), model=m.id,
        engine=server.engine, dtype=dtype, quantization=method, weights_gib=w, overhead_gib=overhead,
        activation_gib=act, non_torch_gib=nt, cuda_graph_gib=graphs, budget_gib=budget,
        kv_cache_gib=kv if per_tok else min(kv, 0.0),  # encoder-only: no KV cache, only a possible deficit
        kv_bytes_per_token=per_tok, kv_cache_tokens=tokens, max_concurrency=conc, max_model_len=max_len,
        max_num_batched_tokens=_batched_tokens(server, gpu, max_len), findings=tuple(findings),
    )


def _memory_findings(server: ServerInput, gpu: GpuSpec, w: float, overhead: float, kv: float, one_seq: float,
                     tokens: int, max_len: int, per_tok: int, budget: float) -> list[Finding]:
    m, util, out = server.model, server.gpu_memory_utilization, []
    need_util = _ceil2((w + overhead + one_seq) / gpu.visible_gib)
    where = f"{util:.2f} x {gpu.visible_gib:.2f} GiB = {budget:.2f} GiB"

    def fixes(allow_len_cut: bool) -> str:
        opts = []
        if need_util <= UTIL_SUM_WARN:
            opts.append(f"raise gpu_memory_utilization to {need_util:.2f}")
        fit_len = (int(kv * GiB // per_tok) // BLOCK_SIZE * BLOCK_SIZE) if per_tok and kv > 0 else 0
        if allow_len_cut and fit_len >= 256:
            opts.append(f"cut max_model_len to {fit_len}")
        if not m.quantization and _weight_method(server) is None:
            for method in ("awq", "gptq"):
                v = quantized_variant(m, method)
                if v is not None and (method != "awq" or gpu.compute_capability >= (7, 5)):
                    opts.append(f"use {v.id} with quantization {method}")
                    break
            else:
                if need_util > UTIL_SUM_WARN:
                    opts.append(f"a 4-bit AWQ/GPTQ checkpoint of {m.id} (describe it under models:)")
        if per_tok and server.kv_cache_dtype == "auto" and allow_len_cut and gpu.supports_fp8:
            opts.append("use kv_cache_dtype fp8 (halves the KV cache)")
        if not opts or need_util > UTIL_SUM_WARN:
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
    elif tokens < max_len:
        out.append(_f("error", "kv-cache-too-small",
                      f"KV cache of {kv:.2f} GiB holds {tokens} tokens; one max_model_len {max_len} sequence needs "
                      f"{one_seq:.2f} GiB", fixes(True)))
    elif tokens / max_len < LOW_CONCURRENCY:
        out.append(_f("warning", "low-concurrency",
                      f"KV cache of {kv:.2f} GiB holds {tokens} tokens: only {tokens / max_len:.2f} sequences of "
                      f"{max_len} tokens at once", fixes(True)))
    return out


def check_server_on_gpu(server: ServerInput, gpu: GpuSpec, gpus_on_node: int = 1) -> FitReport:
    """One server on ``tensor_parallel_size`` GPUs of a node of ``gpus_on_node`` identical GPUs."""
    idx = tuple(range(min(server.tensor_parallel_size, max(gpus_on_node, 1))))
    node = NodeInput(label=f"{gpu.name}-node", gpu=gpu, gpu_count=max(gpus_on_node, 1), servers=((server, idx),))
    return check([node])


def check(nodes: Sequence[NodeInput]) -> FitReport:
    """Fit-check every server on every node, then every GPU's combined utilisation."""
    servers: list[ServerFit] = []
    gpus: list[GpuFit] = []
    top: list[Finding] = []
    for node in nodes:
        per_gpu: dict[int, list[ServerInput]] = {i: [] for i in range(node.gpu_count)}
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
            servers.append(_fit_server(server, node.gpu, node.label, tuple(idx), node.gpu_count, extra))
            for i in idx:
                if i in per_gpu:
                    per_gpu[i].append(server)
        for i, on in per_gpu.items():
            real = [s for s in on if s.engine == "vllm"]
            util = sum(s.gpu_memory_utilization for s in real)
            found: list[Finding] = []
            if len(real) > 1 or util >= 1.0:
                names = " + ".join(f"{s.name} {s.gpu_memory_utilization:.2f}" for s in real)
                if util >= 1.0 and len(real) > 1:
                    found.append(_f("error", "util-sum-too-high",
                                    f"{node.label} GPU {i}: utilisations sum to {util:.2f} ({names}); each vLLM "
                                    "instance claims its fraction of the GPU's total memory, so the later ones "
                                    "cannot start", f"lower them to sum <= {UTIL_SUM_WARN:.2f}, or move a server to "
                                    "another GPU"))
                elif util > UTIL_SUM_WARN:
                    found.append(_f("warning", "util-sum-high",
                                    f"{node.label} GPU {i}: utilisations sum to {util:.2f} ({names}); CUDA contexts "
                                    "outside the budgets need the last few percent",
                                    f"keep the sum <= {UTIL_SUM_WARN:.2f}"))
            gpus.append(GpuFit(node=node.label, index=i, gpu=node.gpu.name, visible_gib=node.gpu.visible_gib,
                               util_sum=util, servers=tuple(s.name for s in on),
                               used_gib=util * node.gpu.visible_gib, findings=tuple(found)))
    if not nodes:
        top.append(_f("info", "nothing-to-check", "no GPU node in the plan"))
    ok = not any(f.severity == "error" for f in top) and all(s.ok for s in servers) and \
        not any(f.severity == "error" for g in gpus for f in g.findings)
    return FitReport(ok=ok, servers=tuple(servers), gpus=tuple(gpus), findings=tuple(top))
