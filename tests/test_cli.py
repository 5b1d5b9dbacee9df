"""The CLI as a user meets it: help, exit codes, JSON shapes, errors without tracebacks."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from biofleet.cli.main import app

runner = CliRunner()
BIOFLEET = [sys.executable, "-m", "biofleet.cli.main"]


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The real entry point in a subprocess: exit codes and stderr exactly as a user sees them."""
    return subprocess.run([*BIOFLEET, *args], capture_output=True, text=True, env={**os.environ, **(env or {})})


GROUPS = (["profiles"], ["testcluster"])
COMMANDS = [["profiles", "list"], ["profiles", "show"], ["fit-check"], ["render"], ["up"], ["status"], ["down"],
            ["logs"], ["register"], ["unregister"], ["token"], ["proxy"], ["scrape-config"], ["prefetch"],
            ["cpu-models"], ["testcluster", "start"], ["testcluster", "stop"], ["testcluster", "status"]]


def _click_command(words: list[str]):
    import typer

    cmd = typer.main.get_command(app)
    for w in words:
        cmd = cmd.commands[w]
    return cmd


def _examples(words: list[str]) -> list[list[str]]:
    """The example command lines in a command's help text that run this very command."""
    import shlex

    text = _click_command(words).help or ""
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        m = re.match(r"^\s*(?:Examples?:\s*)?(biofleet .*)$", line)
        argv = shlex.split(m.group(1), comments=True) if m else []
        if "|" in argv:  # `biofleet ... | jq ...`: the command is what comes before the pipe
            argv = argv[:argv.index("|")]
        if argv[1:1 + len(words)] == words:
            out.append(argv[1:])
    return out


@pytest.mark.parametrize("cmd", [[], *GROUPS, *COMMANDS], ids=lambda c: " ".join(c) or "biofleet")
def test_every_command_has_help(cmd):
    r = runner.invoke(app, [*cmd, "--help"])
    assert r.exit_code == 0, r.output
    assert "Usage" in r.output and "Options" in r.output


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c))
def test_every_command_has_an_example_that_parses(cmd):
    """Each command's help shows at least one `biofleet <this command> ...` line, and its options exist:
    the example parses (``--help`` after it stops before anything runs; an unknown option fails first)."""
    examples = _examples(cmd)
    assert examples, f"no 'biofleet {' '.join(cmd)} ...' example in its help"
    for argv in examples:
        r = runner.invoke(app, [*argv, "--help"])
        assert r.exit_code == 0, f"example {argv} does not parse: {r.output}"


def _documented_command_lines() -> list[tuple[str, list[str]]]:
    """Every `biofleet ...` command line README.md and docs/*.md show (code blocks, `$(...)` inside them and inline
    code), as (where, argv without "biofleet"); a `[--flag]` is taken with the flag."""
    import shlex

    root = Path(__file__).resolve().parent.parent
    out = []
    for doc in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        text = doc.read_text()
        blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
        lines = [ln for b in blocks for ln in b.replace("\\\n", " ").splitlines()]
        lines += re.findall(r"(?<!`)`(biofleet [^`]+)`", re.sub(r"^```.*?^```", "", text, flags=re.S | re.M))
        for line in lines:
            found = re.findall(r"\$\((biofleet [^)]*)\)", line)  # curl ... "$(biofleet token)"
            found += [p.strip() for p in re.sub(r"\$\([^)]*\)", "", line).split("&&")
                      if p.strip().startswith("biofleet ")]
            for cmd in found:
                words = shlex.split(cmd.replace("[", "").replace("]", ""), comments=True)
                if len(words) > 1 and re.fullmatch(r"[a-z-]+", words[1]):
                    out.append((f"{doc.name}: {cmd}", words[1:]))
    return out


def test_every_command_line_the_docs_show_parses():
    """A command README.md or docs/ shows exists and takes the options shown (parsed up to `--help`, so nothing
    runs): a renamed option or command fails here, not in a user's terminal."""
    seen = _documented_command_lines()
    assert len(seen) >= 25 and {argv[0] for _, argv in seen} >= {
        "fit-check", "render", "up", "status", "down", "logs", "token", "register", "proxy", "prefetch",
        "scrape-config", "cpu-models", "testcluster", "profiles"}, seen
    for where, argv in seen:
        r = runner.invoke(app, [*argv, "--help"])
        assert r.exit_code == 0 and "Usage" in r.output, f"{where}: {r.output}"


