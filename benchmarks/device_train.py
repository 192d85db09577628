"""The device check's training-step rows: the training step of every method on its CIFAR-10
paper config in each precision mode, which says what a step costs on this device and how far it
is from the device's peak, and the "recipe" rows, an ESTIMATE of each paper recipe's wall time
projected from the step time at the config's own precision."""

import time

import jax

from benchmarks import device_programs, device_rows, device_setup, perf


def unit_train(spec: dict, store: str) -> dict:
    """Loads the unit's program, builds the fresh train state on the device (its init part),
    runs one step, then times spec["steps"] steps dispatched back to back as training does:
    {seconds (per step), first_step_s, load_s, ...}."""
    program = device_programs.build(spec)
    loaded, how = device_programs.load(program, store)
    state, batch = program.inputs(loaded)
    step = loaded["step"]
    start = time.perf_counter()
    state, metrics = step(state, batch)  # the state is donated: each call takes the last's
    jax.block_until_ready((state, metrics))
    first_step_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(spec["steps"]):
        state, metrics = step(state, batch)
    jax.block_until_ready((state, metrics))
    seconds = (time.perf_counter() - start) / max(spec["steps"], 1)
    context = device_setup.context(spec["mode"], spec["matmul_size"])
    return {"seconds": seconds, "first_step_s": first_step_s, **how, **context}


def train_row(record: dict, quick: bool) -> dict:
    spec = record["spec"]
    config = device_rows.config_label(device_setup.config_name(spec["method"]), quick)
    r, note = record.get("result", {}), ""
    if "compiled_here" in r:
        note = f"compiled in the measuring process: {r['compiled_here']['reason']}"
    return device_rows.rate_row("train", config, record, note)


def images_per_s(record: dict) -> float:
    return record["spec"]["batch"] / record["result"]["seconds"]


def recipe_rows(results: dict, devices: int, quick: bool, memory_limit: int | None) -> list:
    """Estimated wall time of each method's paper recipe on `devices` devices, data parallel:
    steps x (step time at the config's precision, scaled linearly to the per-device share of
    the global batch), with no communication or input cost; and the XLA peak memory scaled the
    same way, an upper bound (the state's share does not grow with the batch)."""
    rows = []
    for method in device_setup.METHODS:
        paper = device_setup.method_config(method, quick)
        mode = device_setup.config_mode(paper)
        record = results.get(f"train/{method}/{mode}", {})
        if "seconds" not in record.get("result", {}) or record["spec"]["quick"] != quick:
            continue
        measured_batch = record["spec"]["batch"]
        global_batch, steps = paper.training.batch_size, paper.training.num_steps
        per_device = global_batch / devices
        step_s = record["result"]["seconds"] * per_device / measured_batch  # linear in the batch
        wall = steps * step_s
        note = (
            f"ESTIMATE: {steps:,} steps x {step_s:.3g} s (per-device batch {per_device:g}, step "
            f"time scaled linearly from {measured_batch}; no communication or input cost) = "
            f"{device_rows.duration(wall)}"
        )
        peak = device_rows.compile_stats(record).get("xla_peak_bytes")
        if peak:
            needed = peak * max(per_device / measured_batch, 1.0)
            fits = "" if memory_limit is None else f" of {perf.gib(memory_limit)}"
            note += f"; XLA peak memory at most {perf.gib(int(needed))}{fits}"
        rows.append({
            "item": f"recipe on {devices} devices",
            "config": device_rows.config_label(device_setup.config_name(method), quick),
            "precision": mode, "batch": global_batch, "seconds": device_rows.num(wall, 4),
            "images/s": device_rows.num(global_batch / step_s, 4), "note": note,
        })  # fmt: skip
    return rows
