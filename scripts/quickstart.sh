#!/usr/bin/env bash
# The main job on the embedded demo world, from a fresh clone:
# install -> build the demo OC20-format dataset -> print its summary.
# Re-running reuses what is already built.  --fast builds the small world (seconds).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
fast=0
for arg in "$@"; do
  case "$arg" in
    --fast) fast=1 ;;
    -h|--help) sed -n '2,4p' "$0"; exit 0 ;;
    *) echo "quickstart.sh: unknown argument '$arg' (use --fast or --help)" >&2; exit 2 ;;
  esac
done
bash "$root/scripts/setup.sh"
py="${SFM_VENV:-$root/.venv}/bin/python"
cd "$root"
if [ "$fast" = 1 ]; then data=data/demo_small; size=--small; else data=data/demo; size=; fi
echo "[quickstart] demo world -> $data"
"$py" -m sfm.data.demo --out "$data" $size
echo "[quickstart] done: OC20-format LMDBs under $root/$data (summary: $data/summary.json)"
