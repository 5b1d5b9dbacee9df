"""Every engine argument biofleet renders is accepted by the real vLLM argument parser.

A flag that vLLM renamed or removed fails here, not in a job on the cluster.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from vllm_env import require_vllm

from biofleet.profile import Instance, Profile, ServerSpec
from biofleet.render import VLLM_MODULE, server_argv

pytestmark = pytest.mark.vllm

# Parse argv with the server's own parser (the one `python -m vllm.entrypoints.openai.api_server`
# builds), run vLLM's pre-load checks, print what it understood.
PARSE = r"""
import json, sys
from vllm.utils.argparse_utils import FlexibleArgumentParser
from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
parser = make_arg_parser(FlexibleArgumentParser(description="biofleet args check"))
args = parser.parse_args(json.loads(sys.argv[1]))
validate_parsed_serve_args(args)
keys = ["model", "served_model_name", "host", "port", "dtype", "quantization", "max_model_len",
        "gpu_memory_utilization", "tensor_parallel_size", "kv_cache_dtype", "enforce_eager",
        "max_num_seqs", "max_num_batched_tokens", "trust_remote_code", "runner", "load_format"]
print(json.dumps({k: getattr(args, k, None) for k in keys}, default=str))
"""

EVERYTHING = ServerSpec(
    model="Qwen/Qwen2.5-Coder-7B-Instruct-AWQ", served_name="coder", aliases=("qwen-coder",), dtype="float16",
    quantization="awq", max_model_len=8192, gpu_memory_utilization=0.85, tensor_parallel_size=2,
    kv_cache_dtype="fp8", enforce_eager=True, max_num_seqs=64, max_num_batched_tokens=4096,
    trust_remote_code=True, extra_args=("--load-format", "dummy", "--enable-prefix-caching"),
)
EMBED = ServerSpec(model="BAAI/bge-m3", kind="embed", dtype="bfloat16", max_model_len=8192)


def vllm_args(spec: ServerSpec) -> list[str]:
    profile = Profile.model_validate({
        "name": "args", "servers": {"s": spec.model_dump(exclude_defaults=True)},
        "jobs": [{"name": "j", "gpu": "H100", "gpus_per_node": 2, "nodes": ["s"]}],
    })
    argv = [str(a) for a in server_argv(Instance("s", "s", spec, "j", 0, (0, 1)), profile, "/fleet")]
    i = argv.index(VLLM_MODULE)
    return [a.replace("@PORT@", "8000") for a in argv[i + 1:]]


def parse(argv: list[str]) -> subprocess.CompletedProcess:
    python = require_vllm()
    return subprocess.run([str(python), "-c", PARSE, json.dumps(argv)], capture_output=True, text=True, timeout=300)


def test_every_rendered_flag_parses():
    r = parse(vllm_args(EVERYTHING))
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["model"] == "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ"
    assert got["served_model_name"] == ["coder", "qwen-coder"]
    assert got["port"] == 8000 and got["host"] == "0.0.0.0"
    assert got["dtype"] == "float16" and got["quantization"] == "awq"
    assert got["max_model_len"] == 8192 and got["gpu_memory_utilization"] == 0.85
    assert got["tensor_parallel_size"] == 2 and got["kv_cache_dtype"] == "fp8"
    assert got["enforce_eager"] is True and got["max_num_seqs"] == 64
    assert got["max_num_batched_tokens"] == 4096 and got["trust_remote_code"] is True
    assert got["load_format"] == "dummy"


def test_embedding_flags_parse():
    r = parse(vllm_args(EMBED))
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["runner"] == "pooling"


def test_a_removed_flag_fails():
    """The check can fail: a flag this vLLM does not know is an error."""
    r = parse([*vllm_args(EMBED), "--no-such-flag-in-vllm"])
    assert r.returncode != 0
    assert "no-such-flag-in-vllm" in r.stderr
