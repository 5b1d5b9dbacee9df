"""Rendering: golden files of the real templates, bash -n, shellcheck, quoting, no secrets."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from biofleet.profile import load_profile, shipped_profiles
from biofleet.render import quote, quote_path, render_fleet

GOLDEN = Path(__file__).parent / "golden"
FLEET_DIR = "/home/alice/biofleet/{name}"
UPDATE = os.environ.get("BIOFLEET_UPDATE_GOLDEN") == "1"


def rendered(path: Path) -> dict[str, str]:
    p = load_profile(path)
    return render_fleet(p, FLEET_DIR.format(name=p.name))


@pytest.mark.parametrize("path", shipped_profiles(), ids=lambda p: p.stem)
def test_golden(path):
    """The rendered scripts of every shipped profile match the recorded ones.

    If a change to the templates or the renderer is intended, run
    BIOFLEET_UPDATE_GOLDEN=1 pytest tests/test_render.py and review the diff.
    """
    scripts = rendered(path)
    gold_dir = GOLDEN / path.stem
    if UPDATE:
        shutil.rmtree(gold_dir, ignore_errors=True)
        gold_dir.mkdir(parents=True)
        for name, text in scripts.items():
            (gold_dir / name).write_text(text)
    recorded = {p.name: p.read_text() for p in sorted(gold_dir.glob("*.sbatch"))}
    assert recorded, f"no golden files for {path.stem}; run with BIOFLEET_UPDATE_GOLDEN=1"
    assert sorted(recorded) == sorted(scripts)
    for name, text in scripts.items():
        assert text == recorded[name], f"{path.stem}/{name} changed; see the docstring to update"


@pytest.mark.parametrize("path", shipped_profiles(), ids=lambda p: p.stem)
def test_bash_n_and_shellcheck(path, tmp_path):
    assert shutil.which("shellcheck"), "shellcheck missing: run scripts/install-test-deps.sh"
    for name, text in rendered(path).items():
        f = tmp_path / name
        f.write_text(text)
        r = subprocess.run(["bash", "-n", str(f)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        # SC1090/SC1091: setup lines may source files shellcheck cannot follow.
        r = subprocess.run(["shellcheck", "-s", "bash", "-e", "SC1090,SC1091", str(f)], capture_output=True, text=True)
        assert r.returncode == 0, f"{path.stem}/{name}:\n{r.stdout}"


def test_sbatch_directives_sorted_and_complete():
    text = rendered(next(p for p in shipped_profiles() if p.stem == "t4x10"))["t4.sbatch"]
    directives = [line for line in text.splitlines() if line.startswith("#SBATCH ")]
    assert directives == sorted(directives)
    joined = "\n".join(directives)
    assert "#SBATCH --array=0-9" in joined
    assert "#SBATCH --gres=gpu:t4:1" in joined
    assert "#SBATCH --partition=t4flex" in joined
    assert "#SBATCH --output=/home/alice/biofleet/t4x10/logs/t4-%A_%a.out" in joined


def test_no_secret_values_in_scripts(tmp_path):
    """Jobs read secrets from 0600 files at start; nothing secret is in the text or on a command line."""
    for path in shipped_profiles():
        for name, text in rendered(path).items():
            assert "--api-key" not in text  # would show in ps
            if name == "proxy.sbatch":
                fleet_dir = FLEET_DIR.format(name=path.stem)
                assert f"--token-file {fleet_dir}/secrets/proxy.token" in text
                assert f"--backend-key-file {fleet_dir}/secrets/backend.key" in text
            else:
                assert "VLLM_API_KEY=\"$(cat \"$FLEET_DIR/secrets/backend.key\")\"" in text


def test_quoting_filters():
    assert quote("x; rm -rf ~") == "'x; rm -rf ~'"
    assert quote("plain") == "plain"
    assert quote_path("~/biofleet") == '"$HOME/biofleet"'
    assert quote_path("/scratch/$USER/hf") == '"/scratch/$USER/hf"'
    assert quote_path("/a b/$(id)") == "'/a b/$(id)'"


def test_injection_in_model_never_executes(tmp_path):
    """Even a value that bypassed validation is inert: run the rendered launch line for real."""
    from biofleet.render import quote_join

    marker = tmp_path / "pwned"
    argv = ["printf", "%s\\n", f"x; touch {marker}", f"$(touch {marker})", f"`touch {marker}`"]
    line = quote_join(argv)
    out = subprocess.run(["bash", "-c", line], capture_output=True, text=True, check=True).stdout
    assert not marker.exists()
    assert out.splitlines() == argv[2:]


def test_apptainer_golden(tmp_path):
    """With cluster.container every server runs as `apptainer exec --nv` with the fleet and cache dirs bound."""
    p = tmp_path / "sif.yaml"
    p.write_text("extends: t4x4\nname: t4x4-sif\ncluster:\n  container: /shared/images/vllm-0.11.sif\n"
                 "  container_binds: [/scratch/$USER/data]\n")
    scripts = rendered(p)
    text = scripts["t4.sbatch"]
    assert ("apptainer exec --nv --bind \"/home/alice/biofleet/t4x4-sif\" --bind \"/scratch/$USER/hf_cache\" "
            "--bind \"/scratch/$USER/data\" \"/shared/images/vllm-0.11.sif\" \"python3\" -m "
            "vllm.entrypoints.openai.api_server") in text
    gold = GOLDEN / "_apptainer" / "t4.sbatch"
    if UPDATE:
        gold.parent.mkdir(parents=True, exist_ok=True)
        gold.write_text(text)
    assert text == gold.read_text(), "apptainer rendering changed; see test_golden's docstring to update"
