#!/usr/bin/env bash
# The device check on a lent accelerator, as one prepared script (README, "Device check").
#
#   bash benchmarks/device_check.sh          # from the repository root, on the accelerator
#
# Runs in parts, most useful first, within BUDGET seconds in all (default 540: under a 600 s
# command limit, 30 s kept for the report):
#   1. benchmarks/profile_step.py: the kernels of cifar10_ict's training step by device time
#      (batch PROFILE_BATCH, default 128) -> profile_step.txt; the first H200 lease measured
#      that step at 615 ms, about 34 TFLOP/s at `highest` (BENCHMARKS.md), and this says where
#      the time goes,
#   2. benchmarks/device_check.py: training steps at the device default precision and in
#      bfloat16 (4 networks); with part 5 the direct measure of `highest` against `default`,
#   3. benchmarks/precision_study.py on the device's real float32-default and bfloat16 paths
#      -> precision_study.{json,png,txt},
#   4. samplers (1-step, Heun 35 evaluations) and Inception features,
#   5. training steps at the highest (float32) precision,
#   6. the largest per-device batch of each network (doubling from 128 / 32, up to 1024),
#   7. with rematerialized blocks (model.remat): bfloat16 steps, the largest batch,
#   8. benchmarks/jvp_cost.py: the sCT and MeanFlow steps against iCT's (cifar10_ict's NCSN++,
#      batch JVP_BATCH, default 128; measured on the first H200 lease) -> jvp_cost.txt.
# A part that fails or runs out of its time is logged and the next one runs.
# Finished units are kept in runs/device_check/results.json and compiled programs in
# runs/device_check/jax_cache, so running the script again on the same machine continues where
# the budget stopped it and compiles nothing twice. The table, the results, the log and
# nvidia-smi's view go to $OUT (the device tool's folder) or else runs/device_check/.
#
# Packages missing from the machine's Python (ml_collections on the device image) are
# installed from .device_wheels/ when it is there: prepare it where pip reaches the index,
#   pip download ml_collections==1.1.0 --no-deps -d .device_wheels
# then add .device_wheels to .git/info/exclude (so it is never committed) and name it in the
# device tool's `carry`.
#
# DEVICE_CHECK_FLAGS adds flags to every part, e.g. "--quick" to try the script on a CPU.
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
STATE=runs/device_check
OUT_DIR="${OUT:-$STATE}"
RESULTS="$STATE/results.json"
BUDGET="${BUDGET:-540}"
REPORT_S=30
START=$(date +%s)
mkdir -p "$STATE" "$OUT_DIR"
export PYTHONPATH=. PYTHONUNBUFFERED=1
read -r -a EXTRA <<<"${DEVICE_CHECK_FLAGS:-}"

if [ -d .device_wheels ]; then
  "$PY" -m pip install --quiet --no-index --no-deps .device_wheels/*.whl
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv \
  >"$OUT_DIR/nvidia_smi.txt" 2>&1 || true

left() { echo $((BUDGET - REPORT_S - ($(date +%s) - START))); }

part() {
  local t
  t=$(left)
  if [ "$t" -lt 60 ]; then
    echo "budget spent: not run: $*" | tee -a "$OUT_DIR/log.txt"
    return
  fi
  echo "== part ($t s left): $*" | tee -a "$OUT_DIR/log.txt"
  "$PY" -m benchmarks.device_check --results="$RESULTS" --time_limit="$t" \
    --compilation_cache_dir="$STATE/jax_cache" "${EXTRA[@]}" "$@" >>"$OUT_DIR/log.txt" 2>&1 ||
    echo "part ended with exit $?: $*" | tee -a "$OUT_DIR/log.txt"
}

# One module run as a part of its own, bounded by the time left: NAME MODULE ARGS...
module_part() {
  local name=$1 t
  shift
  t=$(left)
  if [ "$t" -lt 60 ]; then
    echo "budget spent: not run: $name" | tee -a "$OUT_DIR/log.txt"
    return
  fi
  echo "== $name ($t s left): $*" | tee -a "$OUT_DIR/log.txt"
  timeout "$t" "$PY" -m "$@" >"$OUT_DIR/$name.txt" 2>&1 ||
    echo "$name ended with exit $?" | tee -a "$OUT_DIR/log.txt"
}

QUICK=0
for flag in "${EXTRA[@]}"; do [ "$flag" = "--quick" ] && QUICK=1; done
if [ "$QUICK" = 1 ]; then
  module_part profile_step benchmarks.profile_step --config=configs/demo.py --steps=2
else
  module_part profile_step benchmarks.profile_step --config=configs/cifar10_ict.py \
    --config.training.batch_size="${PROFILE_BATCH:-128}" --steps=5
fi
part --sections=train --precisions="f32 default,bf16"
module_part precision_study benchmarks.precision_study --variants="f32 default,bf16" \
  --json="$OUT_DIR/precision_study.json" --png="$OUT_DIR/precision_study.png" \
  "$([ "$QUICK" = 1 ] && echo --quick || echo --noquick)"
part --sections=sample,inception
part --sections=train --precisions="f32 highest"
part --sections=max_batch --max_batch_cap=1024
part --sections=train,max_batch --precisions=bf16 --max_batch_cap=2048 --remat  # +remat rows
if [ "$QUICK" = 1 ]; then
  module_part jvp_cost benchmarks.jvp_cost --config=configs/demo.py --steps=2
else
  module_part jvp_cost benchmarks.jvp_cost --config=configs/cifar10_ict.py \
    --config.training.batch_size="${JVP_BATCH:-128}" --steps=10
fi

"$PY" -m benchmarks.device_check --results="$RESULTS" --report \
  --compilation_cache_dir="$STATE/jax_cache" "${EXTRA[@]}" | tee "$OUT_DIR/device_check.txt"
# $OUT brings back 8 files at most: the table above stands for results.json there.
echo "elapsed $(($(date +%s) - START)) s of a $BUDGET s budget"
