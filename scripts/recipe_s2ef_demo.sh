#!/usr/bin/env bash
# Demo recipe for the energy/force (S2EF) model on 2 CPU cores: train on the demo world, measure it
# next to the baselines, and (optionally) score adsorbate placements with it, EMT as the judge.
#
#   bash scripts/recipe_s2ef_demo.sh                         # train + eval + mlsp (S2EF frames)
#   DATA_KIND=is2re bash scripts/recipe_s2ef_demo.sh         # IS2RE LMDBs alone (energies at pos, pos_relaxed)
#   STAGES="place" GEN_SAMPLES=runs/gen_val_id/samples bash scripts/recipe_s2ef_demo.sh   # placement only
#
# Stages (STAGES, default "train eval mlsp"; "all" = train eval mlsp place; the demo world is built
# first if DEMO_DIR has none): python -m sfm.tasks.recipe_s2ef --help says what each runs and writes
# (RUN_DIR/model.pt, eval_s2ef_val_id.json, eval_is2re.json, mlsp_val_id.json, mlsp_test_id.json,
# place/{pos,random,generated_<sample run>}/scores.json; stage times in RUN_DIR/timings.jsonl).
# GEN_SAMPLES: sample folders, space-separated, e.g. runs/recipe_diff_demo/eval/inpaint_val_id_ode25/samples
# of scripts/recipe_diff_demo.sh (whose MAX_INPUTS should be >= PLACE_SYSTEMS).
#
# Environment (default): DEMO_DIR (data/demo)  RUN_DIR (runs/recipe_s2ef[_is2re])  MODEL_TYPE (tiny)
#   NPROC (2)  TRAIN_STEPS (7000)  BATCH_SIZE (4 per process)  LR (2e-3)  WARMUP (100)  FORCES (direct)
#   DATA_KIND (s2ef)  ENERGY_COEF, FORCE_COEF (train_s2ef.py's: 4, 100)
#   BACKBONE (grid_resolution=10: train_s2ef.py --backbone, fields changed from the preset)
#   TRAIN_FLAGS (extra flags for train_s2ef.py, e.g. "--avg_num_atoms 1")  MLSP_SYSTEMS (100)  MLSP_SPLITS (val_id test_id)
#   RATTLED (0: perturbed frames per system added to s2ef/train, python -m sfm.data.rattle)
#   RESTART_STEPS (1000: a warm restart of the whole model after the training, 0: none)  RESTART_LR (5e-4)
#   CONSERVATIVE_STEPS (0: steps of conservative-force fine-tuning after the direct training)  CONSERVATIVE_LR (5e-4)
#   RELABEL_SYSTEMS (0: training systems the direct model relaxes, labelled by EMT, python -m sfm.relax.relabel)
#   RELABEL_SHIFT (0: A, the adsorbate's start shifted in plane)  RELABEL_MIX (3: training frames per relabelled one)
#   RELABEL_STEPS (1000: fine-tuning on them)  RELABEL_LR (2e-4)
#   ENERGY_FT_STEPS (1000: last, steps of fine-tuning the energy, ENERGY_FT_LOSS (mse) weighted ENERGY_FT_COEF (100),
#   at ENERGY_FT_LR (1e-3), on ENERGY_FT_BRANCH (2) blocks of its own, the forces frozen; 0: the whole model)
#   PLACE_SYSTEMS (40)  PLACE_K (5)  RELAX_STEPS (200)  EXCLUDE (desorbed,surface_changed,intercalated)
# EXCLUDE: anomaly kinds that disqualify a relaxed placement. AdsorbML excludes dissociated ones too,
# but in the EMT world most reference relaxations already count as "dissociated" by fairchem's rule
# (EMT stretches X-H bonds): they are counted and reported, not excluded, by default here.
# The defaults live in sfm/tasks/recipe_s2ef.py; a variable set here becomes its flag (TRAIN_STEPS -> --train_steps).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
flags=()
for var in STAGES DATA_KIND DEMO_DIR RUN_DIR MODEL_TYPE NPROC TRAIN_STEPS BATCH_SIZE LR WARMUP FORCES ENERGY_COEF \
           FORCE_COEF BACKBONE TRAIN_FLAGS RATTLED RESTART_STEPS RESTART_LR CONSERVATIVE_STEPS CONSERVATIVE_LR RELABEL_SYSTEMS RELABEL_SHIFT RELABEL_MIX RELABEL_STEPS RELABEL_LR \
           ENERGY_FT_STEPS ENERGY_FT_COEF ENERGY_FT_LR ENERGY_FT_BRANCH ENERGY_FT_LOSS MLSP_SYSTEMS MLSP_SPLITS PLACE_SYSTEMS PLACE_K RELAX_STEPS EXCLUDE GEN_SAMPLES; do
  [ -n "${!var:-}" ] && flags+=("--${var,,}=${!var}")
done
cd "$root"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # threads spin on shared cores: 20x the CPU time for 2 threads under load
exec "${SFM_VENV:-$root/.venv}/bin/python" -m sfm.tasks.recipe_s2ef "${flags[@]}" "$@"
