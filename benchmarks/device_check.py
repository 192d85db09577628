"""What the device present does with every method's training step, sampler and FID network, in
ONE table (issue 22).

    bash benchmarks/device_check.sh                            # on a lent accelerator
    DEVICE_CHECK_FLAGS=--quick bash benchmarks/device_check.sh # the same on a CPU, tiny networks
    python -m benchmarks.device_check --quick                  # phases compile, measure, report
    python -m benchmarks.device_check --phase=report --results=FILE   # a results file's table

Units, in run order (benchmarks/device_units.py):
- train: the training step (loss, gradient, optimizer, EMAs) of every method of the method table
  on configs/cifar10_<method>.py at batch 128 per device (--quick: 4), in each precision mode
  of benchmarks/perf.py: TF32 (the device default), bfloat16 compute, full float32 (highest);
  the rows that a published reference compares with (benchmarks/device_reference.py) first.
- profile: the iCT and MeanFlow steps at their config's precision under jax.profiler: the top
  kernels, and device time by category of work (benchmarks/device_profile.py).
- sample: cifar10_ict's 1-step and 2-step samplers at the config's sampling batch (1024).
- inception: the FID Inception features of 32 px uint8 images at the evaluation batch (256;
  --quick: 1, the real network).
Derived rows: each reference's published images/s per GPU with cm's ratio, the projected wall
time of a 50k-sample FID, and an ESTIMATE of each paper recipe's wall time on --recipe_devices
devices.

Phases (--phase; "all" runs the three): compile: worker processes (--jobs) compile every
program at once into the program store (--store), running nothing (benchmarks/
device_compile.py); measure: one process loads each stored program and times it (a program the
store lacks is compiled there, with the persistent compilation cache); report: the table of
the results file (benchmarks/device_table.py). Results go to --results as each compile and
unit finishes (JSON, written atomically, and to --results_copy); a later run with the same file
skips what it holds, so a run cut by a time limit continues where it stopped.

Columns: seconds per call, images/s, GFLOP per call (benchmarks/perf.py `flops`: the lowered
module's count, the same on every device), MFU = achieved FLOP/s over the device's published
peak for the mode ("n/a" for an unknown device), the same over an n x n matmul measured in the
measuring process in the same mode, XLA's peak memory of the compiled program, and its compile
seconds.
"""

import os
import sys

from absl import app, flags

from benchmarks import (
    device_compile,
    device_programs,
    device_setup,
    device_table,
    device_units,
    perf,
)
from cm import compile_cache
from cm.io import fileio

PHASES = ("all", "compile", "measure", "report")

_PHASE = flags.DEFINE_enum("phase", "all", PHASES, "What to run (module docstring).")
_QUICK = flags.DEFINE_bool("quick", False, "Tiny networks and batches (a CPU check).")
_SECTIONS = flags.DEFINE_list("sections", list(device_units.SECTIONS), "Units to run.")
_METHODS = flags.DEFINE_list("methods", list(device_setup.METHODS), "Methods of the train rows.")
_PRECISIONS = flags.DEFINE_list(
    "precisions", list(device_setup.MODES), "Precision modes of the train rows, in run order."
)
_TRAIN_UNITS = flags.DEFINE_list(
    "train_units",
    [],
    "Only these train units, as method:mode with '_' for a space in the mode (ict:f32_highest); "
    "empty: every method in every mode.",
)
_PROFILE_PRECISION = flags.DEFINE_string(
    "profile_precision",
    device_units.CONFIG,
    "Precision mode of the profiled steps ('_' for a space); 'config': each config's own.",
)
_STEPS = flags.DEFINE_integer(
    "steps", 0, f"Timed calls per unit; 0 = {device_units.STEPS} (--quick: 1)."
)
_JOBS = flags.DEFINE_integer(
    "jobs", 0, "Compile worker processes; 0 = half the host's cores, at most 8."
)
_RESULTS = flags.DEFINE_string("results", "", "JSON file of the results ('' = none kept).")
_RESULTS_COPY = flags.DEFINE_string("results_copy", "", "A second file the results go to.")
_STORE = flags.DEFINE_string(
    "store", "runs/device_check/programs", "Folder of the compiled programs."
)
_MATMUL_SIZE = flags.DEFINE_integer(
    "matmul_size", 0, "Side of the peak matmul; 0 = 8192 (accelerator), 2048 (CPU), 256 (quick)."
)
_RECIPE_DEVICES = flags.DEFINE_integer("recipe_devices", 8, "Devices of the recipe estimate.")
_CACHE = flags.DEFINE_string(
    "compilation_cache_dir",
    "~/.cache/cm/jax",
    "Persistent compilation cache ('' = off), as training.compilation_cache_dir.",
)
_TIME_LIMIT = flags.DEFINE_float(
    "time_limit", 0, "Seconds for this phase (0 = none): compile workers are ended at it."
)
_COMPILE_WORKER = flags.DEFINE_bool("compile_worker", False, "Internal: a compile worker.")


