#!/usr/bin/env bash
# The diffusion quality bar on the demo world, on CPU: train, sample, score against baselines.
#
#   bash scripts/recipe_diff_demo.sh                       # all stages: data train eval
#   STAGES=eval bash scripts/recipe_diff_demo.sh           # re-score an existing RUN_DIR
#
# Stages (STAGES, default "data train eval"; also lowenergy, tune, samplers, dense): python -m
# sfm.tasks.recipe_diff --help says what each runs and writes. Default budget: tiny, 2 x 8 structures,
# 1800 steps, about 0.55 CPU-s per step and process, i.e. under 30 minutes on 2 idle cores
# (RUN_DIR/timings.jsonl records wall and CPU time of every stage and sampling run). Sampling CPU cost (tiny): about 0.025 CPU-s
# per structure and network call.
#
# Environment (default): DEMO_DIR (data/demo)  RUN_DIR (runs/recipe_diff_demo)  MODEL_TYPE (tiny)
#   BACKBONE (grid_resolution=10: train_diff.py --backbone, fields changed from the preset; grid_resolution=18 is the preset's)
#   NPROC (2)  STEPS (1800)  BATCH_SIZE (8)  LR (1e-3)  WARMUP (100)  SEED (1)  EMA_DECAY (0.995)
#   MODE_PROBS (csp=0.15,lattice_given=0.15,inpaint=0.7: the training mix of conditioning modes)
#   PLACEMENT_PROB (0.5: inpaint structures trained on the path from their placement, at DENOISE_T, to pos_relaxed)
#   MAX_INPUTS (50)  BAR_INPUTS (100)  NUM_SAMPLES (5)  ODE_STEPS (25)  PC_STEPS (100)  PC_SAMPLES (1)  PC_SPLITS (val_id)
#   SAMPLER_INPUTS (100)  SAMPLER_SAMPLES (3)  CSP_INPUTS (25)  CSP_SAMPLES (10)  DENOISE_T (0.55)  REFINE_T (0.5)  REFINE_STEPS (10)  GEN_BATCH (25)
#   SPLITS (val_id val_ood_ads val_ood_cat)
#   DENSE_TRAIN_DIR (DEMO_DIR + _dense_train)  DENSE_TRAIN_SYSTEMS (150)  BEST (4)  DENSE_SPLITS (val_id)
#   DENSE_NOISE_SAMPLES (5; 0: the dense stage samples no placements from noise)
#   RANK_CHECKPOINT (none; an S2EF model.pt: the dense stage also scores each set in that model's order)
# The defaults live in sfm/tasks/recipe_diff.py; a variable set here becomes its flag (STEPS -> --steps).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
flags=()
for var in STAGES DEMO_DIR RUN_DIR MODEL_TYPE BACKBONE NPROC STEPS BATCH_SIZE LR WARMUP SEED EMA_DECAY MODE_PROBS PLACEMENT_PROB \
           MAX_INPUTS BAR_INPUTS NUM_SAMPLES ODE_STEPS PC_STEPS PC_SAMPLES PC_SPLITS SAMPLER_INPUTS SAMPLER_SAMPLES \
           CSP_INPUTS CSP_SAMPLES DENOISE_T REFINE_T REFINE_STEPS GEN_BATCH SPLITS DENSE_TRAIN_DIR DENSE_TRAIN_SYSTEMS \
           BEST DENSE_SPLITS DENSE_NOISE_SAMPLES RANK_CHECKPOINT; do
  [ -n "${!var:-}" ] && flags+=("--${var,,}=${!var}")
done
cd "$root"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec "${SFM_VENV:-$root/.venv}/bin/python" -m sfm.tasks.recipe_diff "${flags[@]}" "$@"
