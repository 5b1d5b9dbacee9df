"""Profile loading and validation: valid profiles load, broken ones say file:line, field and fix."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from biofleet.errors import ProfileError
from biofleet.profile import load_profile, shipped_profiles

BASE = """\
name: demo
cluster:
  partition: t4flex
  account: lab
  qos: normal
  time: "12:00:00"
  mem: 16G
  hf_home: /scratch/$USER/hf
servers:
  coder:
    model: Qwen/Qwen2.5-Coder-7B-Instruct-AWQ
    quantization: awq
    dtype: float16
    max_model_len: 8192
    gpu_memory_utilization: 0.85
    roles: [code_generation]
  math:
    model: Qwen/Qwen2.5-7B-Instruct-AWQ
    quantization: awq
    dtype: float16
jobs:
  - name: t4
    gpu: T4
    nodes: [coder, math]
routing:
  default: coder
"""


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def errors_of(path: Path) -> list[str]:
    with pytest.raises(ProfileError) as ei:
        load_profile(path)
    return [str(i) for i in ei.value.issues]


def test_base_profile_is_valid(tmp_path):
    p = load_profile(write(tmp_path, BASE))
    assert p.name == "demo"
    assert [i.name for i in p.instances()] == ["coder", "math"]
    assert p.task_table() == {"code_generation": "coder"}
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="frozen"):
        p.servers["coder"].dtype = "bfloat16"


@pytest.mark.parametrize("path", shipped_profiles(), ids=lambda p: p.stem)
def test_shipped_profiles_load(path):
    p = load_profile(path)
    assert p.instances()


# (description, replacement (old, new) applied to BASE, expected error line)
BROKEN = [
    ("unknown top-level key", ("routing:", "routnig: {}\nrouting:"),
     "{f}:25  routnig: unknown key (did you mean 'routing'?); valid keys: cluster, description, extends, include, jobs, models, name, proxy, renew, renew_margin, routing, servers, vllm_version"),
    ("unknown server key", ("    dtype: float16\n    max_model_len", "    dtpye: float16\n    max_model_len"),
     "{f}:13  servers.coder.dtpye: unknown key (did you mean 'dtype'?); valid keys: aliases, dtype, enforce_eager, engine, env, extra_args, gpu_memory_utilization, kind, kv_cache_dtype, mamba_ssm_cache_dtype, max_model_len, max_num_batched_tokens, max_num_seqs, max_restarts, model, port, quantization, replicas, roles, scaling, served_name, tensor_parallel_size, trust_remote_code"),
    ("wrong type for max_model_len", ("max_model_len: 8192", "max_model_len: lots"),
     "{f}:14  servers.coder.max_model_len: Input should be a positive number of tokens or auto (got 'lots')"),
    ("negative max_model_len", ("max_model_len: 8192", "max_model_len: -5"),
     "{f}:14  servers.coder.max_model_len: Input should be greater than 0 (or auto)"),
    ("max_model_len past int32", ("max_model_len: 8192", "max_model_len: 99999999999999999999"),
     "{f}:14  servers.coder.max_model_len: Input should be at most 2,147,483,648 tokens (or auto)"),
    ("util above 1", ("gpu_memory_utilization: 0.85", "gpu_memory_utilization: 1.5"),
     "{f}:15  servers.coder.gpu_memory_utilization: Input should be less than or equal to 1"),
    ("util zero", ("gpu_memory_utilization: 0.85", "gpu_memory_utilization: 0"),
     "{f}:15  servers.coder.gpu_memory_utilization: Input should be greater than 0"),
    ("bad dtype", ("    dtype: float16\n    max_model_len", "    dtype: fp16\n    max_model_len"),
     "{f}:13  servers.coder.dtype: Input should be 'auto', 'float16', 'half', 'bfloat16' or 'float32'"),
    ("bad kind", ("    roles: [code_generation]", "    roles: [code_generation]\n    kind: chat"),
     "{f}:17  servers.coder.kind: Input should be 'generate' or 'embed'"),
    ("negative memory", ("mem: 16G", "mem: -16G"),
     "{f}:7  cluster.mem: '-16G' is not a valid memory size (characters '-' are not allowed); e.g. 50G"),
    ("bad time", ('time: "12:00:00"', 'time: "noon"'),
     "{f}:6  cluster.time: 'noon' is not a valid time limit (not of that form); e.g. 24:00:00 or 1-00:00:00"),
    ("missing model", ("    model: Qwen/Qwen2.5-7B-Instruct-AWQ\n", ""),
     "{f}:17  servers.math.model: required field is missing"),
    ("unknown server in placement", ("nodes: [coder, math]", "nodes: [coder, maths]"),
     "{f}:24  jobs.0.nodes.1.gpus.0.0: unknown server 'maths' (did you mean 'math'?); defined servers: coder, math"),
    ("server never placed", ("nodes: [coder, math]", "nodes: [coder]"),
     "{f}:17  servers.math: is not placed on any node; add it to a jobs[].nodes entry or remove it"),
    ("replicas mismatch", ("    roles: [code_generation]", "    roles: [code_generation]\n    replicas: 2"),
     "{f}:17  servers.coder.replicas: is 2 but the jobs place 'coder' 1 time(s); place it 2 times or change replicas"),
    ("routing to unknown model", ("  default: coder", "  default: codr"),
     "{f}:26  routing.default: names 'codr', which no server serves (did you mean 'coder'?)"),
    ("too many GPUs on a node", ("nodes: [coder, math]", "nodes: [{gpus: [[coder], [math]]}]"),
     "{f}:24  jobs.0.nodes.0: lists 2 GPUs but the job has gpus_per_node: 1; raise gpus_per_node or move servers to another node"),
    ("TP zero", ("    roles: [code_generation]", "    roles: [code_generation]\n    tensor_parallel_size: 0"),
     "{f}:17  servers.coder.tensor_parallel_size: Input should be greater than or equal to 1"),
    ("bad quantization", ("    quantization: awq\n    dtype: float16\n    max", "    quantization: int3\n    dtype: float16\n    max"),
     "{f}:12  servers.coder.quantization: Input should be 'awq', 'awq_marlin', 'gptq', 'gptq_marlin', 'marlin', 'fp8', 'bitsandbytes', 'gguf', 'compressed-tensors', 'experts_int8', 'fbgemm_fp8', 'modelopt' or 'mxfp4'"),
    ("secret in env", ("  hf_home: /scratch/$USER/hf", "  hf_home: /scratch/$USER/hf\n  env: {HF_TOKEN: hf_abc}"),
     "{f}:9  cluster.env: HF_TOKEN looks like a secret; secrets must not be written into job scripts. Put it in a file readable only by you and use secret_files: {{HF_TOKEN: /path/to/file}}"),
    ("jobs is a mapping", ("jobs:\n  - name: t4\n    gpu: T4\n    nodes: [coder, math]\n", "jobs:\n  name: t4\n"),
     "{f}:21  jobs: Input should be a valid tuple"),
    ("port out of range", ("    roles: [code_generation]", "    roles: [code_generation]\n    port: 80"),
     "{f}:17  servers.coder.port: Input should be greater than or equal to 1024"),
    ("served name clash", ("    roles: [code_generation]", "    roles: [code_generation]\n    aliases: [math]"),
     "{f}:18  servers.math: served name/alias 'math' is also used by server 'coder' with another model; servers may share a served name only as replicas of the same model"),
    ("unknown GPU key", ("    gpu: T4\n", "    gpu: {memory_gib: 16, compute_capability: 7.5, vram: 1}\n"),
     "{f}:23  jobs.0.gpu.vram: unknown key; valid keys: compute_capability, memory_gib, name, price_per_hour"),
    ("empty jobs", ("jobs:\n  - name: t4\n    gpu: T4\n    nodes: [coder, math]\n", "jobs: []\n"),
     "{f}:21  jobs: Tuple should have at least 1 item after validation, not 0"),
]


@pytest.mark.parametrize("desc,change,expected", BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_profile_exact_error(tmp_path, desc, change, expected):
    old, new = change
    assert old in BASE, f"test setup: {old!r} not in BASE"
    path = write(tmp_path, BASE.replace(old, new, 1))
    errs = errors_of(path)
    if expected is None:
        assert errs and all(e.startswith(f"{path}:") for e in errs), errs
    else:
        assert expected.format(f=path) in errs, "\n".join(errs)


def test_unknown_gpu_name_is_a_profile_error_at_its_line(tmp_path):
    # found by fuzzing the shipped profiles: an unknown card name passed loading and failed later, in whichever
    # command planned the job first, as an unexpected error (exit 1) that named neither the file nor the field
    from typer.testing import CliRunner

    from biofleet.cli.main import app

    path = write(tmp_path, BASE.replace("    gpu: T4\n", "    gpu: T5\n", 1))
    (err,) = errors_of(path)
    assert err.startswith(f"{path}:23  jobs.0.gpu: unknown GPU 'T5'. Known: T4, L4, "), err
    assert err.endswith("(gpu: {memory_gib: 48, compute_capability: '8.6'})"), err
    for argv in (["fit-check", "--profile", str(path)], ["render", "--profile", str(path), "--out", str(tmp_path / "o")]):
        r = CliRunner().invoke(app, argv)
        assert isinstance(r.exception, ProfileError) and r.exception.exit_code == 2, (argv, r.exception)
    assert not (tmp_path / "o").exists()


def test_bad_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "name: x\nservers:\n  coder: {model: a\njobs: []\n")
    (err,) = errors_of(path)
    assert err.startswith(f"{path}:4  invalid YAML:"), err


def test_duplicate_key_is_rejected(tmp_path):
    path = write(tmp_path, BASE.replace("routing:\n", "routing:\n  default: math\n", 1))
    (err,) = errors_of(path)
    assert err == f"{path}:27  duplicate key 'default' (a key may appear once)"


def test_not_a_mapping(tmp_path):
    (err,) = errors_of(write(tmp_path, "- a\n- b\n"))
    assert err.endswith("a profile must be a YAML mapping (key: value)")


def test_missing_profile_lists_shipped(tmp_path):
    with pytest.raises(ProfileError) as ei:
        load_profile("t4x1O")
    msg = str(ei.value)
    assert "profile 't4x1O' not found" in msg and "did you mean 't4x10'?" in msg
    # a name longer than the file system allows (found by fuzzing): the same error, cut short, at the line
    (err,) = errors_of(write(tmp_path, "extends: " + "x" * 5000 + "\nname: q\n"))
    assert ":1  extends: profile 'xxxx" in err and "'... not found" in err and len(err) < 400, err


def test_tp_three_on_four_heads_is_a_fit_error(tmp_path):
    # TP 3 is a valid *profile*; whether it divides the heads is a fit-check finding (exit 1, not 2).
    from biofleet.fitcheck import check
    from biofleet.plan import fit_inputs

    text = BASE.replace("    roles: [code_generation]", "    roles: [code_generation]\n    tensor_parallel_size: 3")
    text = text.replace("    gpu: T4\n", "    gpu: T4\n    gpus_per_node: 4\n").replace(
        "nodes: [coder, math]", "nodes: [{gpus: [[coder], [], [], [math]]}]")
    report = check(fit_inputs(load_profile(write(tmp_path, text))))
    codes = {f.code for s in report.servers for f in s.findings}
    assert "tp-not-divisible" in codes
    assert not report.ok


# Shell metacharacters in every string field that reaches a script.
INJECT = "x; rm -rf ~"
STRING_FIELDS = [
    ("servers.coder.model", ("model: Qwen/Qwen2.5-Coder-7B-Instruct-AWQ", f"model: '{INJECT}'")),
    ("servers.coder.served_name", ("    roles: [code_generation]", f"    roles: [code_generation]\n    served_name: '{INJECT}'")),
    ("servers.coder.aliases.0", ("    roles: [code_generation]", f"    roles: [code_generation]\n    aliases: ['{INJECT}']")),
    ("servers.coder.extra_args.0", ("    roles: [code_generation]", "    roles: [code_generation]\n    extra_args: ['--x=$(reboot)']")),
    ("servers.coder.roles.0", ("roles: [code_generation]", f"roles: ['{INJECT}']")),
    ("cluster.partition", ("partition: t4flex", f"partition: '{INJECT}'")),
    ("cluster.account", ("account: lab", f"account: '{INJECT}'")),
    ("cluster.qos", ("qos: normal", f"qos: '{INJECT}'")),
    ("cluster.hf_home", ("hf_home: /scratch/$USER/hf", "hf_home: '/scratch/`id`'")),
    ("cluster.workdir", ("  mem: 16G", "  mem: 16G\n  workdir: '~/a b; c'")),
    ("cluster.python", ("  mem: 16G", "  mem: 16G\n  python: 'python3 && evil'")),
    ("cluster.container", ("  mem: 16G", "  mem: 16G\n  container: '$(evil).sif'")),
    ("cluster.constraint", ("  mem: 16G", "  mem: 16G\n  constraint: 'a;b'")),
    ("jobs.0.name", ("  - name: t4", f"  - name: '{INJECT}'")),
    ("jobs.0.partition", ("    gpu: T4\n", f"    gpu: T4\n    partition: '{INJECT}'\n")),
    ("name", ("name: demo", f"name: '{INJECT}'")),
]


@pytest.mark.parametrize("field,change", STRING_FIELDS, ids=[f for f, _ in STRING_FIELDS])
def test_shell_metacharacters_are_rejected(tmp_path, field, change):
    old, new = change
    assert old in BASE
    errs = errors_of(write(tmp_path, BASE.replace(old, new, 1)))
    hits = [e for e in errs if f"  {field}: " in e]
    assert hits, "\n".join(errs)
    assert "is not a valid" in hits[0] and "are not allowed" in hits[0], hits[0]


def test_env_value_with_metacharacters_is_quoted_not_rejected(tmp_path):
    # Values are data, not code: they are single-quoted in the script.
    from biofleet.render import render_fleet

    p = load_profile(write(tmp_path, BASE.replace("  mem: 16G", "  mem: 16G\n  env: {GREETING: 'a; rm -rf ~'}")))
    script = render_fleet(p, "/tmp/fleet")["t4.sbatch"]
    assert "export GREETING='a; rm -rf ~'" in script


def test_extends_and_include_merge(tmp_path):
    write(tmp_path, "cluster:\n  partition: gpu\n  account: grp\n  setup: [module load cuda]\n", "site.yaml")
    write(tmp_path, BASE, "base.yaml")
    child = write(tmp_path, """\
        extends: base.yaml
        include: [site.yaml]
        name: child
        cluster:
          account: mine
        servers:
          coder:
            gpu_memory_utilization: 0.8
    """, "child.yaml")
    p = load_profile(child)
    assert p.name == "child"
    assert p.cluster.account == "mine"  # profile wins over include
    assert p.cluster.partition == "gpu"  # include wins over base
    assert p.cluster.setup == ("module load cuda",)
    assert p.servers["coder"].gpu_memory_utilization == 0.8
    assert p.servers["coder"].max_model_len == 8192  # merged from base
    # errors in merged values point at the file that set them
    bad = write(tmp_path, "extends: base.yaml\nservers:\n  coder:\n    dtype: fp8\n", "bad.yaml")
    (err,) = errors_of(bad)
    assert err.startswith(f"{bad}:4  servers.coder.dtype:"), err


def test_extends_cycle(tmp_path):
    write(tmp_path, "extends: b.yaml\n", "a.yaml")
    write(tmp_path, "extends: a.yaml\n", "b.yaml")
    (err,) = errors_of(tmp_path / "a.yaml")
    assert "circular extends/include" in err
