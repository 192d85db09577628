"""Device performance numbers shared by the benchmarks: timing, XLA's FLOP and memory counts,
peak FLOP/s (published per device kind, and a matmul measured in the same process), tables.

Precision modes (the rows of benchmarks/device_check.py): "f32 highest" (float32 compute,
full-precision matmuls), "f32 default" (float32 compute at the device default: TF32 on NVIDIA
GPUs, one bfloat16 pass on TPUs), "bf16" (bfloat16 compute). MFU divides achieved FLOP/s by
the device's published dense peak for what the mode runs on: float32 cores, TF32 or bfloat16
tensor cores / MXUs.
"""

import statistics
import time
from collections.abc import Callable

import jax
import jax.extend.core as jax_core
import jax.numpy as jnp

# Two JAX internals with no public entry point, guarded so that a JAX that moves them still
# runs every benchmark: XLA's cost analysis of an HLO module on a chosen client (without it,
# the backend's own lowered count, none on GPUs), and the dead-code elimination the lowering
# runs (without it, a dead scan's body would be added).
try:
    from jax._src.lib import _jax as _xla
except ImportError:  # pragma: no cover (JAX versions without it)
    _xla = None
try:
    from jax._src.interpreters.partial_eval import dce_jaxpr_consts
except ImportError:  # pragma: no cover
    dce_jaxpr_consts = None

GIB = 2**30

# mode -> (model.dtype, model.matmul_precision, published peak key)
PRECISION_MODES = {
    "f32 highest": ("float32", "highest", "f32"),
    "f32 default": ("float32", "default", "default"),
    "bf16": ("bfloat16", "default", "bf16"),
}

# Published dense peaks in TFLOP/s (no structured sparsity) per chip, from the vendors' data
# sheets: NVIDIA A100 (SXM / PCIe, same), H100 SXM and H200 (same compute), H100 PCIe, H100
# NVL, V100 (SXM2, PCIe: the devices of benchmarks/device_reference.py's published rows);
# Google Cloud TPU system architecture pages (v4, v5e, v5p, v6e; bfloat16 only: TPUs have no
# float32 matmul unit, XLA emulates it with bfloat16 passes). "default" is what a float32
# matmul at default precision runs on: TF32 on NVIDIA GPUs from Ampere on (a V100 has none:
# its float32 cores), one bfloat16 pass on TPUs.
# Matched in order against the lower-cased device_kind; first match wins.
PUBLISHED_PEAK_TFLOPS = (
    ("h100 pcie", {"bf16": 756.0, "default": 378.0, "f32": 51.0}),
    ("h100 nvl", {"bf16": 835.0, "default": 418.0, "f32": 60.0}),
    ("h100", {"bf16": 989.0, "default": 495.0, "f32": 67.0}),
    ("h200", {"bf16": 989.0, "default": 495.0, "f32": 67.0}),
    ("a100", {"bf16": 312.0, "default": 156.0, "f32": 19.5}),
    ("v100-pcie", {"default": 14.0, "f32": 14.0}),  # no TF32 or bfloat16: float32 cores
    ("v100", {"default": 15.7, "f32": 15.7}),  # SXM2
    ("tpu v4", {"bf16": 275.0, "default": 275.0}),
    ("tpu v5 lite", {"bf16": 197.0, "default": 197.0}),  # v5e
    ("tpu v5e", {"bf16": 197.0, "default": 197.0}),
    ("tpu v5p", {"bf16": 459.0, "default": 459.0}),
    ("tpu v5", {"bf16": 459.0, "default": 459.0}),  # v5p reports "TPU v5"
    ("tpu v6 lite", {"bf16": 918.0, "default": 918.0}),  # v6e (Trillium)
    ("tpu v6e", {"bf16": 918.0, "default": 918.0}),
)


def published_peak(device_kind: str, mode: str) -> float | None:
    """Published peak FLOP/s of `device_kind` for a precision mode, or None if not known."""
    key = PRECISION_MODES[mode][2]
    kind = device_kind.lower()
    for pattern, peaks in PUBLISHED_PEAK_TFLOPS:
        if pattern in kind:
            return peaks[key] * 1e12 if key in peaks else None
    return None


