#!/usr/bin/env bash
# The main job on the embedded demo world, from a fresh clone, on CPU:
#   install -> demo world -> train diffusion + S2EF -> sample (inpaint, csp; few-step ode)
#   -> score and relax (S2EF model, EMT judge) -> report (RUN_DIR/report/report.md).
#   bash scripts/quickstart.sh           # under 60 minutes on 2 idle cores, runs/quickstart
#   bash scripts/quickstart.sh --fast    # a first look in under 10 minutes, runs/quickstart_fast
# Re-running reuses what is done (each stage skips when its output exists; sampling resumes).
# Measured from a fresh clone on 2 idle CPU cores (pip cache warm): the full one 33 min (setup 0.7,
# data 5.8, diffusion 11.1, S2EF 7.5, S2EF eval 0.3, sampling 2.1, scoring 5.5, report 0.2);
# --fast: 3.9 min (setup 0.7, data 0.2, diffusion 1.0, S2EF 0.75, sampling 0.5, scoring 0.45, report 0.1).
# Environment: RUN_DIR, DEMO_DIR, NPROC (2), DIFF_STEPS, S2EF_STEPS, MAX_INPUTS, NUM_SAMPLES,
#   ODE_STEPS, DENOISE_STEPS, CSP_INPUTS, RELAX_STEPS (defaults depend on --fast; see below).
# Inpaint runs two ways: from noise (inpaint_ode) and from the initial placement taken as a noisy
# structure at t=0.55, the state the model learns it at (inpaint_denoise: --t_start 0.55 --no_renoise;
# training --placement_prob 0.5 --placement_t 0.55, see scripts/recipe_diff_demo.sh).
set -Eeuo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
fast=0
for arg in "$@"; do
  case "$arg" in
    --fast) fast=1 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "quickstart.sh: unknown argument '$arg' (use --fast or --help)" >&2; exit 2 ;;
  esac
done
cd "$root"
py="${SFM_VENV:-$root/.venv}/bin/python"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
NPROC=${NPROC:-2}
if [ "$fast" = 1 ]; then
  RUN_DIR=${RUN_DIR:-runs/quickstart_fast}; DEMO_DIR=${DEMO_DIR:-data/demo_small}; size=(--small)
  DIFF_STEPS=${DIFF_STEPS:-150}; S2EF_STEPS=${S2EF_STEPS:-150}; MAX_INPUTS=${MAX_INPUTS:-6}
  NUM_SAMPLES=${NUM_SAMPLES:-2}; ODE_STEPS=${ODE_STEPS:-10}; CSP_INPUTS=${CSP_INPUTS:-3}
  RELAX_STEPS=${RELAX_STEPS:-60}; VAL_MAX=${VAL_MAX:-64}; DENOISE_STEPS=${DENOISE_STEPS:-5}
else
  RUN_DIR=${RUN_DIR:-runs/quickstart}; DEMO_DIR=${DEMO_DIR:-data/demo}; size=()
  DIFF_STEPS=${DIFF_STEPS:-900}; S2EF_STEPS=${S2EF_STEPS:-1500}; MAX_INPUTS=${MAX_INPUTS:-25}
  NUM_SAMPLES=${NUM_SAMPLES:-5}; ODE_STEPS=${ODE_STEPS:-25}; CSP_INPUTS=${CSP_INPUTS:-10}
  RELAX_STEPS=${RELAX_STEPS:-150}; VAL_MAX=${VAL_MAX:-300}; DENOISE_STEPS=${DENOISE_STEPS:-10}
fi
mkdir -p "$RUN_DIR"
log="$RUN_DIR/timings.txt"
stage=setup
trap 'echo "[quickstart] FAILED in stage \"$stage\" (see the messages above; rerun to resume)" >&2' ERR
step() { stage=$1; worked=0; SECONDS=0; echo; echo "[quickstart] ==== $1: $2"; }
done_() { [ "${1:-$worked}" = 0 ] || echo "[quickstart] $stage: ${SECONDS} s" | tee -a "$log"; }  # only work done
skip() { echo "[quickstart] $stage: reusing $1"; }
loads() {  # loads CKPT: a reused checkpoint must load with this code (else: stale, made by an older version)
  "$py" -c "import sys, sfm; sfm.load_checkpoint(sys.argv[1])" "$1" 2>/dev/null && return
  echo "[quickstart] $1 does not load with this version of sfm (made by an older one?): delete $RUN_DIR" \
       "(or RUN_DIR=another folder) and rerun" >&2
  return 1
}

