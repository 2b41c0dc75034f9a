#!/usr/bin/env bash
# The main job on the embedded demo world, from a fresh clone, on CPU:
#   install -> demo world -> the recipes' models (low-energy set, diffusion; S2EF) -> sample (inpaint, csp; few-step ode)
#   -> score and relax (S2EF model, EMT judge) -> report (RUN_DIR/report/report.md).
#   bash scripts/quickstart.sh           # about 60 minutes on 2 idle cores, runs/quickstart
#   bash scripts/quickstart.sh --fast    # a first look in about 10 minutes, runs/quickstart_fast
# Re-running reuses what is done (each stage skips when its output exists; sampling resumes).
# The full one trains with the recipes' stages (recipe_diff lowenergy + train, recipe_s2ef train);
# its stages' measured times on 2 idle cores: setup 0.7, data 5.8, low-energy set 9.4, diffusion
# 11.1, S2EF 23.6, S2EF eval 0.3, sampling 2.1, scoring 5.5, report 0.2 min (README, quickstart).
# Environment: RUN_DIR, DEMO_DIR, NPROC (2), DENSE_TRAIN_SYSTEMS, DIFF_STEPS, S2EF_STEPS, MAX_INPUTS, NUM_SAMPLES, ODE_STEPS,
#   DENOISE_STEPS, CSP_INPUTS, RELAX_STEPS, VAL_MAX, STAGES (default all; defaults depend on --fast).
# The stages run in Python (python -m sfm.tasks.quickstart --help: stages, flags, defaults), stage
# times in RUN_DIR/timings.jsonl; this script installs first, then hands over.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
flags=()
for arg in "$@"; do
  case "$arg" in
    --fast) flags+=(--fast) ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "quickstart.sh: unknown argument '$arg' (use --fast or --help)" >&2; exit 2 ;;
  esac
done
for var in RUN_DIR DEMO_DIR NPROC DENSE_TRAIN_SYSTEMS DIFF_STEPS S2EF_STEPS MAX_INPUTS NUM_SAMPLES ODE_STEPS DENOISE_STEPS CSP_INPUTS \
           RELAX_STEPS VAL_MAX STAGES; do
  [ -n "${!var:-}" ] && flags+=("--${var,,}=${!var}")  # VAR=value -> --var=value (may start with --)
done
cd "$root"
echo "[quickstart] ==== setup: install what is missing"
SECONDS=0
bash "$root/scripts/setup.sh"
echo "[quickstart] setup: ${SECONDS} s"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec "${SFM_VENV:-$root/.venv}/bin/python" -m sfm.tasks.quickstart "${flags[@]}"
