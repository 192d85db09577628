"""The device check's units, one measurement each: which units a run plans and in what order,
and how one runs, in this process or in a fresh worker process (its peak memory its own, an
out-of-memory kill the end of one unit, not of the check). A failed unit is a result too."""

import json
import os
import subprocess
import sys

from benchmarks import device_max_batch, device_sampling, device_setup, device_train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# JAX on GPUs takes 75 % of the memory when the backend starts unless this is "false": the
# orchestrator turns it off for itself, workers get the user's own setting.
PREALLOCATE = "XLA_PYTHON_CLIENT_PREALLOCATE"
_USER_PREALLOCATE = os.environ.get(PREALLOCATE)

UNITS = {
    "train": device_train.unit_train,
    "sample": device_sampling.unit_sample,
    "inception": device_sampling.unit_inception,
    "max_batch": device_max_batch.unit_max_batch,
}


def plan(
    quick: bool,
    sections,
    networks,
    precisions,
    steps: int,
    matmul_size: int,
    *,
    remat: bool,
    max_batch_cap: int,
    max_batch_tolerance: float,
) -> list:
    """[(unit id, spec)] in run order; with remat the network units' ids end in +remat. A
    max_batch unit searches up to max_batch_cap (--quick: twice the batch), to within
    max_batch_tolerance."""
    units = []
    base = {"quick": quick, "steps": steps, "matmul_size": matmul_size, "remat": remat}
    mark = "+remat" if remat else ""
    batch_for = device_setup.batch_for
    if "train" in sections:
        for name in networks:
            for mode in precisions:
                spec = {**base, "kind": "train", "network": name, "mode": mode}
                units.append(
                    (f"train/{name}{mark}/{mode}", {**spec, "batch": batch_for(name, quick)})
                )
    if "sample" in sections:
        for name, kind in device_sampling.SAMPLERS:
            if name in networks:
                sampler = device_sampling.sampler_name(name, kind, quick)
                spec = {**base, "kind": "sample", "network": name, "sampler": sampler}
                spec["batch"] = batch_for(name, quick)
                units.append((f"sample/{name}{mark}/{sampler}", spec))
    if "inception" in sections:
        spec = {**base, "kind": "inception", "image_size": device_sampling.INCEPTION_IMAGE_SIZE}
        units.append(("inception", {**spec, "batch": batch_for("cifar10_ict", quick)}))
    if "max_batch" in sections:
        for name in networks:
            start = batch_for(name, quick)
            cap = 2 * start if quick else max(start, max_batch_cap)
            spec = {**base, "kind": "max_batch", "network": name, "start": start, "cap": cap}
            spec |= {"multiple": 1 if quick else 8, "tolerance": max_batch_tolerance}
            units.append((f"max_batch/{name}{mark}", spec))
    return units


def run_unit(spec: dict) -> dict:
    try:
        return UNITS[spec["kind"]](spec)
    except Exception as e:  # noqa: BLE001 (a failed unit is a row, not the end of the check)
        text = " ".join(str(e).split())
        return {"error": f"{type(e).__name__}: {text[:300]}", **device_setup.context(spec, "")}


def run_unit_in_worker(spec: dict, cache_dir: str, timeout: float | None = None) -> dict:
    """run_unit in a fresh process of benchmarks/device_check.py --unit (own peak memory; an OOM
    kill ends only this unit), with the persistent compilation cache at cache_dir."""
    argv = [sys.executable, "-m", "benchmarks.device_check", f"--unit={json.dumps(spec)}"]
    argv.append(f"--compilation_cache_dir={cache_dir}")
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop(PREALLOCATE, None)  # the worker allocates as training does (the user's setting)
    if _USER_PREALLOCATE is not None:
        env[PREALLOCATE] = _USER_PREALLOCATE
    try:
        proc = subprocess.run(
            argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"error": f"worker timed out after {timeout} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = [line for line in proc.stderr.splitlines() if line.strip()][-1:] or ["no output"]
    return {"error": f"worker exit {proc.returncode}: {tail[0][:300]}"}
