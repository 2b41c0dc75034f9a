#!/usr/bin/env bash
# Create .venv (if missing) and install sfm with its test extras, torch pinned to the CPU wheel.
# Idempotent: a second run only checks that the install is complete.
# SFM_PIP_INDEX_URL adds a wheel index (e.g. PyTorch's CUDA or CPU index); see README.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${SFM_VENV:-$root/.venv}
py=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating $venv"
  "$py" -m venv "$venv"
fi
stamp="$venv/.sfm-installed"
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ] || [ "$root/scripts/constraints.txt" -nt "$stamp" ]; then
  echo "[setup] installing sfm and dependencies into $venv (about 2-3 minutes the first time)"
  extra=()
  [ -n "${SFM_PIP_INDEX_URL:-}" ] && extra+=(--extra-index-url "$SFM_PIP_INDEX_URL")
  "$venv/bin/pip" install -q --disable-pip-version-check "${extra[@]}" \
      -c "$root/scripts/constraints.txt" torch
  "$venv/bin/pip" install -q --disable-pip-version-check "${extra[@]}" \
      -c "$root/scripts/constraints.txt" -e "$root[test]"
  touch "$stamp"
fi
"$venv/bin/python" -c "import sfm, torch; print(f'[setup] sfm {sfm.__version__}, torch {torch.__version__}, python at $venv/bin/python')"