def matmul_peak(n: int, mode: str, repeats: int = 5) -> float:
    """Best FLOP/s of an n x n matmul on the default device in a precision mode."""
    dtype_name, precision, _ = PRECISION_MODES[mode]
    dtype = jnp.bfloat16 if dtype_name == "bfloat16" else jnp.float32
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    lax_precision = jax.lax.Precision.HIGHEST if precision == "highest" else None
    f = jax.jit(lambda x, y: jnp.matmul(x, y, precision=lax_precision))
    jax.block_until_ready(f(a, a))
    seconds = min(time_call(lambda: f(a, a)) for _ in range(repeats))
    return 2 * n**3 / seconds


def time_call(fn: Callable) -> float:
    """Wall seconds of one call of `fn`, waiting for its results."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def median_seconds(fn: Callable, repeats: int) -> float:
    """Median wall seconds over `repeats` calls of `fn` (after the caller's warm-up)."""
    return statistics.median(time_call(fn) for _ in range(repeats))


def flops(traced: jax.stages.Traced, lowered: jax.stages.Lowered | None = None) -> float:
    """FLOPs of one call of a traced program: XLA's count of its lowered module (the one FLOP
    count of every benchmark and MFU figure), with each lax.scan body counted once per step.

    What it counts, and why this module: the lowered module is what JAX hands to XLA, before
    any backend's optimizations, so the count is the same on every device. Compiled modules
    are not: a GPU's compiled cost analysis counts nothing inside the cuDNN / cuBLAS custom
    calls that run its convolutions and matmuls (BENCHMARKS.md, "FLOP counts"). XLA counts a
    multiply-add as 2 FLOPs and an elementwise op as one; a convolution counts only the kernel
    taps that land inside the input, so a 3 x 3 "same" convolution on n x n counts
    ((3n - 2) / 3n)^2 of the dense 2 * 9 * C_in * C_out per output pixel that papers quote
    (about 4 % less at 32 x 32). It is the program as JAX wrote it: where XLA later merges
    duplicate work (common subexpressions) both copies count, and a custom call counts 0.
    XLA counts a while loop's body once; for a lax.scan (and fori_loop with static bounds) of
    length L this adds the body L - 1 more times (with its unrolled copies and nested scans
    accounted for); a while_loop of unknown trip count stays counted once. A jit with
    shardings is not yet partitioned when lowered: the count is the whole program over all
    devices; a jax.shard_map body is one device's share.

    `lowered`: traced.lower() when the caller has it already (lowering is not cached).
    """
    lowered = traced.lower() if lowered is None else lowered
    live = traced.jaxpr.jaxpr
    if dce_jaxpr_consts is not None:  # as the lowering: no dead scan (one the gradient never reads)
        live = dce_jaxpr_consts(live, [True] * len(live.outvars))[0]
    return lowered_flops(lowered) + _scan_extra(live)


def lowered_flops(lowered: jax.stages.Lowered) -> float:
    """XLA's FLOP count of a lowered module, loops counted once (see `flops`).

    Counted by XLA:CPU's cost analysis whatever device the program was lowered for: GPU
    backends loaded as PJRT plugins give no cost analysis of a lowered module, and the
    pre-optimization module holds no device-specific convolutions to miss. Converting the
    module to HLO takes a third to half as long as lowering it. NaN where neither XLA:CPU nor
    the backend can count.
    """
    try:
        cpu_client = jax.devices("cpu")[0].client if _xla is not None else None
    except RuntimeError:  # JAX_PLATFORMS without cpu
        cpu_client = None
    if cpu_client is None:  # the backend's own count, where it has one
        cost = lowered.cost_analysis() or {}
        return float(cost.get("flops", float("nan")))
    module = lowered.compiler_ir("hlo").as_hlo_module()
    return float(_xla.hlo_module_cost_analysis(cpu_client, module)["flops"])


def _scan_extra(jaxpr) -> float:
    """FLOPs that XLA's count of the lowered `jaxpr` (a jax.extend.core.Jaxpr) misses because
    it counts each scan body once: per scan of length L whose body XLA sees in c copies
    (unroll u < L: u in the loop plus L mod u outside it; u >= L: L, no loop), L x the body's
    full count - c x XLA's count of the body. Other sub-programs (jit, remat, custom
    derivatives) are searched for scans; of a cond's branches the largest counts."""
    extra = 0.0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "scan":
            body, length = eqn.params["jaxpr"], eqn.params["length"]
            unroll = length if eqn.params["unroll"] is True else max(int(eqn.params["unroll"]), 1)
            copies = length if unroll >= length else unroll + length % unroll
            once = _jaxpr_flops(body)
            extra += length * (once + _scan_extra(body.jaxpr)) - copies * once
        else:
            found = [_scan_extra(sub) for sub in jax_core.jaxprs_in_params(eqn.params)]
            if found:
                extra += max(found) if eqn.primitive.name == "cond" else sum(found)
    return extra


def _jaxpr_flops(closed) -> float:
    """XLA's count of a closed jaxpr lowered on its own (a scan body), loops counted once."""
    avals = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in closed.in_avals]
    return lowered_flops(jax.jit(jax_core.jaxpr_as_fun(closed)).trace(*avals).lower())


