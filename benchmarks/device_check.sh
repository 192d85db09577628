#!/usr/bin/env bash
# The device check on a lent accelerator, as one prepared script (issue 22; README, "Device
# check"): every method's training step at three precisions, two profiles, the precision study,
# the samplers and the FID Inception, within BUDGET seconds of device time (default 480).
#
#   bash benchmarks/device_check.sh                              # repository root, accelerator
#   DEVICE_CHECK_FLAGS=--quick bash benchmarks/device_check.sh   # the same on a CPU, tiny nets
#   RESULTS_FROM=benchmarks/device_results.json bash benchmarks/device_check.sh  # continue
#
# In this order (benchmarks/device_check.py says what each unit measures):
#   1. compile phase (benchmarks/device_compile.py): worker processes (--jobs; default half the
#      cores, at most 8) compile the 27 programs at once (24 training steps: 8 methods x
#      f32 default / bf16 / f32 highest on configs/cifar10_<method>.py at batch 128; 2 samplers;
#      the Inception) into runs/device_check/programs, running nothing, for at most COMPILE_S
#      seconds (default 270). Beside it, since it times nothing:
#   3. benchmarks/precision_study.py on the device's real TF32 and bfloat16 paths (iCT's
#      student-teacher difference and the JVP methods' tangent) -> precision_study.{txt,json,png},
#      for at most STUDY_S seconds (default 240);
#   then the measure phase, one process loading each stored program:
#   1. the training steps: the rows the published references compare with first (MeanFlow at
#      TF32, ECT and EDM at full float32), then every method at TF32, in bfloat16, at highest,
#   2. the iCT and MeanFlow steps profiled at their configs' precision (top kernels, device time
#      by category of work),
#   4. the 1-step and 2-step samplers (batch 1024) and the FID Inception (batch 256).
# Budget estimate (H200 host, 16 cores; the first lease compiled one NCSN++ step in 44 to 98 s
# and ran the iCT step at highest in 615 ms): setup 10 s; compile phase 24 x ~70 s of steps
# + ~60 s of samplers and Inception over 8 workers, about 240 s (cut at COMPILE_S; what it did
# not compile is compiled by the measure phase, if time is left); measure: 24 steps x ~5 s
# (load ~2 s, build the state, 1 + 5 steps of 0.1 to 0.6 s) = ~120 s, profiles 2 x ~15 s,
# samplers and Inception ~25 s; the table ~5 s: about 460 s. The precision study runs inside
# the compile phase's time (the measure phase waits for it). Caveat: XLA autotunes a GPU
# program's convolutions and matmuls on the GPU while compiling it, here beside the other
# workers' autotuning; if that picked slower kernels, the iCT row at highest would be slower
# than the first lease's 615 ms (compiled alone): compare them.
# Dropped from the earlier check, with their reasons in BENCHMARKS.md: the largest-batch search
# and the rematerialized rows (a compile per probe; the XLA peak memory column and the recipe
# rows' bound answer "does it fit"), the ImageNet-64 and latent ADM rows, and
# benchmarks/jvp_cost.py (the sct / meanflow / ict train rows replace it).
#
# Results go to runs/device_check/results.json and to $OUT/results.json after every compile
# and every unit, so a cut lease still returns what it measured; a second call on the same
# machine continues (the programs and results stay in runs/device_check). On a fresh machine,
# continue from the results brought back: copy $OUT/results.json into the working tree, e.g.
# benchmarks/device_results.json (untracked files travel), and name it in RESULTS_FROM: what
# it holds is not run again. The table, the results, the log (with nvidia-smi's view) and the
# precision study's files go to $OUT (the device tool's folder; 6 of its 8 files) or else to
# runs/device_check/.
#
# Packages missing from the machine's Python (ml_collections on the device image) are
# installed from .device_wheels/ when it is there: prepare it where pip reaches the index,
#   pip download ml_collections==1.1.0 --no-deps -d .device_wheels
# then add .device_wheels to .git/info/exclude (so it is never committed) and name it in the
# device tool's `carry`.
#
# DEVICE_CHECK_FLAGS adds flags to every device_check.py call (e.g. --quick, --train_units).
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
STATE="${DEVICE_CHECK_STATE:-runs/device_check}"
OUT_DIR="${OUT:-$STATE}"
RESULTS="$STATE/results.json"
BUDGET="${BUDGET:-480}"
COMPILE_S="${COMPILE_S:-270}"
STUDY_S="${STUDY_S:-240}"
REPORT_S=20
MIN_MEASURE_S=30
START=$(date +%s)
mkdir -p "$STATE" "$OUT_DIR"
LOG="$OUT_DIR/log.txt"
export PYTHONPATH=. PYTHONUNBUFFERED=1
read -r -a EXTRA <<<"${DEVICE_CHECK_FLAGS:-}"
QUICK=0
for flag in "${EXTRA[@]}"; do [ "$flag" = "--quick" ] && QUICK=1; done

