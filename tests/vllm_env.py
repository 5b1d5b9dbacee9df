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