def temp_bytes(compiled) -> int | None:
    """Temporary (activation and workspace) bytes XLA allotted the program, or None."""
    try:
        analysis = compiled.memory_analysis()
    except (NotImplementedError, jax.errors.JaxRuntimeError):
        return None
    return None if analysis is None else int(analysis.temp_size_in_bytes)


def xla_peak_bytes(compiled) -> int | None:
    """XLA's peak device memory of a compiled program (from its buffer assignment: the most
    bytes of arguments, outputs and temporaries live at once), or None where the backend gives
    no analysis. Where the analysis has no peak (a JAX without the field, or 0), the sum of its
    argument, output and temporary bytes less the donated (aliased) ones, an upper bound."""
    try:
        analysis = compiled.memory_analysis()
    except (NotImplementedError, jax.errors.JaxRuntimeError):
        return None
    if analysis is None:
        return None
    peak = getattr(analysis, "peak_memory_in_bytes", 0)
    if peak:
        return int(peak)
    return int(
        analysis.argument_size_in_bytes
        + analysis.output_size_in_bytes
        + analysis.temp_size_in_bytes
        - analysis.alias_size_in_bytes
    )


def memory_limit(device=None) -> int | None:
    """Bytes the allocator may use on the device, or None where unknown (XLA:CPU)."""
    device = device or jax.devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def peak_memory(device=None) -> int | None:
    """Peak bytes in use on the device since the process started, or None where the backend
    keeps no statistics (XLA:CPU)."""
    device = device or jax.devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def is_out_of_memory(error: BaseException) -> bool:
    """True for XLA's out-of-memory errors (at compile or at run time)."""
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


def fraction(value: float | None, peak: float | None) -> str:
    """value / peak with 3 decimals, or "n/a"."""
    if value is None or not peak or value != value:  # NaN never equals itself
        return "n/a"
    return f"{value / peak:.3f}"


def gib(num_bytes: int | None) -> str:
    """Bytes in GiB (MiB below 1 GiB), or "n/a"."""
    if num_bytes is None:
        return "n/a"
    return f"{num_bytes / GIB:.2f} GiB" if num_bytes >= GIB else f"{num_bytes / 2**20:.1f} MiB"


def format_table(rows: list[dict], keys: tuple[str, ...] | None = None) -> str:
    """Markdown table of the rows; missing cells are empty."""
    keys = tuple(keys or rows[0])
    cells = [[str(r.get(k, "")) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    pad = lambda values: [v.ljust(w) for v, w in zip(values, widths, strict=True)]
    line = lambda values: "| " + " | ".join(pad(values)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(keys), sep] + [line(c) for c in cells])