if [ -n "${RESULTS_FROM:-}" ] && [ ! -f "$RESULTS" ]; then
  cp "$RESULTS_FROM" "$RESULTS" && echo "continuing from $RESULTS_FROM" | tee -a "$LOG"
fi
if [ -d .device_wheels ]; then
  "$PY" -m pip install --quiet --no-index --no-deps .device_wheels/*.whl
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv \
  >>"$LOG" 2>&1 || echo "no nvidia-smi" >>"$LOG"

elapsed() { echo $(($(date +%s) - START)); }
left() { echo $((BUDGET - REPORT_S - $(elapsed))); }
ARGS=(--results="$RESULTS" --store="$STATE/programs" --compilation_cache_dir="$STATE/jax_cache")
[ "$OUT_DIR" != "$STATE" ] && ARGS+=(--results_copy="$OUT_DIR/results.json")
ARGS+=("${EXTRA[@]}")

echo "== $(elapsed) s: precision study, beside the compile phase (<= $STUDY_S s)" | tee -a "$LOG"
(
  XLA_PYTHON_CLIENT_PREALLOCATE=false timeout "$STUDY_S" "$PY" -m benchmarks.precision_study \
    --variants="f32 default,bf16" --json="$OUT_DIR/precision_study.json" \
    --png="$OUT_DIR/precision_study.png" "$([ "$QUICK" = 1 ] && echo --quick || echo --noquick)" \
    >"$OUT_DIR/precision_study.txt" 2>&1 || echo "precision study ended with exit $?" >>"$LOG"
  echo "== $(elapsed) s: precision study done" >>"$LOG"
) &
STUDY=$!
echo "== $(elapsed) s: compile phase (at most $COMPILE_S s)" | tee -a "$LOG"
"$PY" -m benchmarks.device_check --phase=compile --time_limit="$COMPILE_S" "${ARGS[@]}" \
  >>"$LOG" 2>&1 || echo "compile phase ended with exit $?" | tee -a "$LOG"
wait "$STUDY"

TABLE="$OUT_DIR/device_check.txt"
rm -f "$TABLE"
for attempt in 1 2; do # a second process continues after a unit that ended the first
  t=$(left)
  if [ "$t" -lt "$MIN_MEASURE_S" ]; then
    echo "budget spent: measure phase not run" | tee -a "$LOG"
    break
  fi
  echo "== $(elapsed) s: measure phase, attempt $attempt ($t s left)" | tee -a "$LOG"
  # its stdout is the table, printed once every unit it could run is done
  if timeout "$t" "$PY" -m benchmarks.device_check --phase=measure --time_limit="$t" \
    "${ARGS[@]}" >"$TABLE.part" 2>>"$LOG"; then
    mv "$TABLE.part" "$TABLE"
    break
  fi
  echo "measure phase ended with exit $?" | tee -a "$LOG"
done
rm -f "$TABLE.part"
if [ ! -s "$TABLE" ]; then # no measure phase finished: the table of what the results hold
  "$PY" -m benchmarks.device_check --phase=report "${ARGS[@]}" >"$TABLE" 2>>"$LOG"
fi
cat "$TABLE"
echo "elapsed $(elapsed) s of a $BUDGET s budget" | tee -a "$LOG"
