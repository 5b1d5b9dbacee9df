#!/usr/bin/env bash
# Install everything the tests need (Debian packages for SLURM, slurmdbd, MariaDB, munge, sshd,
# shellcheck, wrk, nginx; a real CPU vLLM in its own venv; the package with its test extras),
# check types and lint, and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
bash scripts/install-vllm.sh 2> >(grep -v "^WARNING: Location" >&2)
python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'
python3 -m ruff check biofleet tests benchmarks
python3 -m mypy
exec python3 -m pytest -q -p no:cacheprovider "$@"
