"""The device check's units, one measurement each: which units a run plans and in what order
(issue 22's: training steps, profiles, samplers and the FID Inception; within the training
steps the rows the published references compare with first, then every method at TF32, in
bfloat16, at full float32), and the measure phase that runs them in one process, recording
each in the results as it finishes."""

import gc
import sys
import time

from benchmarks import (
    device_profile,
    device_programs,
    device_reference,
    device_sampling,
    device_setup,
    device_train,
    perf,
)

SECTIONS = ("train", "profile", "sample", "inception")  # the measurements, in run order
UNITS = {
    "train": device_train.unit_train,
    "profile": device_profile.unit_profile,
    "sample": device_sampling.unit_sample,
    "inception": device_sampling.unit_inception,
}
STEPS = {"train": 5, "profile": 3, "sample": 3, "inception": 3}  # timed calls per unit
QUICK_STEPS = 1
MAX_ATTEMPTS = 2  # a unit whose measuring process ended this often is recorded as failed
MIN_UNIT_SECONDS = 20  # under a deadline, no unit starts with less time left
CONFIG = "config"  # --profile_precision: the precision each config trains in


def plan(quick, sections, methods, modes, steps, matmul_size, profile_precision=CONFIG, only=()):
    """[(unit id, spec)] in run order. steps: timed calls per unit (0: STEPS, or QUICK_STEPS
    with quick); profile_precision: a mode of benchmarks/perf.py, or CONFIG; only: (method,
    mode) pairs, the train units kept (empty: every method in every mode)."""
    base = {"quick": quick, "matmul_size": matmul_size}
    count = lambda kind: steps or (QUICK_STEPS if quick else STEPS[kind])  # noqa: E731
    units = []
    if "train" in sections:
        pairs = [(m, mode) for m, mode in device_reference.comparable() if m in methods]
        pairs = [(m, mode) for m, mode in pairs if mode in modes]
        pairs += [(m, mode) for mode in modes for m in methods if (m, mode) not in pairs]
        pairs = [pair for pair in pairs if not only or pair in only]
        for method, mode in pairs:
            spec = {**base, "kind": "train", "method": method, "mode": mode}
            spec |= {"batch": device_setup.train_batch(quick), "steps": count("train")}
            units.append((f"train/{method}/{mode}", spec))
    if "profile" in sections:
        for method in device_profile.PROFILED:
            mode = profile_precision
            if mode == CONFIG:
                mode = device_setup.config_mode(device_setup.method_config(method, quick))
            spec = {**base, "kind": "profile", "method": method, "mode": mode}
            spec |= {"batch": device_setup.train_batch(quick), "steps": count("profile")}
            spec["program"] = f"train/{method}/{mode}"
            units.append((f"profile/{method}/{mode}", spec))
    paper = device_setup.method_config(device_setup.SAMPLER_METHOD, quick)
    if "sample" in sections:
        batch = device_setup.QUICK_BATCH if quick else paper.sampling.batch_size
        for sampler in device_setup.SAMPLERS:
            spec = {**base, "kind": "sample", "method": device_setup.SAMPLER_METHOD}
            spec |= {"sampler": sampler, "batch": batch, "steps": count("sample")}
            units.append((f"sample/{device_setup.SAMPLER_METHOD}/{sampler}", spec))
    if "inception" in sections:
        batch = device_setup.QUICK_INCEPTION_BATCH if quick else paper.eval.batch_size
        spec = {**base, "kind": "inception", "batch": batch, "steps": count("inception")}
        units.append(("inception", spec))
    return units


def finished(record: dict | None, spec: dict) -> bool:
    return bool(record) and "result" in record and record["spec"]["quick"] == spec["quick"]


def run_unit(spec: dict, store: str) -> dict:
    try:
        return UNITS[spec["kind"]](spec, store)
    except Exception as e:  # noqa: BLE001 (a failed unit is a row, not the end of the check)
        return {"error": f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"}


def _refusal(record: dict, spec: dict, attempts: int) -> str | None:
    """Why a unit is not run: it ended its measuring process MAX_ATTEMPTS times, or its XLA
    peak memory exceeds the device's."""
    if attempts >= MAX_ATTEMPTS:
        return (
            f"the measuring process ended during this unit {attempts} times (out of memory, or "
            "cut by a time limit)"
        )
    peak = record.get("compile", {}).get("xla_peak_bytes")
    limit = perf.memory_limit(device_setup.device())
    if peak and limit and peak > limit:
        return f"XLA's peak memory {perf.gib(peak)} exceeds the device's {perf.gib(limit)}"
    return None


def run_units(units: list, results: dict, store: str, seconds: float | None, save) -> list:
    """Runs the units the results do not hold (those whose programs the store holds first),
    adding each to results["units"] and calling save() before (an attempt) and after it, until
    `seconds` (None: no limit); returns the ids not run."""
    deadline = None if seconds is None else time.monotonic() + seconds
    records = results.setdefault("units", {})
    todo = [(uid, s) for uid, s in units if not finished(records.get(uid), s)]
    ready = [(u, s) for u, s in todo if device_programs.stored(store, s)]
    todo = ready + [(u, s) for u, s in todo if (u, s) not in ready]
    for k, (uid, spec) in enumerate(todo):
        if deadline is not None and deadline - time.monotonic() < MIN_UNIT_SECONDS:
            print(f"time limit: {uid} and later units not run", file=sys.stderr, flush=True)
            return [u for u, _ in todo[k:]]
        record = records.setdefault(uid, {})
        attempts = record.get("attempts", 0)
        record |= {"spec": spec, "attempts": attempts + 1}
        save()
        refusal = _refusal(record, spec, attempts)
        print(f"running {uid} ...", file=sys.stderr, flush=True)
        record["result"] = {"error": refusal} if refusal else run_unit(spec, store)
        save()
        gc.collect()
    return []
