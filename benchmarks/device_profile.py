"""The device check's profile units: where the iCT and MeanFlow training steps spend their device
time, at the precision each config trains in (the fastest its precision policy holds safe; or
--profile_precision): the step runs a few times under jax.profiler, and the trace's device
kernels are summed by name (the top kernels) and by category of work (convolutions and matmuls,
normalization, resampling, attention, elementwise, loss/optimizer/EMA; benchmarks/profile_step.py
reads the trace and the compiled module's text)."""

import glob
import gzip
import json
import os
import shutil
import tempfile

import jax

from benchmarks import device_programs, device_setup, perf, profile_step

PROFILED = ("ict", "meanflow")  # issue 22: the consistency-training and the JVP step
TOP_KERNELS = 10


def unit_profile(spec: dict, store: str) -> dict:
    """The program of a train unit (spec["program"]) loaded from the store, one warm-up
    call, then spec["steps"] profiled calls; the categories come from the compiled module's
    text."""
    program = device_programs.build(spec)
    loaded, how = device_programs.load(program, store)
    compiled = loaded["step"]
    state, batch = program.inputs(loaded)
    state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    steps = spec["steps"]
    trace_dir = tempfile.mkdtemp(prefix="device_profile_")
    try:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            for _ in range(steps):
                state, metrics = compiled(state, batch)
            jax.block_until_ready((state, metrics))
        path = glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)
        with gzip.open(path[0]) as f:
            events = profile_step.device_events(json.load(f))
    finally:
        shutil.rmtree(trace_dir, ignore_errors=True)
    index = profile_step.hlo_index(compiled.as_text())
    categories = profile_step.category_totals(events, index, steps)
    return {
        "mode": spec["mode"],
        "device_kind": device_setup.device().device_kind,
        "categories": categories,  # ms per step by category
        "top": profile_step.kernel_table(events, steps, TOP_KERNELS),
        "events": len(events),
        "load_s": how["load_s"],
    }


def profile_tables(record: dict, quick: bool) -> str:
    """The categories and the top kernels of one profile unit, with a title line."""
    spec, r = record["spec"], record.get("result", {})
    title = f"profile: cifar10_{spec['method']}{' (tiny)' if quick else ''}, {spec['mode']}"
    title += f", batch {spec['batch']}, {spec['steps']} steps"
    if "error" in r:
        return f"{title}: failed: {r['error']}"
    traced = sum(r["categories"].values())
    share = 100 * r["categories"]["conv/matmul"] / traced if traced else float("nan")
    title += f"; {traced:.3f} ms of device kernels per step, {share:.1f} % convolutions/matmuls"
    categories = perf.format_table(profile_step.category_table(r["categories"]))
    return "\n".join([title, categories, "", perf.format_table(r["top"])])
