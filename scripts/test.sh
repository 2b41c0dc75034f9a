#!/usr/bin/env bash
# Install (if needed) and run the test suite. Extra arguments go to pytest.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/setup.sh"
cd "$root"
# Each torch process gets one thread: tests start 2-process torchrun jobs on 2 cores.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
venv=${SFM_VENV:-$root/.venv}
# the style holds without effort: lint and format are checked first (settings in pyproject.toml)
"$venv/bin/ruff" check --quiet sfm tests
"$venv/bin/ruff" format --check --quiet sfm tests
exec "$venv/bin/python" -m pytest -q "$@"