def test_profiles_list_and_show():
    r = runner.invoke(app, ["profiles", "list", "--json"])
    rows = {x["name"]: x for x in json.loads(r.stdout)}
    assert {"t4x10", "h100-t4x2", "l4x4-t4x4", "h100x2", "t4x4", "cpu-demo"} <= set(rows)
    assert rows["t4x10"]["gpus"] == {"T4": 10} and rows["t4x10"]["servers"] == 11
    assert rows["t4x10"]["usd_per_month"] > 0
    r = runner.invoke(app, ["profiles", "show", "t4x10", "--json"])
    d = json.loads(r.stdout)
    coders = [s for s in d["servers"] if s["served_name"] == "coder"]
    assert [c["node"] for c in coders] == ["t4[0]", "t4[1]"]
    assert coders[0]["quantization"] == "awq" and coders[0]["dtype"] == "float16"
    assert d["tasks"]["statistics"] == "math"
    r = runner.invoke(app, ["profiles", "show", "t4x10"])
    assert r.exit_code == 0 and "coder-0" in r.stdout


def test_fit_check_profile_json_and_exit_codes(tmp_path):
    r = run("fit-check", "--profile", "t4x10", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["ok"] is True
    s = d["servers"][0]
    for key in ("name", "ok", "weights_gib", "overhead_gib", "kv_cache_gib", "kv_cache_tokens", "max_concurrency", "findings"):
        assert key in s
    # a plan that would fail: exit 1, with the reason and a fix
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: t4x10\nname: bad\nservers:\n  coder: {model: Qwen/Qwen2.5-Coder-7B-Instruct}\n")
    r = run("fit-check", "--profile", str(bad), "--json")
    assert r.returncode == 1
    findings = [f for s in json.loads(r.stdout)["servers"] for f in s["findings"] if f["severity"] == "error"]
    assert any(f["code"] == "awq-checkpoint-mismatch" and "Qwen2.5-Coder-7B-Instruct-AWQ" in f["fix"] for f in findings)
    # an invalid profile: exit 2, file:line, no traceback
    broken = tmp_path / "broken.yaml"
    broken.write_text("extends: t4x10\nname: broken\nservers:\n  coder: {gpu_memory_utilization: 2}\n")
    r = run("fit-check", "--profile", str(broken))
    assert r.returncode == 2
    assert f"{broken}:4  servers.coder.gpu_memory_utilization: Input should be less than or equal to 1" in r.stderr
    assert "Traceback" not in r.stderr
    r = run("fit-check", "--profile", str(broken), env={"BIOFLEET_DEBUG": "1"})
    assert "Traceback" in r.stderr


def test_fit_check_single_server():
    r = run("fit-check", "--model", "Qwen/Qwen2.5-Coder-7B-Instruct", "--gpu", "T4", "--max-model-len", "8192",
            "--gpu-memory-utilization", "0.85", "--dtype", "float16", "--json")
    assert r.returncode == 1  # fp16 7B weights do not fit a T4
    d = json.loads(r.stdout)
    assert d["ok"] is False and d["servers"][0]["weights_gib"] > 14
    r = run("fit-check", "--model", "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ", "--gpu", "T4", "--quantization", "awq",
            "--dtype", "float16", "--max-model-len", "8192", "--gpu-memory-utilization", "0.85", "--json")
    assert r.returncode == 0, r.stdout
    # bf16 on a T4 is refused with the fix
    r = run("fit-check", "--model", "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ", "--gpu", "T4", "--dtype", "bfloat16", "--json")
    assert r.returncode == 1
    assert any(f["code"] == "bf16-unsupported" for f in json.loads(r.stdout)["servers"][0]["findings"])
    # a card the catalogue lacks
    r = run("fit-check", "--model", "meta-llama/Llama-3.2-1B-Instruct", "--gpu-memory-gib", "12",
            "--compute-capability", "8.6", "--json")
    assert r.returncode == 0, r.stdout
    # unknown names: exit 2 with suggestions
    r = run("fit-check", "--model", "Qwen/Qwen2.5-Codr-7B-Instruct", "--gpu", "T4")
    assert r.returncode == 2 and "Qwen/Qwen2.5-Coder-7B-Instruct" in r.stderr
    r = run("fit-check", "--model", "Qwen/Qwen2.5-Coder-7B-Instruct", "--gpu", "T5")
    assert r.returncode == 2 and "T4" in r.stderr


def test_fit_check_local_config_dir(tmp_path):
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048,
           "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
           "intermediate_size": 8192, "vocab_size": 128256, "max_position_embeddings": 8192,
           "torch_dtype": "bfloat16"}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    r = run("fit-check", "--model", str(tmp_path), "--gpu", "L4", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["servers"][0]["kv_cache_tokens"] > 0


def test_seed_h100_plan_is_refused(tmp_path):
    """The seed's Path A H100 plan (0.20/0.21/0.19/0.19 of an 80 GB card) cannot start."""
    p = tmp_path / "seed.yaml"
    p.write_text(
        "extends: h100-t4x2\nname: seed-a\nservers:\n"
        "  coder: {gpu_memory_utilization: 0.20}\n  orchestrator: {gpu_memory_utilization: 0.21}\n"
        "  math: {gpu_memory_utilization: 0.19}\n  bio: {gpu_memory_utilization: 0.19}\n"
    )
    r = run("fit-check", "--profile", str(p), "--json")
    assert r.returncode == 1
    servers = {s["name"]: s for s in json.loads(r.stdout)["servers"]}
    cannot_start = {n for n in ("coder", "orchestrator", "math", "bio") if not servers[n]["ok"]}
    assert {"coder", "orchestrator", "math"} <= cannot_start
    r = run("fit-check", "--profile", str(p))
    assert "would fail" in r.stdout and "fix:" in r.stdout


def test_render_writes_scripts(tmp_path):
    r = runner.invoke(app, ["render", "--profile", "t4x10", "--out", str(tmp_path), "--json"])
    assert r.exit_code == 0, r.output
    names = sorted(Path(p).name for p in json.loads(r.stdout)["scripts"])
    assert names == ["proxy.sbatch", "t4.sbatch"]
    assert os.access(tmp_path / "t4.sbatch", os.X_OK)


def test_render_into_a_place_it_cannot_write_says_so(tmp_path):
    # found by a sweep of the commands: an --out that is a file (or under /proc) was an unexpected FileNotFoundError
    (tmp_path / "f").write_text("")
    r = run("render", "--profile", "t4x10", "--out", str(tmp_path / "f"))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "BIOFLEET_DEBUG" not in r.stderr, r.stderr
    assert f"cannot write the scripts into {tmp_path / 'f'}" in r.stderr and "--out" in r.stderr


def test_usage_error_exit_code():
    r = run("fit-check", "--gpu-memory-utilization", "lots")
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_installed_wheel_finds_profiles_and_templates(tmp_path):
    """A wheel (not an editable install) carries the templates and profiles."""
    repo = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path / "dist"), str(repo)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (wheel,) = (tmp_path / "dist").glob("biofleet-*.whl")
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert "biofleet/_data/templates/job.sbatch.j2" in names
    assert "biofleet/_data/profiles/t4x10.yaml" in names
    assert "biofleet/_data/templates/jobkit.sh.j2" in names and "biofleet/clusterside/jobkit.py" in names
    # The proxy's fast loop and parser, and cpu-models' tokenizer, come with a plain `pip install .`.
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    plain = [line for line in meta.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]
    for pkg in ("uvloop", "httptools", "tokenizers"):
        assert any(line.split()[1].startswith(pkg) for line in plain), (pkg, plain)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    code = ("import biofleet, sys; from biofleet.render import render_fleet; from biofleet.profile import load_profile;"
            "assert biofleet.__file__.startswith(sys.argv[1]), biofleet.__file__;"
            "print(len(render_fleet(load_profile('t4x10'), '/x/t4x10')))")
    r = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(target)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "2"