step setup "install what is missing"
bash "$root/scripts/setup.sh"

step data "demo world -> $DEMO_DIR"
for b in "$(dirname "$DEMO_DIR")/.$(basename "$DEMO_DIR").building-"*; do  # another build of it running: wait
  pid=${b##*-}
  while [ -d "$b" ] && [ ! -f "$DEMO_DIR/summary.json" ] && kill -0 "$pid" 2>/dev/null; do
    echo "[quickstart] waiting for the build of $DEMO_DIR by process $pid ($(du -sh "$b" 2>/dev/null | cut -f1) so far)"
    sleep 60
  done
done
if [ -f "$DEMO_DIR/summary.json" ]; then skip "$DEMO_DIR"; else
  "$py" -m sfm.data.demo --out "$DEMO_DIR" --workers "$NPROC" "${size[@]}"; done_ 1
fi

step train_diff "diffusion model (tiny, $DIFF_STEPS steps, $NPROC processes) -> $RUN_DIR/diff/model.pt"
if [ -f "$RUN_DIR/diff/model.pt" ]; then loads "$RUN_DIR/diff/model.pt"; skip "$RUN_DIR/diff/model.pt"; else
  rm -rf "$RUN_DIR/diff"
  GPUS="$NPROC" TASK=diff DATA_DIR="$DEMO_DIR/is2re" SAVE_DIR="$RUN_DIR/diff" MODEL_TYPE=tiny \
    STRATEGY=$([ "$NPROC" -gt 1 ] && echo DDP || echo Single) BATCH_SIZE=8 VAL_BATCH_SIZE=16 LR=1e-3 \
    WARMUP=$((DIFF_STEPS / 10)) WORKERS=0 LOG_INTERVAL=$((DIFF_STEPS / 30 + 1)) SAVE_INTERVAL=1000000 SEED=1 BF16=0 \
    bash scripts/train_oc20.sh --total_num_steps "$DIFF_STEPS" --mode_probs csp=0.15,lattice_given=0.15,inpaint=0.7 \
    --placement_prob 0.5 --placement_t 0.55
  done_ 1
fi

step train_s2ef "S2EF model (tiny, $S2EF_STEPS steps) -> $RUN_DIR/s2ef/model.pt"
if [ -f "$RUN_DIR/s2ef/model.pt" ]; then loads "$RUN_DIR/s2ef/model.pt"; skip "$RUN_DIR/s2ef/model.pt"; else
  rm -rf "$RUN_DIR/s2ef"
  NPROC="$NPROC" DEMO_DIR="$DEMO_DIR" DATA_DIR="$DEMO_DIR/s2ef" VALID_DATA= SAVE_DIR="$RUN_DIR/s2ef" MODEL_TYPE=tiny \
    STRATEGY=$([ "$NPROC" -gt 1 ] && echo DDP || echo Single) BATCH_SIZE=4 LR=1e-3 WARMUP=$((S2EF_STEPS / 15)) \
    LOG_INTERVAL=$((S2EF_STEPS / 30 + 1)) SAVE_INTERVAL=1000000 BF16=0 \
    bash scripts/train_s2ef.sh --total_num_steps "$S2EF_STEPS" --ema_decay 0.99
  done_ 1
fi

step eval_s2ef "S2EF model vs baselines on $DEMO_DIR/s2ef/val_id -> $RUN_DIR/s2ef/eval_s2ef_val_id.json"
if [ -f "$RUN_DIR/s2ef/eval_s2ef_val_id.json" ]; then skip "$RUN_DIR/s2ef/eval_s2ef_val_id.json"; else
  "$py" -m sfm.tasks.eval_s2ef --checkpoint "$RUN_DIR/s2ef/model.pt" --data_path "$DEMO_DIR/s2ef/val_id" \
    --data_kind s2ef --max_structures "$VAL_MAX" --json "$RUN_DIR/s2ef/eval_s2ef_val_id.json.tmp" --batch_size 16
  mv "$RUN_DIR/s2ef/eval_s2ef_val_id.json.tmp" "$RUN_DIR/s2ef/eval_s2ef_val_id.json"
  done_ 1
fi

val=$DEMO_DIR/is2re/val_id
gen() {  # gen NAME flags...: one sampling run into RUN_DIR/gen/NAME (skipped when its metrics exist; resumes)
  local name=$1; shift
  if [ -f "$RUN_DIR/gen/$name/metrics.json" ]; then skip "$RUN_DIR/gen/$name"; return; fi
  worked=1
  NPROC="$NPROC" bash scripts/gen_oc20.sh --save_dir "$RUN_DIR/gen/$name" --data_path "$val" --seed 0 \
    --batch_size 16 "$@"
}
step gen "sample the held-out split $val (ode $ODE_STEPS steps, $NUM_SAMPLES samples per system; baselines)"
ck=(--checkpoint "$RUN_DIR/diff/model.pt")
gen inpaint_ode "${ck[@]}" --mode inpaint --sampler ode --steps "$ODE_STEPS" --max_inputs "$MAX_INPUTS" --num_samples "$NUM_SAMPLES"
gen inpaint_denoise "${ck[@]}" --mode inpaint --sampler ode --steps "$DENOISE_STEPS" --t_start 0.55 --no_renoise \
  --max_inputs "$MAX_INPUTS" --num_samples 1
gen inpaint_initial --mode inpaint --sampler baseline_initial --max_inputs "$MAX_INPUTS" --num_samples 1
gen inpaint_random --mode inpaint --sampler baseline_random --max_inputs "$MAX_INPUTS" --num_samples "$NUM_SAMPLES"
gen csp_ode "${ck[@]}" --mode csp --sampler ode --steps "$ODE_STEPS" --max_inputs "$CSP_INPUTS" --num_samples "$NUM_SAMPLES"
gen csp_random --mode csp --sampler baseline_random --lattice_data "$DEMO_DIR/is2re/train" --max_inputs "$CSP_INPUTS" \
  --num_samples "$NUM_SAMPLES"
"$py" -m sfm.tasks.gen_table "$RUN_DIR"/gen/*/metrics.json --out "$RUN_DIR/gen/quality.md"
done_

step score "relax and score with the S2EF model ($RELAX_STEPS FIRE steps), EMT judge"
for name in inpaint_ode inpaint_denoise inpaint_initial inpaint_random csp_ode; do
  out=$RUN_DIR/score/$name
  if [ -f "$out/scores.json" ]; then skip "$out"; continue; fi
  echo "[quickstart] score $name"
  worked=1
  CHECKPOINT="$RUN_DIR/s2ef/model.pt" SAMPLES="$RUN_DIR/gen/$name/samples" REFERENCE="$val" OUT="$out" \
    STEPS="$RELAX_STEPS" JUDGE=emt bash scripts/score_oc20.sh --k 1 "$NUM_SAMPLES" --exclude desorbed,surface_changed,intercalated
done
done_

step report "report -> $RUN_DIR/report/report.md"
"$py" -m sfm.tasks.report --run_dir "$RUN_DIR" --demo_dir "$DEMO_DIR" --val_max "$VAL_MAX"
done_ 1
echo
echo "[quickstart] done. Everything is under $root/$RUN_DIR:"
echo "  diffusion model  $RUN_DIR/diff/model.pt      S2EF model  $RUN_DIR/s2ef/model.pt"
echo "  samples          $RUN_DIR/gen/*/samples       scores      $RUN_DIR/score/*/scores.json"
echo "  report           $RUN_DIR/report/report.md  (+ report.json, *.png)   timings  $log"
