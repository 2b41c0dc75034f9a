#!/usr/bin/env bash
# The diffusion quality bar on the demo world, on CPU: train, sample, score against baselines.
#
#   bash scripts/recipe_diff_demo.sh                       # all stages: data train eval
#   STAGES=eval bash scripts/recipe_diff_demo.sh           # re-score an existing RUN_DIR
#
# Stages (STAGES, default "data train eval"):
#   data   build the demo world at DEMO_DIR if missing (python -m sfm.data.demo --out DEMO_DIR)
#   lowenergy (optional; the training set toward low energy, used by train when given) the dense training
#          set DENSE_TRAIN_DIR (DENSE_TRAIN_SYSTEMS train systems, 8 heuristic + 8 random sites each, EMT-relaxed;
#          built if missing, reused otherwise) and from it RUN_DIR/train_set/data.lmdb: every placement paired
#          with the nearest of its system's BEST lowest valid configurations within 0.1 eV of the minimum
#          (python -m sfm.data.dense_targets low_energy), which train then uses instead of is2re/train.
#   train  torchrun, NPROC processes (DDP, OMP_NUM_THREADS=1 each), model MODEL_TYPE, STEPS optimizer
#          steps of BATCH_SIZE structures per process, on DEMO_DIR/is2re/train (validation on val_id), or on
#          RUN_DIR/train_set when the lowenergy stage wrote it.
#          Default budget: tiny, 2 x 8 structures, 1800 steps: about 0.55 CPU-s per step and process,
#          i.e. under 30 minutes on 2 idle cores (timings.txt records wall and CPU time).
#   tune   (optional) REFINE_STEPS on test_id: the denoise ODE with 1, 2, 3, 5, 10, 20 steps next to the
#          initial placement, RUN_DIR/tune.md
#   samplers (optional) few-step vs reference, inpaint on the first SAMPLER_INPUTS val_id systems,
#          SAMPLER_SAMPLES samples each, seed 1, RUN_DIR/samplers.md. From noise: pc PC_STEPS steps
#          (the reference), pc 25 steps, ancestral 50 steps (pc without corrector), ode 25 steps.
#          From the placement (--t_start DENOISE_T --no_renoise): pc at the reference's step size
#          (PC_STEPS * DENOISE_T steps), ode REFINE_STEPS steps, ode 1 step (one network call).
#   dense  (optional) placement success against the dense minimum (python -m sfm.eval.success) on each split
#          of DENSE_SPLITS of DEMO_DIR/is2re_dense, next to its heuristic and random sites: from noise (inpaint,
#          ode ODE_STEPS steps, DENSE_NOISE_SAMPLES per system), and every heuristic site denoised
#          (--t_start DENOISE_T --no_renoise, one sample each) with ode REFINE_STEPS steps and ode 5 steps
#          (9 network calls). Samples in RUN_DIR/dense/SPLIT/*, table RUN_DIR/dense_SPLIT.md (+ .json).
#   eval   sfm/tasks/gen.py on RUN_DIR/train/model.pt, first MAX_INPUTS systems of each split:
#          inpaint (slab = tags 0,1 given at its initial pos, adsorbate generated) on val_id,
#          val_ood_ads, val_ood_cat; csp (lattice and all atoms generated) on val_id. Samplers:
#          ode (ODE_STEPS Heun steps = 2*ODE_STEPS-1 network calls), pc (PC_STEPS predictor-corrector
#          steps = 2*PC_STEPS calls; the reference, shortened from 1000 for CPU time),
#          baseline_initial (pos: the placement the relaxation started from), baseline_random
#          (uniform fractional coordinates; csp lattices drawn from the training cells); the
#          denoise / initial / random runs (the inpaint bar, cheap) take the first BAR_INPUTS systems.
#          Inpaint also starts from the initial placement (the fair comparison with it: it knows
#          the site), two ways: "denoise" takes the placement itself as the noisy state at
#          DENOISE_T (--no_renoise; deterministic, 1 sample; the state the model was trained on,
#          PLACEMENT_PROB) and runs REFINE_STEPS ode steps; "refine" noises it to REFINE_T first
#          (SDEdit), NUM_SAMPLES samples.
#          NUM_SAMPLES per system (metrics at 1 and at NUM_SAMPLES); pc (PC_SAMPLES per system)
#          only on the splits in PC_SPLITS. csp: the first CSP_INPUTS systems of val_id, CSP_SAMPLES
#          per system (pc: PC_SAMPLES). Table: RUN_DIR/quality_bar.md; denoise vs initial, paired
#          per system with a bootstrap interval (python -m sfm.eval.paired): RUN_DIR/paired.md.
#          Sampling CPU cost (tiny): about 0.025 CPU-s per structure and network call.
#
# Environment (default): DEMO_DIR (data/demo)  RUN_DIR (runs/recipe_diff_demo)  MODEL_TYPE (tiny)
#   NPROC (2)  STEPS (1800)  BATCH_SIZE (8)  LR (1e-3)  WARMUP (100)  SEED (1)  EMA_DECAY (0.995)
#   MODE_PROBS (csp=0.15,lattice_given=0.15,inpaint=0.7: the training mix of conditioning modes)
#   PLACEMENT_PROB (0.5: inpaint structures trained on the path from their placement, at DENOISE_T, to pos_relaxed)
#   MAX_INPUTS (50)  BAR_INPUTS (100)  NUM_SAMPLES (5)  ODE_STEPS (25)  PC_STEPS (100)  PC_SAMPLES (1)  PC_SPLITS (val_id)
#   SAMPLER_INPUTS (100)  SAMPLER_SAMPLES (3)  CSP_INPUTS (25)  CSP_SAMPLES (10)  DENOISE_T (0.55)  REFINE_T (0.5)  REFINE_STEPS (10)  GEN_BATCH (25)
#   SPLITS (val_id val_ood_ads val_ood_cat)
#   DENSE_TRAIN_DIR (DEMO_DIR + _dense_train)  DENSE_TRAIN_SYSTEMS (150)  BEST (4)  DENSE_SPLITS (val_id)
#   DENSE_NOISE_SAMPLES (5)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=${SFM_VENV:-$root/.venv}/bin/python
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

