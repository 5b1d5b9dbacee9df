"""Five public GPU-memory calculators, REIMPLEMENTED here for comparison only.

Each function re-derives one tool's arithmetic from the description of its public source in
the research notes (repository, file and commit named per tool; no code copied) and answers
for one calibration case: does it fit, the weights it shows, and the KV-cache tokens its
numbers imply. They get the same facts biofleet's command line gets (model shape from the
catalogue, GPU, max_model_len, utilisation, tensor parallel size, quantisation), read the way
each tool reads them. Where a tool has no input for a fact (tensor parallelism, utilisation)
the note on the function says what was done; where it has no answer (no verdict, no KV) the
case counts as a miss for verdicts and is left out of that error.

- LLM-GPU-Calc (gjgjos/LLM-GPU-Calc app.py @3cc604f)
- gpu_poor "Can my GPU run this LLM?" (RahulSChand/gpu_poor src/App.js @ad2fc0e), vLLM mode
- accelerate estimate-memory (huggingface/accelerate commands/estimate.py) + the Space's 20 %
- VRAM Calculator vram.asmirnov.xyz (furiousteabag/vram-calculator app/_lib/index.ts @ea7ab04)
- vLLM VRAM Calculator (Tugaytalha/vllm-vram-calculator api/calculator.py @23b47e6)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from biofleet.catalog.gpus import GpuSpec
from biofleet.catalog.models import ModelSpec

GiB = 1024 ** 3
MiB = 1024 ** 2


@dataclass(frozen=True)
class Facts:
    model: ModelSpec
    gpu: GpuSpec
    max_model_len: int
    utilization: float
    tp: int
    weight_bytes: float  # bytes per parameter the user picks for the checkpoint (2, 1, 0.5)
    kv_bytes: int  # 2, or 1 for an FP8 KV cache
    quantized: bool


@dataclass(frozen=True)
class Answer:
    fits: bool | None  # None: the tool gives no answer for this case
    weights_gib: float | None
    kv_tokens: int | None  # what its numbers imply for the KV capacity (None: it has no KV)


def _kv_per_token(f: Facts) -> int:
    m = f.model
    return 2 * m.num_layers * (m.num_kv_heads or m.num_attention_heads) * (m.head_dim or 0) * f.kv_bytes


def llm_gpu_calc(f: Facts) -> Answer:
    """Required = (weights + 1 GiB + s(18h + 4I) + KV of one request) / u, against the card's
    marketing size. No tensor-parallel input: we divide weights and KV by TP in its favour."""
    m, s = f.model, f.max_model_len
    w = m.params_b * 1e9 * f.weight_bytes
    act = s * (18 * m.hidden_size + 4 * (m.intermediate_size or 4 * m.hidden_size))
    per_tok = _kv_per_token(f)
    required = (w / f.tp + GiB + act + per_tok * s / f.tp) / f.utilization
    card = f.gpu.memory_gib * GiB
    tokens = int((card * f.utilization - w / f.tp - GiB - act) / (per_tok / f.tp))
    return Answer(required <= card, w / f.tp / GiB, max(tokens, 0))


def gpu_poor(f: Facts) -> Answer:
    """vLLM mode: parameters 2Vh + L(4h^2 + 3hI) at 2 bytes, KV 8 s h L bytes (no GQA), activation
    10 s h + 2 a s^2, 650 MiB; fits if the sum <= 1024 x card GB MiB (no utilisation, no TP: we
    multiply the card by TP). Quantised checkpoints: 'vLLM doesn't support quant' -> no answer."""
    m, s = f.model, f.max_model_len
    if f.quantized:
        return Answer(None, None, None)
    h, inter = m.hidden_size, m.intermediate_size or 4 * m.hidden_size
    params = 2 * m.vocab_size * h + m.num_layers * (4 * h * h + 3 * h * inter)
    w = params * 2
    kv_per_tok = 8 * h * m.num_layers
    act = 10 * s * h + 2 * m.num_attention_heads * s * s
    total = w + kv_per_tok * s + act + 650 * MiB
    card = f.gpu.memory_gib * 1024 * MiB * f.tp
    tokens = int((card - w - act - 650 * MiB) / kv_per_tok)
    return Answer(total <= card, w / f.tp / GiB, max(tokens, 0))


def accelerate_estimate(f: Facts) -> Answer:
    """Exact parameter bytes (fp32 / 2, 4 or 8 for float16 / int8 / int4, embeddings included);
    the Space's 'add up to 20 % for inference'; fits if that <= the card. No KV at all."""
    w = f.model.params_b * 1e9 * f.weight_bytes / f.tp
    return Answer(1.2 * w <= f.gpu.memory_gib * GiB, w / GiB, None)


def vram_asmirnov(f: Facts) -> Answer:
    """Inference, half precision, batch 1, s = max_model_len, model parallel over TP GPUs:
    1000 MiB + weights / n + fp32 logits 4 s V + one layer of activations (attention scores
    a s^2 twice plus a byte mask, Q/K/V, MLP, norms). No KV cache; fits if <= the card."""
    m, s = f.model, f.max_model_len
    h, a = m.hidden_size, m.num_attention_heads
    kv_dim = (m.num_kv_heads or a) * (m.head_dim or h // a)
    inter = m.intermediate_size or 4 * h
    act = (2 * s * h + 2 * s * h + 2 * 2 * s * kv_dim + 2 * s * h  # input, Q, K+V, out-proj input
           + 2 * a * s * s * 2 + a * s * s + s * h  # softmax + dropout outputs, their masks
           + 2 * s * h + 2 * 2 * s * inter + s * h  # MLP input, two I-wide tensors, dropout mask
           + 2 * 2 * s * h)  # two layer-norm inputs
    w = m.params_b * 1e9 * 2 / f.tp
    total = 1000 * MiB + w + 4 * s * m.vocab_size + act
    return Answer(total <= f.gpu.memory_gib * GiB, w / GiB, None)


def vllm_vram_calculator(f: Facts) -> Answer:
    """Weights P x bytes, KV 2 L kv d bytes x s, activation 2(4sh + sI) x 2 B, overhead
    max(5 %, 0.5 GiB); per GPU everything / n + 0.3 GiB; fits if <= the card's GB read as GiB
    (no utilisation). Capacity: n x card - weights - activation - overhead, / KV per token."""
    m, s, n = f.model, f.max_model_len, f.tp
    w = m.params_b * 1e9 * f.weight_bytes
    per_tok = _kv_per_token(f)
    kv = per_tok * s
    act = 2 * (4 * s * m.hidden_size + s * (m.intermediate_size or 4 * m.hidden_size)) * 2
    overhead = max(0.05 * (w + kv + act), 0.5 * GiB)
    per_gpu = (w + kv + act + overhead) / n + (0.3 * GiB if n > 1 else 0.0)
    card = f.gpu.memory_gib * GiB
    budget = n * card - w - act - max(0.05 * (w + act), 0.5 * GiB)
    return Answer(per_gpu <= card, w / n / GiB, max(int(budget / per_tok), 0))


CALCULATORS: dict[str, Callable[[Facts], Answer]] = {
    "LLM-GPU-Calc": llm_gpu_calc,
    "gpu_poor (vLLM mode)": gpu_poor,
    "accelerate estimate-memory (+20 %)": accelerate_estimate,
    "VRAM Calculator (asmirnov)": vram_asmirnov,
    "vLLM VRAM Calculator (Tugaytalha)": vllm_vram_calculator,
}
