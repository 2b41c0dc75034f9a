#!/usr/bin/env bash
# Score generated samples with an S2EF checkpoint: predict, relax (batched, fixed atoms held),
# rank the samples of each system by energy, count anomalies, and (with a reference holding
# y_relaxed) placement success@k. Writes OUT/scored.lmdb, samples.csv, systems.csv, scores.json.
#
#   CHECKPOINT=runs/demo_s2ef/model.pt SAMPLES=runs/gen_val_id/samples REFERENCE=data/demo/is2re/val_id \
#     OUT=runs/gen_val_id/scored bash scripts/score_oc20.sh --judge emt --k 1 5
#
# Environment (default): CHECKPOINT (runs/demo_s2ef/model.pt)  SAMPLES (required: LMDB, shard folder
# or extxyz)  REFERENCE (none)  OUT (SAMPLES's folder + /scored)  STEPS (300)  FMAX (0.05)
# OPTIMIZER (fire)  BATCH_SIZE (32)  JUDGE (none | emt | emt_relax). Flags after the script name go
# to sfm/tasks/score.py and win (e.g. --exclude desorbed,surface_changed,intercalated, --max_samples 100).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=${SFM_VENV:-$root/.venv}/bin/python
: "${SAMPLES:?set SAMPLES to a sample LMDB, shard folder or extxyz (e.g. SAVE_DIR/samples of gen_oc20.sh)}"
CHECKPOINT=${CHECKPOINT:-$root/runs/demo_s2ef/model.pt}
OUT=${OUT:-$(dirname "$SAMPLES")/scored}
args=(--checkpoint "$CHECKPOINT" --samples "$SAMPLES" --out "$OUT" --steps "${STEPS:-300}" --fmax "${FMAX:-0.05}"
      --optimizer "${OPTIMIZER:-fire}" --batch_size "${BATCH_SIZE:-32}" --judge "${JUDGE:-none}")
[ -n "${REFERENCE:-}" ] && args+=(--reference "$REFERENCE")
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
cmd=("$py" -m sfm.tasks.score "${args[@]}" "$@")
echo "[score_oc20] ${cmd[*]}"
exec "${cmd[@]}"
