#!/usr/bin/env bash
# Train on OC20 with torchrun (+ DeepSpeed ZeRO), on one node or many: run the same command on
# every node, e.g. on node i of 4:
#
#   NNODES=4 NODE_RANK=$i MASTER_ADDR=node0 MASTER_PORT=29500 GPUS=8 bash scripts/train_oc20.sh [flags]
#
# Environment (default):
#   NNODES (1)  NODE_RANK (0)  MASTER_ADDR (127.0.0.1)  MASTER_PORT (29500; one node without it: a free port)
#   GPUS        processes per node (visible GPUs; 1 without a GPU)
#   TASK        diff | s2ef (diff): runs sfm/tasks/train_$TASK.py
#   DATA_DIR    folder with train/ and val_id/ (data/is2re/all); or TRAIN_DATA, VALID_DATA (empty: no validation)
#   SAVE_DIR (runs/oc20_$TASK)  MODEL_TYPE (eqv2_31m)  STRATEGY (Zero2; Single for one process)
#   BATCH_SIZE structures per process and step (8)  VAL_BATCH_SIZE (BATCH_SIZE)  GRAD_ACCUM (1)
#   EPOCHS (30)  WARMUP steps (1000)  LR (2e-4)  MAX_SITES (0: all)  WORKERS loader processes (4)
#   LOG_INTERVAL (50)  SAVE_INTERVAL (2000)  BF16 (1 with GPUs, else 0)  SEED (1)
# Flags after the script name go to the entry point and win over these (e.g. --resume, --target pos).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
if nvidia-smi -L >/dev/null 2>&1; then has_gpu=1; else has_gpu=0; fi
if [ "$has_gpu" = 1 ]; then GPUS=${GPUS:-$(nvidia-smi -L | wc -l)}; else GPUS=${GPUS:-1}; fi
TASK=${TASK:-diff}
DATA_DIR=${DATA_DIR:-$root/data/is2re/all}
TRAIN_DATA=${TRAIN_DATA:-$DATA_DIR/train}
VALID_DATA=${VALID_DATA-$DATA_DIR/val_id}
SAVE_DIR=${SAVE_DIR:-$root/runs/oc20_$TASK}
MODEL_TYPE=${MODEL_TYPE:-eqv2_31m}
if [ $((NNODES * GPUS)) -gt 1 ]; then STRATEGY=${STRATEGY:-Zero2}; else STRATEGY=${STRATEGY:-Single}; fi
BATCH_SIZE=${BATCH_SIZE:-8}
BF16=${BF16:-$has_gpu}

case "$TASK" in diff|s2ef) ;; *) echo "train_oc20.sh: TASK must be diff or s2ef, got '$TASK'" >&2; exit 2 ;; esac

args=(
  --train_data_path "$TRAIN_DATA"
  --save_dir "$SAVE_DIR"
  --model_type "$MODEL_TYPE"
  --strategy "$STRATEGY"
  --train_batch_size "$BATCH_SIZE"
  --val_batch_size "${VAL_BATCH_SIZE:-$BATCH_SIZE}"
  --gradient_accumulation_steps "${GRAD_ACCUM:-1}"
  --total_num_epochs "${EPOCHS:-30}"
  --warmup_num_steps "${WARMUP:-1000}"
  --max_lr "${LR:-2e-4}"
  --max_sites "${MAX_SITES:-0}"
  --num_workers "${WORKERS:-4}"
  --log_interval "${LOG_INTERVAL:-50}"
  --save_interval "${SAVE_INTERVAL:-2000}"
  --seed "${SEED:-1}"
)
[ -n "$VALID_DATA" ] && args+=(--valid_data_path "$VALID_DATA")
[ "$BF16" = 1 ] && args+=(--bf16)

source "$root/scripts/_torchrun.sh"
launch train_oc20 "$GPUS" "$root/sfm/tasks/train_$TASK.py" "${args[@]}" "$@"
