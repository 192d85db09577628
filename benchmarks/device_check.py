"""What the device present does with the paper networks, in ONE table.

    python -m benchmarks.device_check            # realistic sizes (an accelerator)
    python -m benchmarks.device_check --quick    # tiny networks, batch 2-4 (the CPU)
    bash benchmarks/device_check.sh              # the prepared accelerator run, in parts

Rows (columns: benchmarks/device_rows.py's COLUMNS):
- train: the jitted training step (loss, gradient, optimizer, EMAs) of cifar10_ict (NCSN++),
  cifar10_edm (DDPM++), imagenet64_ict (ADM) and slct_latent (sLCT's latent ADM with NsLN,
  configs/celebahq256_slct.py) at a per-device batch of 128 (32 px images, 32 x 32 latents) or
  32 (64 px), in each precision mode of benchmarks/perf.py: float32 at highest matmul precision,
  float32 at the device default, bfloat16 compute.
- sample: cifar10_ict's 1-step sampler and cifar10_edm's Heun (18 steps, 35 network
  evaluations), each at its config's precision.
- inception: FID Inception features of 32 px uint8 images (full float32, as evaluation runs).
- fid 50k: projected wall time of a 50k-sample FID on one device: 50k / sampler images/s +
  50k / Inception images/s (the reference statistics are computed once per dataset).
- max batch: the largest per-device batch whose training step compiles and runs without
  running out of memory, at the config's precision: doubling from the realistic batch, then
  bisection to within --max_batch_tolerance (multiples of 8; --quick: tiny sizes up to 2x).
- recipe: an ESTIMATE of the paper recipe's wall time on --recipe_devices such devices, data
  parallel: steps x (step time scaled linearly to the per-device share of the global batch),
  with no communication or input cost.

Columns: seconds per call (step, sampler call, feature batch; for fid and recipe the projected
total), images/s, FLOPs per call (benchmarks/perf.py `flops`: XLA's count of the lowered
module, the same on every device; a GPU's compiled count misses the cuDNN convolutions), MFU =
achieved FLOP/s over the device's published peak for the mode (benchmarks/perf.py; "n/a" for
an unknown device), the same over an n x n matmul measured in the same process in the same
mode, and the peak device memory (memory_stats()["peak_bytes_in_use"]; "n/a" where the
backend keeps none, as on CPUs).

On an accelerator every measurement ("unit") runs in a fresh worker process (--isolate=auto),
so its peak memory is its own and an out-of-memory error ends one unit, not the check; on the
CPU the units run in this process. Results go to --results as they finish (JSON, written
atomically); a later run with the same file skips the units it holds, so a check cut short by
a time limit continues where it stopped. The persistent compilation cache
(--compilation_cache_dir, as training) makes a repeated check compile nothing.

This file is the command line; the check lives in benchmarks/device_*.py: device_setup (the
networks, sizes and device context every unit shares), device_train (train and recipe rows),
device_sampling (sample, inception and fid rows), device_max_batch (max batch rows),
device_rows (the columns and shared cells), device_units (the plan; a unit in this process or
a worker) and device_table (the table).
"""

import gc
import json
import os
import sys
import time

from absl import app, flags

from benchmarks import device_max_batch, device_setup, device_table, device_units, perf
from cm import compile_cache
from cm.io import fileio
from configs import common

SECTIONS, NETWORK_NAMES = device_setup.SECTIONS, device_setup.NETWORK_NAMES
MIN_UNIT_SECONDS = 30  # under --time_limit, no unit starts with less time left

