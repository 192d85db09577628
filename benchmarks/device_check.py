"""What the device present does with the paper networks, in ONE table.

    python -m benchmarks.device_check            # realistic sizes (an accelerator)
    python -m benchmarks.device_check --quick    # tiny networks, batch 2-4 (the CPU)
    bash benchmarks/device_check.sh              # the prepared accelerator run, in parts

Rows (columns: COLUMNS):
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
total), images/s, XLA's FLOP count per call (compiled.cost_analysis()), MFU = achieved FLOP/s
over the device's published peak for the mode (benchmarks/perf.py; "n/a" for an unknown device), the
same over an n x n matmul measured in the same process in the same mode, and the peak device
memory (memory_stats()["peak_bytes_in_use"]; "n/a" where the backend keeps none, as on CPUs).

On an accelerator every measurement ("unit") runs in a fresh worker process (--isolate=auto),
so its peak memory is its own and an out-of-memory error ends one unit, not the check; on the
CPU the units run in this process. Results go to --results as they finish (JSON, written
atomically); a later run with the same file skips the units it holds, so a check cut short by
a time limit continues where it stopped. The persistent compilation cache
(--compilation_cache_dir, as training) makes a repeated check compile nothing.
"""

import gc
import json
import math
import os
import subprocess
import sys
import time

import jax
from absl import app, flags

from benchmarks import inception_throughput, measure, perf
from cm import compile_cache, experiment
from cm.io import fileio
from cm.models import count_params
from configs import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NETWORK_NAMES = ("cifar10_ict", "cifar10_edm", "imagenet64_ict", "slct_latent")
SECTIONS = ("train", "sample", "inception", "max_batch")
SAMPLERS = (("cifar10_ict", "1step"), ("cifar10_edm", "heun18"))  # 1 and 35 evaluations
FID_SAMPLES = 50_000  # the published protocol (docs/methods.md section 7)
INCEPTION_IMAGE_SIZE = 32  # CIFAR-10 samples; resized to 299 inside the feature path
COLUMNS = (
    "item",
    "network",
    "precision",
    "batch",
    "seconds",
    "images/s",
    "GFLOP",
    "MFU",
    "of measured peak",
    "peak memory",
    "note",
)
# --quick: every network shrunk to one 8 x 8 level of 8 channels with attention, the family's
# switches (embedding, blocks, norm, labels, objective) kept.
TINY = {
    "model.channels": 8,
    "model.channel_mult": (1,),
    "model.num_blocks": 1,
    "model.num_groups": 4,
    "model.attn_resolutions": (8,),
    "data.image_size": 8,
}
REALISTIC_BATCH = {32: 128, 64: 32}  # per device, by image (or latent) side
QUICK_BATCH = {32: 4, 64: 2}
MIN_UNIT_SECONDS = 30  # under --time_limit, no unit starts with less time left
# JAX on GPUs takes 75 % of the memory when the backend starts unless this is "false": the
# orchestrator turns it off for itself, workers get the user's own setting.
PREALLOCATE = "XLA_PYTHON_CLIENT_PREALLOCATE"
_USER_PREALLOCATE = os.environ.get(PREALLOCATE)

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


# ----------------------------------------------------------------------------- configs


def network_config(name: str, batch: int, quick: bool, mode: str | None = None, remat=False):
    """The paper config of `name` at a per-device batch (one device), in a precision mode
    (None: the config's own), shrunk by TINY when quick, with rematerialized blocks if remat."""
    c = measure.NETWORKS[name]()
    c.model.remat = remat
    if quick:
        for dotted, value in TINY.items():
            section, field = dotted.split(".")
            c[section][field] = value
    if mode is not None:
        c.model.dtype, c.model.matmul_precision, _ = perf.PRECISION_MODES[mode]
    c.training.batch_size = batch
    if c.method.ot_coupling:  # groups must divide the batch; the group size changes no FLOPs
        c.method.ot_group_size = math.gcd(batch, c.method.ot_group_size)
    return c


def config_mode(config) -> str:
    """The precision mode (benchmarks/perf.py) a config trains in."""
    if config.model.dtype == "bfloat16":
        return "bf16"
    return f"f32 {config.model.matmul_precision}"


