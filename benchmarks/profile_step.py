"""Where the training step's device time goes: the kernels of a profiled step, by total time.

    python -m benchmarks.profile_step --config=configs/cifar10_ict.py \
        --config.training.batch_size=128 --trace_dir=$OUT/trace

The production step (cm/train_step.py) of the config, compiled once, runs --steps times under
jax.profiler; the Perfetto trace's device events (a process named like "/device:GPU:0"; on a
CPU, the XLA worker threads) are summed by kernel name. Prints one table: kernel, milliseconds
per step, share of the traced device time, calls per step, and a kind: "matmul/conv" for
library matrix kernels (cuDNN, cuBLAS, CUTLASS, XLA's triton gemms), "fusion" for XLA's
generated kernels, else "other"; then the milliseconds per step of each kind, and the step's
FLOPs (benchmarks/perf.py `flops`, the lowered count) over the traced time and over the
matmul/conv kernels' time. The question it answers on an accelerator: how much of the step is
convolution arithmetic, at what rate, and how much the many small elementwise and
normalization kernels take.
"""

import collections
import glob
import gzip
import json
import os
import re
import tempfile

import jax
from absl import app, flags
from ml_collections import config_flags

from benchmarks import measure, perf
from cm import experiment
from cm.models import resample
from cm.train_step import make_train_step

FLAGS = {}


def define_flags():
    """The command-line flags, defined only when this runs as a script, so that importing it
    (the tests) adds nothing to absl's global flags (other benchmarks have --config, --steps)."""
    FLAGS["config"] = config_flags.DEFINE_config_file("config", "configs/demo.py", "Config file.")
    FLAGS["steps"] = flags.DEFINE_integer("steps", 5, "Profiled steps, after the compiling one.")
    FLAGS["top"] = flags.DEFINE_integer("top", 25, "Kernels listed (the rest in one row).")
    FLAGS["trace_dir"] = flags.DEFINE_string("trace_dir", "", "Trace folder ('' = a temp one).")


# Substrings of library matrix-kernel names (lower case).
MATMUL_MARKS = ("conv", "gemm", "cudnn", "cublas", "cutlass", "xmma", "wgmma", "dot", "matmul")
# On a CPU: XLA's worker threads hold the kernels, next to the executor's own wrapper events.
CPU_KERNEL_THREAD = "tf_XLA"
CPU_WRAPPERS = ("ThunkExecutor", "Wait for", "PjRt", "Execute", "ThreadPool", "end: ")


def kernel_kind(name: str) -> str:
    low = name.lower()
    if any(mark in low for mark in MATMUL_MARKS):
        return "matmul/conv"
    return "fusion" if "fusion" in low else "other"


def device_events(trace: dict) -> list:
    """The complete ('X') events of the device: those of a process whose name names a GPU or
    TPU device, else (a CPU run) those of XLA's worker threads that are not wrappers."""
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    meta = [e for e in events if e.get("ph") == "M"]
    processes = {e["pid"]: e["args"].get("name", "") for e in meta if e["name"] == "process_name"}
    threads = {
        (e["pid"], e["tid"]): e["args"].get("name", "") for e in meta if e["name"] == "thread_name"
    }
    devices = {pid for pid, n in processes.items() if "GPU" in n or "TPU" in n}
    complete = [e for e in events if e.get("ph") == "X" and "dur" in e]
    if devices:
        return [e for e in complete if e["pid"] in devices]
    return [
        e
        for e in complete
        if threads.get((e["pid"], e.get("tid")), "").startswith(CPU_KERNEL_THREAD)
        and not any(mark in e["name"] for mark in CPU_WRAPPERS)
    ]


# Categories of device work, in the order they are tried (the first that matches wins).
CATEGORIES = (
    "resampling",  # FIR up/down filters (cm/models/resample.py's named scope)
    "conv/matmul",  # convolutions and matmuls (attention's included)
    "normalization",  # GroupNorm / NsLN
    "attention (softmax etc.)",  # the rest of the attention blocks
    "network elementwise",  # the rest of the network: activations, adds, embeddings
    "loss, optimizer, EMA",  # outside the network: noise, loss, gradient update, averages
    "layout copies",  # copies XLA inserted, fused with no op of the traced code
    "unattributed",  # no HLO instruction of that name (e.g. a library's helper kernel)
)
MATMUL_OPCODES = ("convolution", "dot")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*? ([a-z][\w\-]*)\(")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$")


def hlo_index(hlo_text: str) -> dict[str, dict]:
    """Per instruction name of a compiled module's text: its JAX op_name (the name stack of
    the traced code; for a fusion without one, the commonest of the fused instructions') and
    whether it computes a convolution or matmul (itself, in the computation it calls, or as a
    library custom call such as cuDNN's or cuBLAS's)."""
    opcodes, op_names = collections.defaultdict(set), collections.defaultdict(collections.Counter)
    calls, info, computation = {}, {}, None
    for line in hlo_text.splitlines():
        header = _COMPUTATION.match(line)
        if header and " = " not in line:
            computation = header.group(1)
            continue
        m = _INSTRUCTION.match(line)
        if not m:
            continue
        name, opcode = m.groups()
        op_name = _OP_NAME.search(line)
        op_name = op_name.group(1) if op_name else ""
        opcodes[computation].add(opcode)
        if op_name:
            op_names[computation][op_name] += 1
        library = opcode == "custom-call" and any(k in line.lower() for k in MATMUL_MARKS)
        info[name] = {"op_name": op_name, "matmul": library or opcode in MATMUL_OPCODES}
        called = _CALLS.search(line)
        if called:
            calls[name] = called.group(1)
    for name, computation in calls.items():
        if opcodes[computation] & set(MATMUL_OPCODES):
            info[name]["matmul"] = True
        if not info[name]["op_name"] and op_names[computation]:
            info[name]["op_name"] = op_names[computation].most_common(1)[0][0]
    return info


