#!/usr/bin/env bash
# Run every benchmark and write one JSON and one Markdown table (with the machine description):
#   loader (read + convert + graph, 0/1/2 workers), backbone forward / forward+backward and peak
#   memory (tiny, small, eqv2_31m), training throughput (Single vs Zero1 on 2 processes),
#   sampler network calls/s and samples/s (ode and pc), batched vs looped relaxation.
#
#   bash scripts/benchmark.sh [OUT_DIR]        (default runs/benchmark)
#   README=README.md bash scripts/benchmark.sh (also rewrites the README's performance tables)
#
# Environment: DEMO_DIR (data/demo_small; built if missing), DIFF_CKPT (diffusion checkpoint for
# the sampler benchmark; default runs/quickstart/diff/model.pt, skipped if absent),
# S2EF_MODEL (checkpoint or preset for the relaxation benchmark; default: small, untrained, its
# forces scaled by RELAX_FORCE_STD=30 eV/A so that atoms move as in a relaxation from an initial
# placement; 10 FIRE steps per structure, fmax 0.05; both paths do the same work),
# DEVICE (cpu; cuda on a GPU machine), MODELS (tiny small eqv2_31m).
# Shapes and stages (scripts/gpu_check.sh sets these): STAGES (loader backbone training sampling
# relax), BF16_MODELS (backbone also timed under bf16 autocast; default none), CKPT_MODEL
# (eqv2_31m, with activation checkpointing; empty: skipped), TRAIN_MODELS (tiny small),
# SETUPS (Single:1:1 Zero1:2:1, STRATEGY:PROCESSES[:THREADS]), TRAIN_STEPS (12),
# SAMPLERS ("ode:25 pc:100"), SAMPLE_INPUTS (8), RELAX_N (32 128), RELAX_STEPS (10), RELAX_FMAX (0.05),
# EXTRA_INPUTS (more "name=path.json|.xml" tables for the report, space-separated).
# Every figure is measured by this run; nothing is copied in.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/setup.sh" >/dev/null
py=${SFM_VENV:-$root/.venv}/bin/python
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
cd "$root"
out=${1:-runs/benchmark}
demo=${DEMO_DIR:-data/demo_small}
diff_ckpt=${DIFF_CKPT:-runs/quickstart/diff/model.pt}
device=${DEVICE:-cpu}
stages=" ${STAGES:-loader backbone training sampling relax} "
mkdir -p "$out"
[ -f "$demo/summary.json" ] || "$py" -m sfm.data.demo --out "$demo" --small
inputs=()

if [[ $stages == *" loader "* ]]; then
  echo "[benchmark] loader"
  "$py" -m sfm.data.bench_loader --data "$demo/is2re/train" --workers 0 1 2 --repeat 3 --also aselmdb --json "$out/loader.json"
  inputs+=("loader, demo --small is2re/train, OC20 LMDB and the same structures as ASE-LMDB (structures/s: read + cart->frac + 12 A graph)=$out/loader.json@format,workers,structures_per_s,edges_per_structure")
fi

if [[ $stages == *" backbone "* ]]; then
  echo "[benchmark] backbone"
  cols=model,params,bf16,checkpoint,forward_s,forward_cpu_s,train_step_s,train_step_cpu_s,peak_mb_forward,peak_mb_train_step
  "$py" -m sfm.models.bench --device "$device" --models ${MODELS:-tiny small eqv2_31m} --repeats 1 --json "$out/backbone.json"
  inputs+=("backbone, S2EF head, 4 slabs x 80 atoms, 12 A / 20 neighbours (s; MB above model and batch)=$out/backbone.json@$cols")
  if [ -n "${BF16_MODELS:-}" ]; then
    "$py" -m sfm.models.bench --device "$device" --models $BF16_MODELS --repeats 1 --bf16 --json "$out/backbone_bf16.json"
    inputs+=("backbone under bf16 autocast=$out/backbone_bf16.json@$cols")
  fi
  if [ -n "${CKPT_MODEL-eqv2_31m}" ]; then
    "$py" -m sfm.models.bench --device "$device" --models ${CKPT_MODEL-eqv2_31m} --repeats 1 --checkpoint \
      --json "$out/backbone_checkpointing.json"
    inputs+=("backbone with activation checkpointing=$out/backbone_checkpointing.json@$cols")
  fi
fi

if [[ $stages == *" training "* ]]; then
  echo "[benchmark] training"
  "$py" -m sfm.pipeline.bench --data "$demo" --task diff --models ${TRAIN_MODELS:-tiny small} \
    --setups ${SETUPS:-Single:1:1 Zero1:2:1} --steps "${TRAIN_STEPS:-12}" --json "$out/training.json"
  inputs+=("training throughput, diffusion, demo --small, 4 structures per process and step=$out/training.json@model,strategy,processes,structures_per_s,structures_per_cpu_s,peak_mem_gb_rank0")
fi

if [[ $stages == *" sampling "* ]]; then
  if [ -f "$diff_ckpt" ]; then
    for sampler in ${SAMPLERS:-ode:25 pc:100}; do
      name=${sampler%%:*} steps=${sampler#*:}
      rm -rf "$out/sample_$name"
      "$py" -m sfm.tasks.gen --checkpoint "$diff_ckpt" --data_path "$demo/is2re/val_id" --mode inpaint \
        --sampler "$name" --steps "$steps" --num_samples 4 --batch_size 8 --max_inputs "${SAMPLE_INPUTS:-8}" \
        --device "$device" --no_progress --save_dir "$out/sample_$name"
      inputs+=("sampling, inpaint, $name $steps steps, one process=$out/sample_$name/metrics.json#run@sampler,steps,samples_written_this_run,network_calls_per_sample,sampling_wall_s,samples_per_s")
    done
  else
    echo "[benchmark] sampling skipped: no diffusion checkpoint at $diff_ckpt (run scripts/quickstart.sh or set DIFF_CKPT)"
  fi
fi

if [[ $stages == *" relax "* ]]; then
  echo "[benchmark] relaxation"
  "$py" -m sfm.relax.bench --model "${S2EF_MODEL:-small}" --force_std "${RELAX_FORCE_STD:-30}" --n ${RELAX_N:-32 128} \
    --device "$device" --data "$demo/is2re/val_id" --steps "${RELAX_STEPS:-10}" --fmax "${RELAX_FMAX:-0.05}" --json "$out/relax.json"
  inputs+=("relaxation, structures/s, batched relax_batch vs ASE FIRE looping over SFMCalculator=$out/relax.json@n,model,atoms_mean,skin,steps_batched,batched_per_s,ase_per_s,ratio,max_dE_per_atom")
fi

"$py" -m sfm.tasks.benchmark_report --out "$out" ${README:+--readme "$README"} "${inputs[@]}" ${EXTRA_INPUTS:-}