def _check_flags():
    """One ValueError sentence for a flag value that names nothing."""
    for values, valid, flag in (
        (_SECTIONS.value, device_units.SECTIONS, "sections"),
        (_METHODS.value, device_setup.METHODS, "methods"),
        (_precisions(), device_setup.MODES, "precisions"),
    ):
        unknown = sorted(set(values) - set(valid))
        if unknown:
            raise ValueError(f"Unknown --{flag} {unknown}; set it to some of {list(valid)}.")
    for method, mode in _train_units():
        if method not in device_setup.METHODS or mode not in device_setup.MODES:
            raise ValueError(
                f"--train_units has {method}:{mode}; write each as method:mode, a method of "
                f"{list(device_setup.METHODS)} and a mode of {list(device_setup.MODES)} "
                "('_' for its space)."
            )
    profile = _mode(_PROFILE_PRECISION.value)
    if profile not in (device_units.CONFIG, *perf.PRECISION_MODES):
        valid = [device_units.CONFIG, *perf.PRECISION_MODES]
        raise ValueError(f"Unknown --profile_precision {profile!r}; set it to one of {valid}.")
    for flag in (_STEPS, _JOBS, _MATMUL_SIZE, _TIME_LIMIT):
        if flag.value < 0:
            raise ValueError(f"--{flag.name} is {flag.value}; set it to 0 (default) or more.")


def _mode(name: str) -> str:
    """A precision mode as a flag may write it: '_' for its space (f32_highest), so that a
    shell variable of flags needs no quotes."""
    return name.replace("_", " ")


def _train_units() -> list[tuple[str, str]]:
    """--train_units as (method, mode) pairs."""
    pairs = [unit.partition(":") for unit in _TRAIN_UNITS.value]
    return [(method, _mode(mode)) for method, _, mode in pairs]


def _precisions() -> list[str]:
    return [_mode(name) for name in _PRECISIONS.value]


def _matmul_size(quick: bool) -> int:
    if _MATMUL_SIZE.value or _PHASE.value in ("compile", "report"):
        return _MATMUL_SIZE.value  # the planned specs hold it; only the measure phase uses it
    return 256 if quick else 2048 if device_setup.device().platform == "cpu" else 8192


def _saver(results: dict):
    def save():
        for path in (_RESULTS.value, _RESULTS_COPY.value):
            if path:
                fileio.write_json_atomic(path, results)

    return save


def _compile(units: list, results: dict, save):
    records = results.setdefault("units", {})
    tasks = [
        (uid, spec)
        for uid, spec in device_compile.program_tasks(units)
        if not device_units.finished(records.get(uid), spec)
        and not device_programs.stored(_STORE.value, spec)
    ]

    def record(uid, result):
        records.setdefault(uid, {})["compile"] = result
        records[uid].setdefault("spec", dict(tasks)[uid])
        save()

    jobs = _JOBS.value or device_compile.auto_jobs(os.cpu_count())
    seconds = _TIME_LIMIT.value or float("inf")
    summary = device_compile.run_phase(tasks, jobs, _STORE.value, seconds, record)
    results.setdefault("compile_phases", []).append(summary)
    save()


def main(argv):
    del argv
    if _COMPILE_WORKER.value:
        compile_cache.configure(_CACHE.value)
        device_compile.worker_main(_STORE.value)
        return
    _check_flags()
    if _PHASE.value != "measure":  # nothing here holds device memory beside the workers'
        os.environ[device_compile.PREALLOCATE] = "false"  # read when a backend starts
    quick = _QUICK.value
    results = fileio.read_json(_RESULTS.value) if fileio.exists(_RESULTS.value or "") else {}
    save = _saver(results)
    units = device_units.plan(
        quick,
        _SECTIONS.value,
        _METHODS.value,
        _precisions(),
        _STEPS.value,
        _matmul_size(quick),
        _mode(_PROFILE_PRECISION.value),
        _train_units(),
    )
    if _PHASE.value in ("all", "compile"):
        _compile(units, results, save)
    if _PHASE.value in ("all", "measure"):
        compile_cache.configure(_CACHE.value)
        seconds = _TIME_LIMIT.value or None
        device_units.run_units(units, results, _STORE.value, seconds, save)
    if _PHASE.value != "compile":
        print(device_table.render(results, quick, _RECIPE_DEVICES.value))


def run(argv):
    """main, with a bad flag value as one line on stderr and exit status 2."""
    try:
        main(argv)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(run)