STAGES=${STAGES:-data train eval}
DEMO_DIR=${DEMO_DIR:-$root/data/demo}
RUN_DIR=${RUN_DIR:-$root/runs/recipe_diff_demo}
MODEL_TYPE=${MODEL_TYPE:-tiny}
NPROC=${NPROC:-2}
STEPS=${STEPS:-1800}
MAX_INPUTS=${MAX_INPUTS:-50}
BAR_INPUTS=${BAR_INPUTS:-100}
SAMPLER_INPUTS=${SAMPLER_INPUTS:-100}
SAMPLER_SAMPLES=${SAMPLER_SAMPLES:-3}
NUM_SAMPLES=${NUM_SAMPLES:-5}
ODE_STEPS=${ODE_STEPS:-25}
PC_STEPS=${PC_STEPS:-100}
PC_SAMPLES=${PC_SAMPLES:-1}
PC_SPLITS=${PC_SPLITS:-val_id}
CSP_INPUTS=${CSP_INPUTS:-25}
CSP_SAMPLES=${CSP_SAMPLES:-10}
DENOISE_T=${DENOISE_T:-0.55}
PLACEMENT_PROB=${PLACEMENT_PROB:-0.5}
REFINE_T=${REFINE_T:-0.5}
REFINE_STEPS=${REFINE_STEPS:-10}
GEN_BATCH=${GEN_BATCH:-25}
SPLITS=${SPLITS:-val_id val_ood_ads val_ood_cat}
DENSE_TRAIN_DIR=${DENSE_TRAIN_DIR:-${DEMO_DIR%/}_dense_train}
DENSE_TRAIN_SYSTEMS=${DENSE_TRAIN_SYSTEMS:-150}
BEST=${BEST:-4}
DENSE_SPLITS=${DENSE_SPLITS:-val_id}
DENSE_NOISE_SAMPLES=${DENSE_NOISE_SAMPLES:-5}
mkdir -p "$RUN_DIR"
timings=$RUN_DIR/timings.txt

timed() {  # timed NAME cmd...: run, append "NAME wall_s cpu_s (user+sys of the process tree)" to timings.txt
  local name=$1; shift
  /usr/bin/time -o "$RUN_DIR/.time" -f "%e %U %S" "$@"
  read -r wall user sys < "$RUN_DIR/.time"
  echo "$name wall_s=$wall cpu_s=$(echo "$user + $sys" | bc)" | tee -a "$timings"
}

has() { [[ " $STAGES " == *" $1 "* ]]; }

if has data && [ ! -f "$DEMO_DIR/summary.json" ]; then
  timed data "$py" -m sfm.data.demo --out "$DEMO_DIR" --workers "$NPROC"
fi