def batch_for(name: str, quick: bool) -> int:
    side = 64 if measure.NETWORKS[name]().data.image_size == 64 else 32
    return (QUICK_BATCH if quick else REALISTIC_BATCH)[side]


# ----------------------------------------------------------------------------- units


def _device():
    return jax.devices()[0]


def _one_device_experiment(config):
    return experiment.build(config, devices=[_device()])


_MATMUL_PEAKS: dict = {}


def _measured_peak(mode: str, size: int) -> float:
    """The matmul peak of a mode, measured once per process."""
    if mode not in _MATMUL_PEAKS:
        _MATMUL_PEAKS[mode] = perf.matmul_peak(size, mode)
    return _MATMUL_PEAKS[mode]


def _common(spec: dict, mode: str) -> dict:
    """What every unit reports beside its own numbers (the peak memory before the matmul that
    measures the peak FLOP/s adds its own)."""
    kind, known_mode = _device().device_kind, mode in perf.PRECISION_MODES
    out = {"device_kind": kind, "platform": _device().platform, "mode": mode}
    out["peak_memory"] = perf.peak_memory(_device())
    out["published_peak"] = perf.published_peak(kind, mode) if known_mode else None
    out["measured_peak"] = _measured_peak(mode, spec["matmul_size"]) if known_mode else None
    return out


def unit_train(spec: dict) -> dict:
    config = network_config(
        spec["network"], spec["batch"], spec["quick"], spec["mode"], spec["remat"]
    )
    exp = _one_device_experiment(config)
    costs, state = measure.train_step(config, exp, spec["steps"])
    costs["params"] = count_params(state.params)
    del state
    return {**costs, "seconds": costs["step_s"], **_common(spec, spec["mode"])}


def unit_sample(spec: dict) -> dict:
    config = network_config(spec["network"], spec["batch"], spec["quick"], remat=spec["remat"])
    exp = _one_device_experiment(config)
    params = jax.jit(lambda: experiment.init_params(exp, config))()
    result = measure.sampler(config, exp, params, spec["sampler"], spec["batch"], spec["steps"])
    return {**result, **_common(spec, config_mode(config))}


def unit_inception(spec: dict) -> dict:
    mesh = experiment.make_mesh([_device()])
    result = inception_throughput.measure(spec["batch"], spec["steps"], spec["image_size"], mesh)
    return {**result, **_common(spec, "f32 highest")}  # the Inception runs at HIGHEST


