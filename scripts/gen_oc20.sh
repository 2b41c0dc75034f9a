#!/usr/bin/env bash
# Sample structures from a trained diffusion checkpoint with torchrun (one process or many; each
# rank takes its share), streamed to SAVE_DIR/samples, then scored (SAVE_DIR/metrics.json, .txt).
#
#   bash scripts/gen_oc20.sh --checkpoint runs/diff/model.pt --data_path data/is2re/all/val_id \
#       --mode inpaint --sampler ode --steps 25 --num_samples 10 --save_dir runs/gen_val_id
#   NPROC=8 bash scripts/gen_oc20.sh ...                         (8 processes, e.g. 8 GPUs)
#   NNODES=2 NODE_RANK=$i MASTER_ADDR=node0 MASTER_PORT=29500 NPROC=8 bash scripts/gen_oc20.sh ...
#
# Environment (default):
#   NPROC processes per node (1)   NNODES (1)   NODE_RANK (0)
#   MASTER_ADDR (127.0.0.1)  MASTER_PORT (29500; one node without it: a free port)
#   OMP_NUM_THREADS (1 per process)
# Every flag goes to sfm/tasks/gen.py (python -m sfm.tasks.gen --help). Rerunning the same
# command resumes: finished samples are kept. Results depend on --seed and --batch_size,
# not on NPROC / NNODES.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$root/scripts/_torchrun.sh"
launch gen_oc20 "${NPROC:-1}" "$root/sfm/tasks/gen.py" "$@"