def instruction_category(info: dict | None) -> str:
    """One of CATEGORIES for an hlo_index entry (None: not in the module)."""
    if info is None:
        return "unattributed"
    stack = info["op_name"]
    segments = stack.split("/")
    in_network = "(UNet)" in stack or "UNet" in segments  # a flax module call's name stack
    if resample.NAME_SCOPE in segments:
        return "resampling"
    if info["matmul"]:
        return "conv/matmul"
    if not stack:
        return "layout copies"
    if not in_network:
        return "loss, optimizer, EMA"
    if any(s.startswith("norm") or s.endswith("_norm") for s in segments):
        return "normalization"
    if "attn" in segments:
        return "attention (softmax etc.)"
    return "network elementwise"


def event_instruction(event: dict) -> str:
    """The HLO instruction a device event ran: the profiler's hlo_op argument (GPU kernels)
    or the event's own name (XLA:CPU names its events after the instruction)."""
    return event.get("args", {}).get("hlo_op") or event["name"]


def category_totals(events: list, index: dict, steps: int) -> dict:
    """ms per step of each category (CATEGORIES order; library kernels without an HLO
    instruction count as conv/matmul when their name says so)."""
    totals = dict.fromkeys(CATEGORIES, 0.0)
    for e in events:
        info = index.get(event_instruction(e))
        kind = instruction_category(info)
        if info is None and kernel_kind(e["name"]) == "matmul/conv":
            kind = "conv/matmul"
        totals[kind] += e["dur"] / 1000 / steps
    return totals


def category_table(totals: dict) -> list[dict]:
    """Rows: category, ms per step, share of the traced device time."""
    traced = sum(totals.values()) or 1.0
    return [
        {"category": k, "ms/step": f"{v:.3f}", "share": f"{100 * v / traced:.1f}%"}
        for k, v in totals.items()
    ]


def kernel_table(events: list, steps: int, top: int) -> list[dict]:
    """Rows of the table: per kernel name, ms per step, share, calls per step, kind."""
    total, calls = collections.Counter(), collections.Counter()
    for e in events:
        total[e["name"]] += e["dur"]  # microseconds
        calls[e["name"]] += 1
    traced = sum(total.values()) or 1.0
    ranked = total.most_common()
    rows = [
        {
            "kernel": name[:70],
            "ms/step": f"{us / 1000 / steps:.3f}",
            "share": f"{100 * us / traced:.1f}%",
            "calls/step": f"{calls[name] / steps:g}",
            "kind": kernel_kind(name),
        }
        for name, us in ranked[:top]
    ]
    rest = ranked[top:]
    if rest:
        us = sum(v for _, v in rest)
        rows.append(
            {
                "kernel": f"({len(rest)} more kernels)",
                "ms/step": f"{us / 1000 / steps:.3f}",
                "share": f"{100 * us / traced:.1f}%",
                "calls/step": f"{sum(calls[n] for n, _ in rest) / steps:g}",
                "kind": "",
            }
        )
    return rows


def kind_totals(events: list, steps: int) -> dict:
    """ms per step of each kernel kind."""
    totals = collections.Counter()
    for e in events:
        totals[kernel_kind(e["name"])] += e["dur"]
    return {kind: us / 1000 / steps for kind, us in totals.items()}


def main(argv):
    del argv
    config = FLAGS["config"].value
    exp = experiment.build(config, jax.devices()[:1])
    step_fn = make_train_step(exp, tuple(config.training.ema_rates), config.seed)
    state = experiment.init_state(exp, config)
    batch = measure.random_batch(config, exp)
    traced = step_fn.trace(state, batch)
    lowered = traced.lower()
    compiled = lowered.compile()
    state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    trace_dir = FLAGS["trace_dir"].value or tempfile.mkdtemp(prefix="profile_step_")
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        for _ in range(FLAGS["steps"].value):
            state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))
    path = max(glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True))
    with gzip.open(path) as f:
        events = device_events(json.load(f))
    steps = FLAGS["steps"].value
    print(f"device: {jax.devices()[0].device_kind}; batch {config.training.batch_size}; "
          f"{len(events)} device events over {steps} steps; trace {path}")  # fmt: skip
    print(perf.format_table(kernel_table(events, steps, FLAGS["top"].value)))
    kinds = kind_totals(events, steps)
    print("per step: " + ", ".join(f"{k} {v:.2f} ms" for k, v in sorted(kinds.items())))
    categories = category_totals(events, hlo_index(compiled.as_text()), steps)
    print(perf.format_table(category_table(categories)))
    print(
        flop_rates(
            perf.flops(traced, lowered),
            {"matmul/conv": categories["conv/matmul"]}
            | {"other": sum(categories.values()) - categories["conv/matmul"]},
        )
    )


def flop_rates(flops: float, kinds: dict) -> str:
    """The step's FLOPs over the traced device time per step and over the matmul/conv kernels'
    time (kinds: ms per step by kernel kind, from kind_totals)."""
    traced_ms, matmul_ms = sum(kinds.values()), kinds.get("matmul/conv", 0.0)
    rate = lambda ms: f"{flops / (ms / 1000) / 1e12:.2f} TFLOP/s" if ms else "n/a"  # noqa: E731
    return (
        f"FLOPs per step (lowered): {flops / 1e9:.1f} GFLOP; over the traced device time "
        f"{rate(traced_ms)}, over the matmul/conv kernels' time {rate(matmul_ms)}"
    )


if __name__ == "__main__":
    define_flags()
    app.run(main)
