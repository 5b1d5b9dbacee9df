"""How each vLLM release line sizes its memory at start-up.

vLLM decides the KV-cache size once, when the server starts: it loads the weights, runs one
profiling forward pass with dummy inputs, measures the peak, and gives what is left of
``gpu_memory_utilization x total`` to the KV cache. *How* it does that changed several times.
This module turns a version number into the rules of its era; the fit-check applies them.
Every rule names where it comes from and the versions it holds for; docs/fit-check.md
repeats them in a table. Facts only: nothing here is code from vLLM.

Eras (``version`` = the vLLM release the server runs):

- **Engine.** V0 up to 0.7; V1 the default from 0.8.0 (release notes), the only engine from
  0.11. V1 refused compute capability < 8.0 and fell back to V0 until PR #23614 (0.10.2).
- **Profiling batch.** V0 without chunked prefill profiles ``max(max_model_len, 2048)``
  tokens in one pass (``SchedulerConfig``); its OpenAI server turns chunked prefill on by
  itself when ``max_model_len > 32768`` (PR #6666, merged the day 0.5.3 was tagged, so from
  0.5.4; log line "Chunked prefill is enabled by default for models with max_model_len > 32K")
  and then profiles 512 tokens. V1 always chunks:
  2048 tokens and 256 sequences, or 8192 / 1024 on cards with >= 70 GiB whose name does not
  contain "A100" (``EngineArgs`` usage-context defaults; logs of 0.10-0.25 agree).
- **Sampler warm-up.** The profiling pass also samples one token for every sequence
  (``min(max_num_seqs, batched tokens)`` rows of ``vocab_size`` logits). Its cost per logit
  depends on the top-k/top-p implementation: the PyTorch sort path of V0 and of V1 up to 0.16
  keeps ~40 B per logit alive (fp32 logits, probabilities, sort values and int64 indices);
  the kernel-based path of 0.17 and later ~15 B. Fitted on logged activation peaks:
  V0 cases 1024 / 1041 / #15, V1 0.10-0.13 cases 1050 / 1034 / 1033 / 1051, V1 0.19 llm-d sweep.
- **CUDA graphs.** Captured *after* the KV cache is allocated, so outside the budget, until
  0.20.0 (PR #30515 made the estimate opt-in in Dec 2025; the 0.20.0 source archive on PyPI turns
  ``VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS`` on by default, 0.19.0's off, though the log line
  it prints says "default since v0.21.0"); from 0.20 an estimate is subtracted inside the budget.
- **Non-torch memory.** Before 0.2.5 the profiler read ``torch.cuda.max_memory_allocated``
  only, so NCCL buffers were not counted (PR #2031, vllm#2136). Later builds count what the
  profiling pass adds outside torch; with TP > 1 that is ~2 GiB per rank (NCCL + custom
  all-reduce; 0.19 logs 2.07-2.21 GiB, PR #10511's TP2 log 3.58 GiB).
- **Start-up refusal.** V1 from 0.9.1 raises "Free memory on device (F/T GiB) on startup is
  less than desired GPU memory utilization (u, u x T GiB)" (PR #18974 era; logs of 0.11,
  0.19, 0.23). Earlier builds start and fail later, or give the instance less KV.
- **Hybrid KV.** V1 from 0.9.1 sizes sliding-window layers separately (hybrid KV-cache
  manager): a sliding layer keeps ``min(window - 1 + batched tokens, max_model_len)`` tokens
  per request. 0.8.3-0.9.0 check one request that way but allocate every layer in full; V0 and
  earlier V1 give every layer full-length KV (``get_kv_cache_config`` in the PyPI source archives).
- **Hybrid KV groups.** The hybrid manager (V1 from 0.9.1) puts layers of one attention type
  into KV-cache groups of *equal* size, so one page size serves all; a type whose layer count
  is not a multiple of the group size is padded ("Add N padding layers, may waste at most X%
  KV cache memory", ``_get_kv_cache_groups_uniform_page_size`` in ``v1/core/kv_cache_utils.py``).
  The group size is the smallest type's layer count; from PR #29303 (merged 2025-11-24, so
  0.12) the largest when it is below 1.5 x the smallest. Memory is split over the padded
  slots: tokens = KV / (slots x per-layer bytes). See :func:`hybrid_kv_group_slots`.
- **dtype ``auto``.** A config without ``torch_dtype`` counts as float32, and float32 models
  are served in float16 (``_get_and_verify_dtype``). From 0.9 a dtype the GPU cannot run
  (bfloat16 below compute capability 8.0) falls back to float16 with a warning
  ("doesn't support torch.bfloat16. Falling back to torch.float16"); before, the worker
  raised "Bfloat16 is only supported on GPUs with compute capability of at least 8.0".
- **Default utilisation.** 0.9 until 0.19; 0.92 from 0.20 (``CacheConfig.gpu_memory_utilization``
  in the PyPI source archives: 0.9 in 0.19.0, 0.92 in 0.20.0; case 1031's error line shows 0.92 at 0.23).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "DEFAULT_VLLM_VERSION",
    "MAX_TOKENS",
    "VllmRules",
    "check_vllm_version",
    "hybrid_kv_group_slots",
    "mamba2_state_bytes",
    "mamba_ssm_dtype",
    "mxfp4_expert_bytes",
    "mxfp4_moe_backend",
    "parse_vllm_version",
    "rules_for",
    "v0_mamba_batch",
]

DEFAULT_VLLM_VERSION = "0.32"  # the version biofleet's templates target (README, scripts/install-vllm.sh)
# A context, batch or sequence count beyond this is no real setting (vLLM keeps them in int32)
MAX_TOKENS = 1 << 31

_VERSION = re.compile(r"^v?(\d{1,3})\.(\d{1,3})(?:\.(\d{1,4}))?(?:[.+-][A-Za-z0-9.+-]*)?$")

Version = tuple[int, int, int]


def parse_vllm_version(text: str) -> Version:
    """'0.19', '0.10.1.1', 'v0.6.4.post1', '0.11.0+cu118' -> (major, minor, patch)."""
    m = _VERSION.match(str(text).strip())
    if not m:
        raise ValueError(f"vLLM version must look like 0.19 or 0.10.2 (got {text!r})")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def check_vllm_version(text: str) -> str:
    """Pydantic validator: the text if it parses, else ValueError."""
    parse_vllm_version(text)
    return str(text).strip()


@dataclass(frozen=True)
class VllmRules:
    """The memory rules of one vLLM release on one kind of GPU."""

    version: Version
    engine: Literal["V0", "V1"]
    v1_fallback: bool  # a V1-era build that runs V0 because the GPU is too old
    sampler_bytes_per_logit: float
    graphs_in_budget: bool
    non_torch_counted: bool
    free_memory_check: bool
    others_count_as_own: bool  # memory other processes hold on the GPU is read as this server's non-torch memory
    hybrid_kv: bool
    # the one-request check reads sliding-window layers at their window while (before hybrid_kv) every layer is
    # allocated in full: V1 0.8.3-0.9.0 check the per-layer specs, then turn sliding layers into full ones
    sliding_window_check: bool
    # PR #29303: groups as large as the largest type when it has fewer than this x the smallest's layers (0: never)
    kv_group_near_equal_ratio: float
    auto_dtype_fallback: bool
    default_utilization: float
    mla_latent_kv: bool  # 0.7.1: MLA models cache one latent per token (before: full K and V of every head)
    awq_split_k_gemm: bool  # before 0.3.0 every AWQ matmul ran awq_gemm with 8 split-k partial outputs
    kv_tokens_from_concurrency: bool  # "GPU KV cache size" printed as max concurrency x max_model_len
    marlin_min_cc: tuple[int, int]  # the least compute capability Marlin (AWQ / GPTQ / WNA16) kernels run on
    # what V1's profile_run keeps of the dummy encoder outputs through the text pass and the sampler: each item padded
    # with zeros to the encoder budget ("budget", 0.11.x), to the modality's tokens per item ("item", 0.12.x), or as
    # the encoder returned it ("none")
    mm_profile_pad: Literal["none", "budget", "item"]
    qwen3_vl_video_profile: bool  # 0.11-0.12 profile Qwen3-VL on a video counted as 12.5 tokens per video token
    # vLLM's model runner V2 (vllm/v1/worker/gpu/) runs this server: see model_runner_v2
    model_runner_v2: bool
    profile_sampler_bytes_per_logit: float  # the profile's sampler pass, where it differs from the warm-up's
    encoder_profiled: bool  # the profile runs the vision encoder (MRV2 only from 0.27)
    # a compiled (not --enforce-eager) start with an empty compile cache holds about one 16-bit vocabulary x hidden
    # matrix more at its profiled peak: V1 from 0.17, where torch >= 2.10 turns AOT compilation on by default
    # (envs.use_aot_compile); see fitcheck.COLD_COMPILE_BYTES_PER_TOKEN_HIDDEN
    cold_compile_copy: bool
    # bitsandbytes: the loader turns a double-quantised absmax back into fp32 as it loads
    # (`dequantize_dq` in bitsandbytes_loader.py: not in the 0.9.1 sdist, in 0.9.2's), 4.5 bits a 4-bit weight
    bnb_absmax_fp32: bool

    @property
    def label(self) -> str:
        return ".".join(map(str, self.version))

    def chunked_prefill(self, max_model_len: int) -> bool:
        if self.engine == "V1":
            return True
        return self.version >= (0, 5, 4) and max_model_len > 32768

    def default_max_num_batched_tokens(self, big_gpu: bool, max_model_len: int) -> int:
        if self.engine == "V1":
            return 8192 if big_gpu else 2048
        if self.chunked_prefill(max_model_len):
            return 512
        return max(max_model_len, 2048)

    def default_max_num_seqs(self, big_gpu: bool) -> int:
        return 1024 if self.engine == "V1" and big_gpu else 256


def rules_for(version: str | Version, compute_capability: tuple[int, int] = (9, 0),
              v0_model: bool = False, pipeline_parallel: bool = False, v0_requested: bool = False,
              v1_requested: bool = False, mrv2: bool = False) -> VllmRules:
    """The rules of ``version`` on a GPU of ``compute_capability``. ``v0_model``: a model V1-era builds
    before 0.10.2 still ran on V0: Mamba hybrids (case 3012: 0.10.1, V0 ``model_runner.py`` building its
    ``MambaCacheManager``) and encoder-decoder models (mllama: V0's ``enc_dec_model_runner.py``).
    ``pipeline_parallel``: 0.8.x ran pipeline-parallel servers on V0 (case 2004: 0.8.5, two stages, V0's
    ``worker.py`` refusing the KV cache); V1 took them with its multiprocessing executor in 0.9.
    ``v0_requested``: the server runs with ``VLLM_USE_V1=0``, which kept V0 from 0.8 until it was removed
    in 0.11 (cases 2001 / 2002 / 15004: 0.8.3 with V0's log lines). ``v1_requested``: ``VLLM_USE_V1=1``, which
    ran the V1 engine before it became the default, from its alpha in 0.7.0 (release notes; case 16131).
    ``mrv2``: the server runs on the model runner V2 (:func:`model_runner_v2`); modelled before 0.25."""
    v = parse_vllm_version(version) if isinstance(version, str) else version
    v1 = v >= (0, 8, 0) or (v1_requested and v >= (0, 7, 0) and compute_capability >= (8, 0))
    fallback = v1 and ((v < (0, 10, 2) and (compute_capability < (8, 0) or v0_model)) or
                       (pipeline_parallel and v < (0, 9, 0)) or (v0_requested and v < (0, 11, 0)))
    engine: Literal["V0", "V1"] = "V1" if v1 and not fallback else "V0"
    # bytes per logit of the sampler warm-up: V0's sort-based top-k/top-p path ~33 (gemma-2b-it's 256k
    # vocabulary on a T4, case 6103: 2.0 GiB for 256 rows), V1 before FlashInfer's sampler ~40, then 15
    sampler = (15.0 if v >= (0, 17, 0) else 40.0) if engine == "V1" else 33.0
    mrv2 = mrv2 and engine == "V1" and v < MRV2_MODELLED_BEFORE
    return VllmRules(
        version=v, engine=engine, v1_fallback=fallback, sampler_bytes_per_logit=sampler,
        graphs_in_budget=engine == "V1" and v >= (0, 20, 0) and not mrv2,
        non_torch_counted=v >= (0, 2, 5),
        free_memory_check=engine == "V1" and v >= (0, 9, 1),
        # the profiler took (total - free) as the memory in use: 0.2.5-0.3.0 read peak = total - free (PR #2863,
        # 0.3.1, subtracts what was in use at start-up); 0.6.4 read non-torch = (total - free) - torch's
        # allocations (PR #9352, merged after 0.6.3; its log line "Memory profiling results: total_gpu_memory=...
        # initial_memory_usage=..."; PR #10511, 0.6.5, measures from a baseline again); V1 copied that until 0.9.0
        # (issue #18854 on 0.9.0, fixed by PR #19312 beside the 0.9.1 free-memory check)
        others_count_as_own=((0, 2, 5) <= v < (0, 3, 1)) or ((0, 6, 4) <= v < (0, 6, 5))
        or (engine == "V1" and v < (0, 9, 1)),
        # kv_cache_utils.get_kv_cache_config in the PyPI source archives: 0.8.3 added SlidingWindowSpec and ran
        # check_enough_kv_cache_memory before unify_hybrid_kv_cache_specs; 0.9.1 keeps the specs apart unless
        # --disable-hybrid-kv-cache-manager (off by default on CUDA) and groups them (case 7005: 0.8.4 started a
        # Gemma-3 at 0.53x concurrency)
        hybrid_kv=engine == "V1" and v >= (0, 9, 1),
        sliding_window_check=engine == "V1" and v >= (0, 8, 3),
        # kv_cache_utils in the PyPI source archives: 1.25 in 0.12.0-0.17.x, 1.5 from 0.18.0
        kv_group_near_equal_ratio=0.0 if engine != "V1" or v < (0, 12, 0) else 1.25 if v < (0, 18, 0) else 1.5,
        auto_dtype_fallback=v >= (0, 9, 0),
        default_utilization=0.92 if v >= (0, 20, 0) else 0.9,
        mla_latent_kv=v >= (0, 7, 1),
        awq_split_k_gemm=v < (0, 3, 0),
        # PRs #38364 / #40694 (2026-03/04): hybrid models' token count from the concurrency estimate instead of
        # num_blocks // groups x block size; 0.20.0 still prints the old figure (case 3018), 0.20.2 the new (8000)
        kv_tokens_from_concurrency=v >= (0, 20, 1),
        # PR #29901 (Marlin on Turing: two m16n8k8 MMAs for each m16n8k16, fp16 activations) and #31000 / #31008
        # (compressed-tensors' Marlin path), merged December 2025, first released in 0.14.0 (release highlights,
        # 2026-01-20); case 21104: awq_marlin on a T4 under 0.17.1
        marlin_min_cc=(7, 5) if v >= (0, 14, 0) else (8, 0),
        # gpu_model_runner.profile_run of the PyPI sdists: 0.11.0-0.11.2 expand every dummy output shorter than the
        # encoder budget to (budget, width) before caching it; 0.12.0 to (the modality's max tokens per item, width);
        # 0.9-0.10 and 0.13+ cache the outputs as they are (0.13.0: `encoder_cache[f"tmp_{i}"] = output`)
        mm_profile_pad=("none" if engine != "V1" else "budget" if (0, 11, 0) <= v < (0, 12, 0)
                        else "item" if (0, 12, 0) <= v < (0, 13, 0) else "none"),
        # qwen3_vl.py of 0.11.0-0.12.0: get_max_video_tokens multiplies the video's tokens by 12.5 (timestamp text
        # around every frame), so its 12,288-token dummy video (24,576 frames of 32 x 32 pixels) counts 153,600 and
        # beats the 16,384-token image; 0.13.0 dropped the factor, and the image is the largest item again
        qwen3_vl_video_profile=engine == "V1" and (0, 11, 0) <= v < (0, 13, 0),
        model_runner_v2=mrv2,
        # MRV2's profile samples without top-k / top-p / logprobs: fp32 logits (case 9003, 0.30, eager: a 0.15 GiB
        # peak for 256 x 151,936 logits); the warm-up after the graphs runs every sampling feature
        profile_sampler_bytes_per_logit=4.0 if mrv2 else sampler,
        encoder_profiled=not mrv2 or v >= (0, 27, 0),
        cold_compile_copy=engine == "V1" and v >= (0, 17, 0),
        bnb_absmax_fp32=v >= (0, 9, 2),
    )


# Model runner V2 (``VllmConfig.use_v2_model_runner`` in the PyPI source archives): without VLLM_USE_V2_MODEL_RUNNER
# it runs generate models of these architectures, dense and unquantised, from 0.22; 0.24 takes the listed ones
# whatever their weights; 0.25 every dense model that is not a hybrid, and these MoE architectures
_MRV2_ARCHS = {
    (0, 22, 0): frozenset({"Qwen3ForCausalLM"}),
    (0, 23, 0): frozenset({"LlamaForCausalLM", "MistralForCausalLM", "Qwen3ForCausalLM"}),
    (0, 24, 0): frozenset({"Qwen3ForCausalLM", "DeepseekV2ForCausalLM", "Qwen2MoeForCausalLM", "GraniteMoeForCausalLM",
                           "LlamaForCausalLM", "MistralForCausalLM"}),
}
_MRV2_MOE_ARCHS = frozenset({"DeepseekV2ForCausalLM", "GraniteMoeForCausalLM", "Qwen2MoeForCausalLM"})
MRV2_MODELLED_BEFORE: Version = (0, 25, 0)  # later MRV2 profiles hold memory the source does not account for (docs)


def model_runner_v2(version: str | Version, architecture: str, moe: bool, quantized: bool, hybrid: bool,
                    generate: bool = True, env: str = "") -> bool:
    """Whether vLLM ``version`` runs a model on its model runner V2 (``VLLM_USE_V2_MODEL_RUNNER`` = ``env``, "" when
    unset). Its profile differs from V1's: no CUDA-graph estimate inside the budget until 0.29 (its
    ``profile_cudagraph_memory`` returns 0), a sampler pass that skips top-k / top-p / logprobs ("the sampler may skip
    top_k, top_p, and logprobs, using less GPU memory than what is possible during actual execution"), and no
    vision-encoder pass before 0.27."""
    v = parse_vllm_version(version) if isinstance(version, str) else version
    if env in ("0", "1"):
        return env == "1" and v >= (0, 13, 0)
    if v < (0, 22, 0) or not generate:
        return False
    if v < (0, 25, 0):
        archs = _MRV2_ARCHS[max(k for k in _MRV2_ARCHS if k <= v)]
        strict = v < (0, 24, 0)  # 0.22 / 0.23: dense and unquantised only
        return architecture in archs and not hybrid and not (strict and (moe or quantized))
    return not hybrid and (architecture in _MRV2_MOE_ARCHS or not moe)


def hybrid_kv_group_slots(layers_per_type: Sequence[int], near_equal_ratio: float = 1.5) -> tuple[int, ...]:
    """Layer slots the hybrid KV manager gives each attention type, padding included.

    Every KV-cache group holds the same number of layers (``group_size``): the smallest type's
    layer count, or (from 0.12) the largest when that is below ``near_equal_ratio`` x the
    smallest (1.25 until 0.17, 1.5 from 0.18; 0: never). A type of ``n`` layers gets
    ``ceil(n / group_size)`` groups, i.e. ``ceil(n / group_size) x group_size`` slots; each slot
    is backed by as much memory as a real layer. Gemma-3-27B (52 sliding + 10 full): (60, 10), 8 padding layers."""
    counts = [int(n) for n in layers_per_type]
    size = hybrid_kv_group_size(counts, near_equal_ratio)
    if not size:
        return tuple(counts)
    return tuple(math.ceil(n / size) * size if n else 0 for n in counts)


def hybrid_kv_group_size(layers_per_type: Sequence[int], near_equal_ratio: float = 1.5) -> int:
    """Layers per KV-cache group of the hybrid KV manager (see :func:`hybrid_kv_group_slots`): also the number of
    memory pools the cache is split into, so ``num_blocks = KV // page // group size``
    (``kv_cache_utils.get_num_blocks``); 0 with fewer than two layer types."""
    present = [int(n) for n in layers_per_type if int(n) > 0]
    if len(present) < 2:
        return 0
    lo, hi = min(present), max(present)
    return hi if hi < lo * near_equal_ratio else lo


Mxfp4Backend = Literal["marlin", "triton", "flashinfer"]


def mxfp4_moe_backend(version: str | Version, compute_capability: tuple[int, int]) -> Mxfp4Backend:
    """The MXFP4 MoE kernel vLLM picks (``get_mxfp4_backend`` in ``quantization/mxfp4.py``).

    Blackwell (CC 10.x): FlashInfer (TRT-LLM gen). Hopper (9.x): OpenAI's ``triton_kernels`` when
    installed, which the builds do from 0.11 (the vllm-openai image; pip from PR #27370), Marlin
    before (the 0.10.1 H100 logs warn "leveraging the Marlin kernel"). Everything else: Marlin."""
    v = parse_vllm_version(version) if isinstance(version, str) else version
    if compute_capability >= (10, 0):
        return "flashinfer"
    if compute_capability[0] == 9 and v >= (0, 11, 0):
        return "triton"
    return "marlin"


def ceil_div(n: int, d: int) -> int:
    return -(-n // d)


def round_up(n: int, to: int) -> int:
    return ceil_div(n, to) * to


def mxfp4_expert_bytes(hidden: int, intermediate: int, tp: int, backend: Mxfp4Backend) -> int:
    """Bytes one MXFP4 expert (gate_up + down, scales, biases) holds on one TP rank after loading.

    ``Mxfp4MoEMethod.create_weights`` pads the per-rank intermediate size (and for some kernels the
    hidden size) and stores 4-bit values two to a byte plus one uint8 e8m0 scale per 32 values;
    ``process_weights_after_loading`` then reshapes them per kernel:
    - marlin: intermediate to a multiple of 128, hidden of 256; biases bf16;
    - triton: intermediate to a multiple of 64; the values are swizzled in place, but the scales are
      swizzled into a second tensor (rows padded to 32 x num_warps = 256) while the loaded scales stay
      on the layer; biases converted to float32;
    - flashinfer: intermediate and hidden to multiples of 256; biases float32."""
    inter = intermediate // tp
    if backend == "marlin":
        i, h, bias_b = round_up(inter, 128), round_up(hidden, 256), 2
    elif backend == "triton":
        i, h, bias_b = round_up(inter, 64), hidden, 4
    else:
        i, h, bias_b = round_up(inter, 256), round_up(hidden, 256), 4
    values = 3 * i * h // 2  # w13: 2i x h, w2: h x i, two 4-bit values per byte
    scales = 2 * i * (h // 32) + h * (i // 32)
    if backend == "triton":
        scales += round_up(2 * i, 256) * (h // 32) + round_up(h, 256) * (i // 32)
    return values + scales + bias_b * (2 * i + h)


_STATE_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def mamba_ssm_dtype(requested: str, model_dtype: str, version: str | Version, model_type: str = "",
                    config_dtype: str | None = None) -> str:
    """The dtype of the Mamba / Gated DeltaNet SSM state. ``--mamba-ssm-cache-dtype auto`` (the default) is the
    model dtype (``CacheConfig.mamba_ssm_cache_dtype``, since the flag came with PR #20840), except where vLLM's
    ``models/config.py`` resolves ``auto`` from the model's config (the PyPI source archives): Nemotron-H the
    config's ``mamba_ssm_cache_dtype`` else float16 from 0.13.0 (PR #29978), else float32 from 0.20.0 (PR #39032);
    Qwen3.5 / 3.6 (``Qwen3_5ForConditionalGenerationConfig``) the text config's ``mamba_ssm_dtype`` (float32 in
    the published files) from 0.17.0 (case 18202: 95 state blocks at 1.44x concurrency is float32's page)."""
    if requested != "auto":
        return requested
    v = parse_vllm_version(version) if isinstance(version, str) else version
    known = config_dtype if config_dtype in _STATE_DTYPE_BYTES else None
    if model_type == "nemotron_h" and v >= (0, 13, 0):
        return known or ("float32" if v >= (0, 20, 0) else "float16")
    if model_type in ("qwen3_5", "qwen3_5_moe") and v >= (0, 17, 0) and known:
        return known
    return model_dtype


def mamba2_state_bytes(heads: int, head_dim: int, n_groups: int, state_size: int, conv_kernel: int, tp: int,
                       conv_bytes: int, ssm_bytes: int) -> int:
    """One Mamba2 layer's state for one sequence on one TP rank (``MambaStateShapeCalculator.mamba2_state_shape``):
    conv ``(conv_kernel - 1) x (heads x head_dim + 2 x n_groups x state_size) / tp`` and SSM
    ``heads / tp x head_dim x state_size``. Groups are replicated when tp does not divide them (not modelled)."""
    conv = (conv_kernel - 1) * (heads * head_dim + 2 * n_groups * state_size) // tp
    ssm = heads // tp * head_dim * state_size
    return conv * conv_bytes + ssm * ssm_bytes


def v0_mamba_batch(max_num_seqs: int, enforce_eager: bool) -> int:
    """Sequences V0's ``MambaCacheManager`` is built for: ``pad_for_cudagraph(max_num_seqs)`` (the next CUDA-graph
    capture size: 1, 2, 4, then multiples of 8), or ``max_num_seqs`` with ``enforce_eager``."""
    if enforce_eager or max_num_seqs <= 4:
        return max_num_seqs if enforce_eager else 1 << (max_num_seqs - 1).bit_length()
    return round_up(max_num_seqs, 8)
