#!/usr/bin/env bash
# The GPU check: on one GPU machine, in under 8 minutes, one JSON + Markdown report of
#   1. the device tests (pytest -m device: graph, S2EF symmetry / derivatives / training step,
#      sampling, relaxation, run on the GPU with SFM_TEST_DEVICE),
#   2. the backbone: eqv2_31m forward and forward+backward, fp32 and bf16, peak memory,
#   3. training throughput, structures/s: Single, and Zero1 / Zero2 over the GPUs present,
#   4. sampling throughput (ode and pc) from a checkpoint trained for a few steps here,
#   5. batched relax_batch vs the ASE FIRE loop.
#
#   bash scripts/gpu_check.sh [OUT_DIR]        (default runs/gpu_check; the report is
#                                              OUT_DIR/benchmark.json and benchmark.md)
#   DEVICE=cpu SHAPES=tiny bash scripts/gpu_check.sh OUT   (tiny shapes on the CPU: what the
#                                              test suite runs, so the script is known to work)
#
# Environment: DEVICE (cuda), SHAPES (gpu: eqv2_31m backbone and training, small relaxation;
# tiny: tiny models, few steps), GPUS (GPUs to train on; default all torch sees), DEMO_DIR
# (data/demo_small, built if missing), SFM_VENV. Exits non-zero when a device test fails, after
# writing the report (which says which).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=${SFM_VENV:-$root/.venv}/bin/python
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
cd "$root"
out=${1:-runs/gpu_check}
export DEVICE=${DEVICE:-cuda} DEMO_DIR=${DEMO_DIR:-data/demo_small}
gpus=${GPUS:-$("$py" -c 'import torch; print(torch.cuda.device_count())')}
mkdir -p "$out"
[ -f "$DEMO_DIR/summary.json" ] || "$py" -m sfm.data.demo --out "$DEMO_DIR" --small

echo "[gpu_check] device tests on $DEVICE"
tests_rc=0
SFM_TEST_DEVICE=$DEVICE "$py" -m pytest -q -m device -p no:cacheprovider --junitxml "$out/device_tests.xml" tests \
  || tests_rc=$?

case ${SHAPES:-gpu} in
  gpu)  model=eqv2_31m train_steps=12 samplers="ode:25 pc:100" sample_inputs=8 relax_model=small relax_n="32 128" relax_steps=20 ;;
  tiny) model=tiny train_steps=3 samplers="ode:2" sample_inputs=2 relax_model=tiny relax_n="2 4" relax_steps=2 ;;
  *) echo "[gpu_check] SHAPES must be gpu or tiny, got '$SHAPES'" >&2; exit 2 ;;
esac
n=$(( gpus > 1 ? gpus : 1 ))  # the CPU stand-in trains Zero1 / Zero2 on one process
echo "[gpu_check] a $model diffusion checkpoint to sample from (2 training steps)"
rm -rf "$out/diff_ckpt"
"$py" -m sfm.tasks.train_diff --train_data_path "$DEMO_DIR/is2re/train" --save_dir "$out/diff_ckpt" \
  --model_type "$model" --total_num_steps 2 --warmup_num_steps 1 --train_batch_size 4 >"$out/diff_ckpt.log" 2>&1

STAGES="backbone training sampling relax" MODELS=$model BF16_MODELS=$model CKPT_MODEL="" \
  TRAIN_MODELS=$model SETUPS="Single:1 Zero1:$n Zero2:$n" TRAIN_STEPS=$train_steps \
  DIFF_CKPT="$out/diff_ckpt/model.pt" SAMPLERS=$samplers SAMPLE_INPUTS=$sample_inputs \
  S2EF_MODEL=$relax_model RELAX_N=$relax_n RELAX_STEPS=$relax_steps RELAX_FMAX=0 \
  EXTRA_INPUTS="device_tests=$out/device_tests.xml" bash scripts/benchmark.sh "$out"

if [ "$tests_rc" != 0 ]; then
  echo "[gpu_check] device tests FAILED (pytest exit $tests_rc): see $out/benchmark.md" >&2
  exit "$tests_rc"
fi
echo "[gpu_check] done: $out/benchmark.json, $out/benchmark.md"