if has lowenergy; then
  timed dense_train "$py" -m sfm.data.demo --out "$DEMO_DIR" --workers "$NPROC" --dense --dense_test 0 --dense_val 0 \
    --dense_train "$DENSE_TRAIN_SYSTEMS" --dense_sites 8 --dense_random 8 --dense_out "$DENSE_TRAIN_DIR"
  "$py" -m sfm.data.dense_targets low_energy --dense "$DENSE_TRAIN_DIR" --split train --best "$BEST" \
    --out "$RUN_DIR/train_set/data.lmdb"
fi

if has train; then
  train_data=$DEMO_DIR/is2re/train
  [ -f "$RUN_DIR/train_set/data.lmdb" ] && train_data=$RUN_DIR/train_set
  echo "training on $train_data"
  timed train env GPUS="$NPROC" TASK=diff DATA_DIR="$DEMO_DIR/is2re" TRAIN_DATA="$train_data" SAVE_DIR="$RUN_DIR/train" \
    MODEL_TYPE="$MODEL_TYPE" STRATEGY=DDP BATCH_SIZE="${BATCH_SIZE:-8}" VAL_BATCH_SIZE=16 LR="${LR:-1e-3}" \
    WARMUP="${WARMUP:-100}" WORKERS=0 LOG_INTERVAL=50 SAVE_INTERVAL=500 SEED="${SEED:-1}" BF16=0 \
    bash "$root/scripts/train_oc20.sh" --total_num_steps "$STEPS" --ema_decay "${EMA_DECAY:-0.995}" \
    --mode_probs "${MODE_PROBS:-csp=0.15,lattice_given=0.15,inpaint=0.7}" --placement_prob "$PLACEMENT_PROB" \
    --placement_t "$DENOISE_T"
fi

ckpt=$RUN_DIR/train/model.pt
gen() {  # gen DIR/NAME flags...: one sampling run into RUN_DIR/DIR/NAME (resumes; later flags win)
  local name=$1; shift
  timed "gen_${name//\//_}" env NPROC="$NPROC" bash "$root/scripts/gen_oc20.sh" --save_dir "$RUN_DIR/$name" \
    --max_inputs "$MAX_INPUTS" --num_samples "$NUM_SAMPLES" --batch_size "$GEN_BATCH" --seed 0 --no_progress "$@"
}

if has tune; then  # steps of the denoise ODE, on test_id (not a reported split)
  for n in 1 2 3 5 10 20; do
    gen "tune/denoise_ode$n" --checkpoint "$ckpt" --data_path "$DEMO_DIR/is2re/test_id" --mode inpaint --sampler ode \
      --steps "$n" --t_start "$DENOISE_T" --no_renoise --num_samples 1 --max_inputs "$BAR_INPUTS"
  done
  gen tune/initial --data_path "$DEMO_DIR/is2re/test_id" --mode inpaint --sampler baseline_initial --num_samples 1 \
    --max_inputs "$BAR_INPUTS"
  "$py" -m sfm.tasks.gen_table "$RUN_DIR"/tune/*/metrics.json --out "$RUN_DIR/tune.md"
fi

if has samplers; then  # few-step vs reference on val_id: SAMPLER_INPUTS systems x SAMPLER_SAMPLES, seed 1
  from_pos="--t_start $DENOISE_T --no_renoise"
  pos_ref=$(printf '%.0f' "$(echo "$PC_STEPS * $DENOISE_T" | bc)")  # the reference's step size, from DENOISE_T down
  specs=("noise_pc${PC_STEPS}|--sampler pc --steps $PC_STEPS" "noise_pc25|--sampler pc --steps 25"
         "noise_ancestral50|--sampler pc --steps 50 --corrector 0" "noise_ode25|--sampler ode --steps 25"
         "pos_pc$pos_ref|--sampler pc --steps $pos_ref $from_pos"
         "pos_ode$REFINE_STEPS|--sampler ode --steps $REFINE_STEPS $from_pos --num_samples 1"
         "pos_ode1|--sampler ode --steps 1 $from_pos --num_samples 1")  # ode from pos: deterministic
  for spec in "${specs[@]}"; do
    gen "samplers/${spec%%|*}" --checkpoint "$ckpt" --data_path "$DEMO_DIR/is2re/val_id" --mode inpaint \
      --max_inputs "$SAMPLER_INPUTS" --num_samples "$SAMPLER_SAMPLES" --seed 1 ${spec#*|}
  done
  "$py" -m sfm.tasks.gen_table "$RUN_DIR"/samplers/*/metrics.json --out "$RUN_DIR/samplers.md"
fi

