#!/usr/bin/env bash
# Train the S2EF (energy/force) model.
#   bash scripts/train_s2ef.sh                  # no GPU: the demo world's s2ef/{train,val_id} (see train_oc20_local.sh)
#   TRAIN_DATA=data/s2ef/2M/train VALID_DATA=data/s2ef/all/val_id MODEL_TYPE=eqv2_31m bash scripts/train_s2ef.sh
#   DATA_KIND=is2re ...                         # IS2RE LMDBs alone: energies at pos and pos_relaxed
#   NNODES=... NODE_RANK=... MASTER_ADDR=... GPUS=... bash scripts/train_s2ef.sh   # multi-node, as train_oc20.sh
# Environment (default): DATA_KIND (s2ef), FORCES direct|conservative (direct), ENERGY_COEF (4), FORCE_COEF (100),
# and every variable of train_oc20.sh / train_oc20_local.sh. Flags pass through to sfm/tasks/train_s2ef.py.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export TASK=s2ef DATA_KIND=${DATA_KIND:-s2ef}
flags=(--data_kind "$DATA_KIND" --forces "${FORCES:-direct}" --energy_coef "${ENERGY_COEF:-4}" --force_coef "${FORCE_COEF:-100}")
if [ "${NNODES:-1}" = 1 ]; then
  exec bash "$root/scripts/train_oc20_local.sh" "${flags[@]}" "$@"
fi
exec bash "$root/scripts/train_oc20.sh" "${flags[@]}" "$@"