def test_the_fit_check_path_does_not_import_httpx():
    # profile -> proxy config -> the runner protocol: the HTTP client is for commands that talk to servers;
    # importing it costs the fit-check ~0.1 s (benchmarks/cli_startup.py, session 21)
    code = "import sys, biofleet.profile, biofleet.fitcheck; print('httpx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False", out


def test_logs_refuses_a_negative_line_count():
    r = CliRunner().invoke(app, ["logs", "coder-0", "--lines", "-3"])
    assert r.exit_code == 2 and "--lines" in r.output, r.output


def test_a_bad_ssh_target_is_a_usage_error_that_names_the_part():
    """--ssh user@host[:port] is checked as a profile's ssh: settings are (found by fuzzing: a pydantic traceback,
    which echoed a 'user:password' user part); the user part is never printed."""
    from biofleet.errors import FleetError, ProfileError

    for target, said in (("me:s3cret@login", "--ssh: user: not a valid user name"),
                         ("/proc/self/mem", "--ssh: host: '/proc/self/mem' is not a valid host name"),
                         ("me@login:ssh", "the port must be a number")):
        r = runner.invoke(app, ["token", "--profile", "cpu-demo", "--ssh", target])
        assert isinstance(r.exception, (ProfileError, FleetError)), r.exception
        assert said in str(r.exception) and "s3cret" not in str(r.exception), str(r.exception)
        if isinstance(r.exception, ProfileError):
            assert r.exception.exit_code == 2