if has dense; then  # success@k against the dense minimum, next to the heuristic and random sites
  for split in $DENSE_SPLITS; do
    out=$RUN_DIR/dense/$split
    mkdir -p "$out"
    for source in demo heuristic; do  # demo: one input per system (for sampling from noise)
      [ -f "$out/$source.lmdb" ] || "$py" -m sfm.data.dense_targets placements --dense "$DEMO_DIR/is2re_dense" \
        --split "$split" --source "$source" --out "$out/$source.lmdb"
    done
    gen "dense/$split/noise_ode$ODE_STEPS" --checkpoint "$ckpt" --data_path "$out/demo.lmdb" --mode inpaint \
      --sampler ode --steps "$ODE_STEPS" --num_samples "$DENSE_NOISE_SAMPLES" --max_inputs 100000 --no_metrics
    for n in "$REFINE_STEPS" 5; do
      gen "dense/$split/denoise_ode$n" --checkpoint "$ckpt" --data_path "$out/heuristic.lmdb" --mode inpaint \
        --sampler ode --steps "$n" --t_start "$DENOISE_T" --no_renoise --num_samples 1 --max_inputs 100000 --no_metrics
    done
    timed "success_$split" "$py" -m sfm.eval.success --dense "$DEMO_DIR/is2re_dense" --split "$split" \
      --workers "$NPROC" --json "$RUN_DIR/dense_$split.json" \
      --samples "noise_ode$ODE_STEPS=$out/noise_ode$ODE_STEPS/samples" \
      --samples "denoise_ode$REFINE_STEPS=$out/denoise_ode$REFINE_STEPS/samples" \
      --samples "denoise_ode5=$out/denoise_ode5/samples" | tee "$RUN_DIR/dense_$split.md"
  done
fi

if has eval; then
  for split in $SPLITS; do
    data=$DEMO_DIR/is2re/$split
    gen "eval/inpaint_${split}_ode$ODE_STEPS" --checkpoint "$ckpt" --data_path "$data" --mode inpaint --sampler ode --steps "$ODE_STEPS"
    if [[ " $PC_SPLITS " == *" $split "* ]]; then
      gen "eval/inpaint_${split}_pc$PC_STEPS" --checkpoint "$ckpt" --data_path "$data" --mode inpaint --sampler pc \
        --steps "$PC_STEPS" --num_samples "$PC_SAMPLES"
    fi
    gen "eval/inpaint_${split}_refine_ode${REFINE_STEPS}_t$REFINE_T" --checkpoint "$ckpt" --data_path "$data" --mode inpaint \
      --sampler ode --steps "$REFINE_STEPS" --t_start "$REFINE_T"
    # the bar: denoised placement vs the placement itself vs random, on BAR_INPUTS systems
    gen "eval/inpaint_${split}_denoise_ode${REFINE_STEPS}_t$DENOISE_T" --checkpoint "$ckpt" --data_path "$data" --mode inpaint \
      --sampler ode --steps "$REFINE_STEPS" --t_start "$DENOISE_T" --no_renoise --num_samples 1 --max_inputs "$BAR_INPUTS"
    gen "eval/inpaint_${split}_initial" --data_path "$data" --mode inpaint --sampler baseline_initial --num_samples 1 \
      --max_inputs "$BAR_INPUTS"
    gen "eval/inpaint_${split}_random" --data_path "$data" --mode inpaint --sampler baseline_random --max_inputs "$BAR_INPUTS"
  done
  csp=(--data_path "$DEMO_DIR/is2re/val_id" --mode csp --max_inputs "$CSP_INPUTS" --num_samples "$CSP_SAMPLES")
  gen "eval/csp_val_id_ode$ODE_STEPS" --checkpoint "$ckpt" "${csp[@]}" --sampler ode --steps "$ODE_STEPS"
  gen "eval/csp_val_id_pc$PC_STEPS" --checkpoint "$ckpt" "${csp[@]}" --sampler pc --steps "$PC_STEPS" --num_samples "$PC_SAMPLES"
  gen "eval/csp_val_id_random" "${csp[@]}" --sampler baseline_random --lattice_data "$DEMO_DIR/is2re/train"
  "$py" -m sfm.tasks.gen_table "$RUN_DIR"/eval/*/metrics.json --out "$RUN_DIR/quality_bar.md"
  for split in $SPLITS; do  # is the denoised placement closer than the placement? paired, per system
    echo "$split: $("$py" -m sfm.eval.paired --reference "$DEMO_DIR/is2re/$split" --json "$RUN_DIR/eval/paired_$split.json" \
      --samples "$RUN_DIR/eval/inpaint_${split}_denoise_ode${REFINE_STEPS}_t$DENOISE_T/samples" \
      --baseline "$RUN_DIR/eval/inpaint_${split}_initial/samples")"
  done | tee "$RUN_DIR/paired.md"
fi
