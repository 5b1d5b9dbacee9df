"""A tiny Llama model directory for running a real vLLM without GPUs or downloads.

vLLM loads it with ``--load-format dummy`` (random weights of the configured
shape), so the whole serving path — tokenizer, chat template, scheduler, KV
cache, OpenAI API, metrics — is real while the weights are not. head_dim is 64:
vLLM's CPU attention kernels reject smaller heads.
"""

from __future__ import annotations

import json
from pathlib import Path

_CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "gene expression analysis with single cell sequencing",
    "write a python function that computes the mean and variance",
    "hello world, how are you today? I am fine, thank you.",
    "SLURM schedules jobs on nodes with GPUs and CPUs",
    "0 1 2 3 4 5 6 7 8 9 + - * / = ( ) [ ] { } < > : ; , . ! ? ' \"",
]

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def make_tiny_llama(out: str | Path, *, vocab_size: int = 512, hidden_size: int = 128, layers: int = 2,
                    heads: int = 2, kv_heads: int = 1, max_len: int = 1024) -> Path:
    """Write config.json, tokenizer.json and tokenizer_config.json into ``out``."""
    try:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    except ImportError:
        raise RuntimeError("the tiny model needs the tokenizers package: pip install 'biofleet[tiny]'") from None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    special = ["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS * 20, trainer=trainer)
    tok.save(str(out / "tokenizer.json"))
    vocab = tok.get_vocab_size()
    head_dim = hidden_size // heads
    if head_dim < 64:
        raise ValueError(f"head_dim {head_dim} < 64: vLLM's CPU attention needs at least 64")
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden_size,
        "intermediate_size": hidden_size * 2,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": max_len,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "vocab_size": vocab,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>",
        "model_max_length": max_len,
        "chat_template": CHAT_TEMPLATE,
    }, indent=2))
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    return out
