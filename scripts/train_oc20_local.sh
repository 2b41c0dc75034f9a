#!/usr/bin/env bash
# Train on this machine.
#   With GPUs: every visible GPU on OC20 data (train_oc20.sh's defaults: DATA_DIR=data/is2re/all, eqv2_31m, Zero2).
#   Without:   the demo world at DEMO_DIR (data/demo; built first if missing, SMALL=1 builds the --small one),
#              model small, NPROC processes (1: Single; more: Zero1), 10 epochs.
#   bash scripts/train_oc20_local.sh                      # diffusion on the demo world, CPU
#   NPROC=2 MODEL_TYPE=tiny bash scripts/train_oc20_local.sh --total_num_steps 100
# Every variable of train_oc20.sh can be set (TASK, SAVE_DIR, BATCH_SIZE, ...); flags pass through.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=${SFM_VENV:-$root/.venv}/bin/python

if ! nvidia-smi -L >/dev/null 2>&1; then
  export GPUS=${NPROC:-${GPUS:-1}}
  TASK=${TASK:-diff}
  DEMO_DIR=${DEMO_DIR:-$root/data/demo}
  if [ ! -f "$DEMO_DIR/summary.json" ]; then
    size=(); [ "${SMALL:-0}" = 1 ] && size=(--small)
    echo "[train_oc20_local] building the demo world at $DEMO_DIR"
    PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" "$py" -m sfm.data.demo --out "$DEMO_DIR" "${size[@]}"
  fi
  kind=is2re; [ "$TASK" = s2ef ] && [ "${DATA_KIND:-s2ef}" = s2ef ] && kind=s2ef
  if [ "$GPUS" -gt 1 ]; then strategy=Zero1; else strategy=Single; fi
  export TASK DATA_DIR=${DATA_DIR:-$DEMO_DIR/$kind} SAVE_DIR=${SAVE_DIR:-$root/runs/demo_$TASK}
  export MODEL_TYPE=${MODEL_TYPE:-small} STRATEGY=${STRATEGY:-$strategy} BATCH_SIZE=${BATCH_SIZE:-8}
  export EPOCHS=${EPOCHS:-10} WARMUP=${WARMUP:-50} LR=${LR:-5e-4} WORKERS=${WORKERS:-0}
  export LOG_INTERVAL=${LOG_INTERVAL:-10} SAVE_INTERVAL=${SAVE_INTERVAL:-200}
fi
export NNODES=1 NODE_RANK=0
exec bash "$root/scripts/train_oc20.sh" "$@"