def largest_fitting(fits, start: int, cap: int, multiple: int = 1, tolerance: float = 0.0):
    """The largest batch b <= cap, a multiple of `multiple`, with fits(b): doubling from `start`
    (halving when it does not fit), then bisection until the bracket is at most
    max(multiple, tolerance * b). Returns (b, or 0 when none fits, [(batch, fits)] in order).
    Assumes fits is monotone (what fits, fits at every smaller batch)."""
    probes = []

    def probe(b: int) -> bool:
        ok = bool(fits(b))
        probes.append((b, ok))
        return ok

    lo, hi = 0, None  # lo fits (0: nothing yet), hi does not (None: not found yet)
    b = max(multiple, min(start, cap) // multiple * multiple)
    if probe(b):
        lo = b
        while lo < cap and hi is None:
            b = max(lo + multiple, min(2 * lo, cap) // multiple * multiple)
            if b > cap:
                break
            lo, hi = (b, None) if probe(b) else (lo, b)
    else:
        hi = b
        while lo == 0 and hi > multiple:
            b = max(multiple, hi // 2 // multiple * multiple)
            lo, hi = (b, hi) if probe(b) else (0, b)
    while hi is not None and lo and hi - lo > max(multiple, tolerance * lo):
        mid = (lo + hi) // 2 // multiple * multiple
        if mid <= lo:
            break
        lo, hi = (mid, hi) if probe(mid) else (lo, mid)
    return lo, probes


def unit_max_batch(spec: dict) -> dict:
    name, quick, remat = spec["network"], spec["quick"], spec["remat"]
    config = network_config(name, spec["start"], quick, remat=remat)
    exp = _one_device_experiment(config)
    host_state = jax.device_get(experiment.init_state(exp, config))  # reused by every probe
    known = set(spec.get("known_fits", ()))

    def fits(batch: int) -> bool:
        if batch in known:
            return True
        c = network_config(name, batch, quick, remat=remat)
        state = jax.device_put(host_state, exp.replicated)
        try:
            measure.train_step(c, _one_device_experiment(c), steps=0, state=state)
            return True
        except Exception as e:  # noqa: BLE001 (only out-of-memory is an answer)
            if perf.is_out_of_memory(e):
                return False
            raise
        finally:
            del state
            gc.collect()

    largest, probes = largest_fitting(
        fits, spec["start"], spec["cap"], spec["multiple"], spec["tolerance"]
    )
    common_fields = _common(spec, config_mode(config))
    return {"largest": largest, "probes": probes, "cap": spec["cap"], **common_fields}


UNITS = {
    "train": unit_train,
    "sample": unit_sample,
    "inception": unit_inception,
    "max_batch": unit_max_batch,
}


def run_unit(spec: dict) -> dict:
    try:
        return UNITS[spec["kind"]](spec)
    except Exception as e:  # noqa: BLE001 (a failed unit is a row, not the end of the check)
        text = " ".join(str(e).split())
        return {"error": f"{type(e).__name__}: {text[:300]}", **_common(spec, "")}


def run_unit_in_worker(spec: dict, timeout: float | None = None) -> dict:
    """run_unit in a fresh process (own peak memory; an OOM kill ends only this unit)."""
    argv = [sys.executable, "-m", "benchmarks.device_check", f"--unit={json.dumps(spec)}"]
    argv.append(f"--compilation_cache_dir={_CACHE.value}")
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


# ----------------------------------------------------------------------------- plan


def plan(
    quick: bool, sections, networks, precisions, steps: int, matmul_size: int, remat=False
) -> list:
    """[(unit id, spec)] in run order; with remat the network units' ids end in +remat."""
    units = []
    base = {"quick": quick, "steps": steps, "matmul_size": matmul_size, "remat": remat}
    mark = "+remat" if remat else ""
    if "train" in sections:
        for name in networks:
            for mode in precisions:
                spec = {**base, "kind": "train", "network": name, "mode": mode}
                units.append(
                    (f"train/{name}{mark}/{mode}", {**spec, "batch": batch_for(name, quick)})
                )
    if "sample" in sections:
        for name, sampler in SAMPLERS:
            if name in networks:
                spec = {**base, "kind": "sample", "network": name, "sampler": sampler}
                spec["batch"] = batch_for(name, quick)
                units.append((f"sample/{name}{mark}/{sampler}", spec))
    if "inception" in sections:
        spec = {**base, "kind": "inception", "image_size": INCEPTION_IMAGE_SIZE}
        units.append(("inception", {**spec, "batch": batch_for("cifar10_ict", quick)}))
    if "max_batch" in sections:
        for name in networks:
            start = batch_for(name, quick)
            cap = 2 * start if quick else max(start, _MAX_BATCH_CAP.value)
            spec = {**base, "kind": "max_batch", "network": name, "start": start, "cap": cap}
            spec |= {"multiple": 1 if quick else 8, "tolerance": _MAX_BATCH_TOLERANCE.value}
            units.append((f"max_batch/{name}{mark}", spec))
    return units


def _known_fits(results: dict, name: str, quick: bool, remat: bool) -> list[int]:
    """Batches the train rows already showed to fit at the config's precision."""
    mode = config_mode(network_config(name, 1, quick))
    mark = "+remat" if remat else ""
    done = results.get(f"train/{name}{mark}/{mode}", {}).get("result", {})
    return [batch_for(name, quick)] if done and "error" not in done else []


# ----------------------------------------------------------------------------- table


def _num(value, digits: int = 3) -> str:
    return "n/a" if value is None or value != value else f"{value:.{digits}g}"


def _rate_row(item, network, mode, batch, r, note="") -> dict:
    """A row of a unit that ran a program `batch` images per call."""
    if "error" in r:
        return {"item": item, "network": network, "precision": mode, "batch": batch,
                "note": f"failed: {r['error']}"}  # fmt: skip
    achieved = r["flops"] / r["seconds"] if r.get("flops") == r.get("flops") else None
    return {
        "item": item,
        "network": network,
        "precision": mode,
        "batch": batch,
        "seconds": _num(r["seconds"], 4),
        "images/s": _num(batch / r["seconds"], 4),
        "GFLOP": _num(r["flops"] / 1e9, 4),
        "MFU": perf.fraction(achieved, r.get("published_peak")),
        "of measured peak": perf.fraction(achieved, r.get("measured_peak")),
        "peak memory": perf.gib(r.get("peak_memory")),
        "note": note,
    }


def _duration(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds:.0f} s"


def _order(spec: dict) -> tuple:
    """Table order: section, then network (+remat after it), then precision mode."""
    network = spec.get("network", "")
    return (
        SECTIONS.index(spec["kind"]),
        NETWORK_NAMES.index(network) if network in NETWORK_NAMES else -1,
        bool(spec.get("remat")),
        list(perf.PRECISION_MODES).index(spec["mode"]) if "mode" in spec else -1,
    )


def table_rows(results: dict, quick: bool, recipe_devices: int) -> list[dict]:
    """The table's rows from the finished units (derived rows where their inputs exist)."""
    tag = " (tiny)" if quick else ""
    rows, rates = [], {}
    for uid, record in sorted(results.items(), key=lambda item: _order(item[1]["spec"])):
        spec, r = record["spec"], record["result"]
        kind, network = spec["kind"], spec.get("network", "")
        network += " +remat" if spec.get("remat") else ""
        if kind == "train":
            note = "" if "error" in r else f"compile {r['compile_s']:.1f} s, XLA temp "
            note += "" if "error" in r else perf.gib(r.get("temp_bytes"))
            rows.append(_rate_row("train", network + tag, spec["mode"], spec["batch"], r, note))
        elif kind == "sample":
            item = "sample 1-step" if spec["sampler"] == "1step" else "sample Heun (35 evals)"
            rows.append(_rate_row(item, network + tag, r.get("mode", ""), spec["batch"], r))
            if "error" not in r:
                rates[uid] = (spec["batch"] / r["seconds"], item, network, r.get("mode", ""))
        elif kind == "inception":
            note = f"{spec['image_size']} px uint8 -> 299"
            row = _rate_row("inception", "FID Inception", "f32 highest", spec["batch"], r, note)
            rows.append(row)
            if "error" not in r:
                rates["inception"] = (spec["batch"] / r["seconds"],)
        elif kind == "max_batch":
            row = {"item": "max batch", "network": network + tag, "precision": r.get("mode", "")}
            if "error" in r:
                rows.append({**row, "note": f"failed: {r['error']}"})
                continue
            known = set(spec.get("known_fits", ()))
            tried = ", ".join(
                f"{b} {'ok' if ok else 'OOM'}{' (train row)' if b in known else ''}"
                for b, ok in r["probes"]
            )
            capped = " (the cap)" if r["largest"] >= r["cap"] else ""
            note = f"tried {tried}{capped}"
            memory = perf.gib(r.get("peak_memory"))
            rows.append({**row, "batch": r["largest"], "peak memory": memory, "note": note})
    if "inception" in rates:
        for uid, value in rates.items():
            if uid == "inception":
                continue
            sample_rate, item, network, mode = value
            sampling_s, features_s = FID_SAMPLES / sample_rate, FID_SAMPLES / rates["inception"][0]
            total = sampling_s + features_s
            rows.append({
                "item": f"fid 50k, {item.removeprefix('sample ')}", "network": network + tag,
                "precision": mode, "batch": FID_SAMPLES, "seconds": _num(total, 4),
                "images/s": _num(FID_SAMPLES / total, 4),
                "note": f"projected: sampling {_duration(sampling_s)} + features "
                f"{_duration(features_s)} on 1 device",
            })  # fmt: skip
    rows += recipe_rows(results, quick, recipe_devices, tag)
    return rows


def recipe_rows(results: dict, quick: bool, devices: int, tag: str) -> list[dict]:
    """Estimated wall time of each paper recipe on `devices` devices (see module docstring)."""
    rows = []
    for name in NETWORK_NAMES:
        paper = measure.NETWORKS[name]()
        mode = config_mode(paper)
        record = results.get(f"train/{name}/{mode}")
        if record is None or "error" in record["result"]:
            continue
        r, measured_batch = record["result"], record["spec"]["batch"]
        global_batch, steps = paper.training.batch_size, paper.training.num_steps
        per_device = global_batch / devices
        step_s = r["step_s"] * per_device / measured_batch  # linear in the batch
        wall = steps * step_s
        note = (
            f"ESTIMATE: {steps:,} steps x {step_s:.3g} s (per-device batch {per_device:g}, "
            f"step time scaled linearly from {measured_batch}; no communication or input "
            f"cost) = {_duration(wall)}"
        )
        search = results.get(f"max_batch/{name}", {}).get("result", {})
        largest = search.get("largest")
        if largest and per_device > largest:
            if largest >= search["cap"]:
                note += f"; the per-device batch is above the largest tried ({largest})"
            else:
                note += f"; the per-device batch exceeds the largest that fits ({largest})"
        rows.append({
            "item": f"recipe on {devices} devices", "network": name + tag, "precision": mode,
            "batch": global_batch, "seconds": _num(wall, 4),
            "images/s": _num(global_batch / step_s, 4), "note": note,
        })  # fmt: skip
    return rows


def render(results: dict, quick: bool, recipe_devices: int) -> str:
    d = _device()
    limit = perf.memory_limit(d)
    head = (
        f"device: {d.device_kind} ({d.platform}), JAX {jax.__version__}"
        f"{f', memory limit {perf.gib(limit)}' if limit else ''}"
        f"{', --quick: tiny networks' if quick else ''}"
    )
    rows = table_rows(results, quick, recipe_devices)
    return head + "\n" + perf.format_table(rows, COLUMNS) if rows else head + "\n(no results)"


# ----------------------------------------------------------------------------- main


def _load(path: str) -> dict:
    return fileio.read_json(path) if path and fileio.exists(path) else {}


def main(argv):
    del argv
    if not _UNIT.value:  # the orchestrator: no GPU memory held beside the workers'
        os.environ[PREALLOCATE] = "false"  # read when the backend starts, below
    compile_cache.configure(_CACHE.value)
    if _UNIT.value:  # a worker: one unit, one result line
        print("RESULT " + json.dumps(run_unit(json.loads(_UNIT.value))), flush=True)
        return
    for values, valid, flag in (
        (_SECTIONS.value, SECTIONS, "sections"),
        (_NETWORKS.value, NETWORK_NAMES, "networks"),
        (_PRECISIONS.value, tuple(perf.PRECISION_MODES), "precisions"),
    ):
        unknown = sorted(set(values) - set(valid))
        if unknown:
            raise app.UsageError(f"Unknown --{flag} {unknown}; valid: {list(valid)}.")
    quick = _QUICK.value
    platform = _device().platform
    steps = _STEPS.value or (2 if quick else 10)
    matmul_size = _MATMUL_SIZE.value or (256 if quick else 2048 if platform == "cpu" else 8192)
    isolate = _ISOLATE.value == "true" or (_ISOLATE.value == "auto" and platform != "cpu")
    results = _load(_RESULTS.value)
    sections, networks, precisions = _SECTIONS.value, _NETWORKS.value, _PRECISIONS.value
    units = plan(quick, sections, networks, precisions, steps, matmul_size, _REMAT.value)
    deadline = time.monotonic() + _TIME_LIMIT.value if _TIME_LIMIT.value > 0 else None
    for uid, spec in [] if _REPORT.value else units:
        if uid in results and results[uid]["spec"].get("quick") == quick:
            continue
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left < MIN_UNIT_SECONDS:
            print(f"time limit: {uid} and later units not run", file=sys.stderr, flush=True)
            break
        if spec["kind"] == "max_batch":
            spec["known_fits"] = _known_fits(results, spec["network"], quick, spec["remat"])
        print(f"running {uid} ...", file=sys.stderr, flush=True)
        result = run_unit_in_worker(spec, left) if isolate else run_unit(spec)
        if "timed out" in result.get("error", ""):
            print(f"time limit: {uid} cut; not recorded", file=sys.stderr, flush=True)
            break
        results[uid] = {"spec": spec, "result": result}
        if _RESULTS.value:
            fileio.write_json_atomic(_RESULTS.value, results)
        gc.collect()
    print(render(results, quick, _RECIPE_DEVICES.value))


if __name__ == "__main__":
    app.run(main)