_QUICK = flags.DEFINE_bool("quick", False, "Tiny networks and batches (a CPU check).")
_SECTIONS = flags.DEFINE_list("sections", list(SECTIONS), f"Any of {list(SECTIONS)}.")
_NETWORKS = flags.DEFINE_list("networks", list(NETWORK_NAMES), f"Any of {list(NETWORK_NAMES)}.")
_PRECISIONS = flags.DEFINE_list(
    "precisions",
    list(perf.PRECISION_MODES)[:3],
    "Training-step precision modes (benchmarks/perf.py).",
)
_STEPS = flags.DEFINE_integer("steps", 0, "Timed calls per unit; 0 = 10 (--quick: 2).")
_RESULTS = flags.DEFINE_string("results", "", "JSON file of finished units ('' = none kept).")
_ISOLATE = flags.DEFINE_enum(
    "isolate", "auto", ["auto", "true", "false"], "A worker process per unit; auto: off on CPU."
)
_MAX_BATCH_CAP = flags.DEFINE_integer(
    "max_batch_cap", 4096, "Largest per-device batch tried (--quick: twice the batch)."
)
_MAX_BATCH_TOLERANCE = flags.DEFINE_float(
    "max_batch_tolerance", 0.125, "Bisection stops when the bracket is this fraction of it."
)
_MATMUL_SIZE = flags.DEFINE_integer(
    "matmul_size", 0, "Side of the peak matmul; 0 = 8192 (accelerator), 2048 (CPU), 256 (quick)."
)
_RECIPE_DEVICES = flags.DEFINE_integer("recipe_devices", 8, "Devices of the recipe estimate.")
_CACHE = flags.DEFINE_string(
    "compilation_cache_dir",
    common.base_config().training.compilation_cache_dir,
    "Persistent compilation cache ('' = off), as training.compilation_cache_dir.",
)
_TIME_LIMIT = flags.DEFINE_float(
    "time_limit",
    0,
    "Seconds for this run (0 = none): no unit starts after it, a worker is ended at it.",
)
_REPORT = flags.DEFINE_bool("report", False, "Only print the table of --results; run nothing.")
_REMAT = flags.DEFINE_bool(
    "remat", False, "Every network with model.remat=True (units and rows marked +remat)."
)
_UNIT = flags.DEFINE_string("unit", "", "Internal: run one unit (JSON) and print its result.")


def _load(path: str) -> dict:
    return fileio.read_json(path) if path and fileio.exists(path) else {}


def _check_flag_values():
    for values, valid, flag in (
        (_SECTIONS.value, SECTIONS, "sections"),
        (_NETWORKS.value, NETWORK_NAMES, "networks"),
        (_PRECISIONS.value, tuple(perf.PRECISION_MODES), "precisions"),
    ):
        unknown = sorted(set(values) - set(valid))
        if unknown:
            raise app.UsageError(f"Unknown --{flag} {unknown}; valid: {list(valid)}.")


def _run_units(units: list, results: dict, quick: bool, isolate: bool):
    """Runs the units `results` does not hold yet, adding each to it (and to --results) as it
    finishes, until --time_limit."""
    deadline = time.monotonic() + _TIME_LIMIT.value if _TIME_LIMIT.value > 0 else None
    for uid, spec in units:
        if uid in results and results[uid]["spec"].get("quick") == quick:
            continue
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left < MIN_UNIT_SECONDS:
            print(f"time limit: {uid} and later units not run", file=sys.stderr, flush=True)
            break
        if spec["kind"] == "max_batch":
            known = device_max_batch.known_fits(results, spec["network"], quick, spec["remat"])
            spec["known_fits"] = known
        print(f"running {uid} ...", file=sys.stderr, flush=True)
        if isolate:
            result = device_units.run_unit_in_worker(spec, _CACHE.value, left)
        else:
            result = device_units.run_unit(spec)
        if "timed out" in result.get("error", ""):
            print(f"time limit: {uid} cut; not recorded", file=sys.stderr, flush=True)
            break
        results[uid] = {"spec": spec, "result": result}
        if _RESULTS.value:
            fileio.write_json_atomic(_RESULTS.value, results)
        gc.collect()


def main(argv):
    del argv
    if not _UNIT.value:  # the orchestrator: no GPU memory held beside the workers'
        os.environ[device_units.PREALLOCATE] = "false"  # read when the backend starts, below
    compile_cache.configure(_CACHE.value)
    if _UNIT.value:  # a worker: one unit, one result line
        print("RESULT " + json.dumps(device_units.run_unit(json.loads(_UNIT.value))), flush=True)
        return
    _check_flag_values()
    quick = _QUICK.value
    platform = device_setup.device().platform
    steps = _STEPS.value or (2 if quick else 10)
    matmul_size = _MATMUL_SIZE.value or (256 if quick else 2048 if platform == "cpu" else 8192)
    isolate = _ISOLATE.value == "true" or (_ISOLATE.value == "auto" and platform != "cpu")
    results = _load(_RESULTS.value)
    units = device_units.plan(
        quick,
        _SECTIONS.value,
        _NETWORKS.value,
        _PRECISIONS.value,
        steps,
        matmul_size,
        remat=_REMAT.value,
        max_batch_cap=_MAX_BATCH_CAP.value,
        max_batch_tolerance=_MAX_BATCH_TOLERANCE.value,
    )
    if not _REPORT.value:
        _run_units(units, results, quick, isolate)
    print(device_table.render(results, quick, _RECIPE_DEVICES.value))


if __name__ == "__main__":
    app.run(main)
