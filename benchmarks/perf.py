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
import jax.numpy as jnp

GIB = 2**30

# mode -> (model.dtype, model.matmul_precision, published peak key)
PRECISION_MODES = {
    "f32 highest": ("float32", "highest", "f32"),
    "f32 default": ("float32", "default", "default"),
    "bf16": ("bfloat16", "default", "bf16"),
}

# Published dense peaks in TFLOP/s (no structured sparsity) per chip, from the vendors' data
# sheets: NVIDIA A100 (SXM / PCIe, same), H100 SXM and H200 (same compute), H100 PCIe, H100
# NVL; Google Cloud TPU system architecture pages (v4, v5e, v5p, v6e; bfloat16 only: TPUs
# have no float32 matmul unit, XLA emulates it with bfloat16 passes). "default" is what a
# float32 matmul at default precision runs on: TF32 on NVIDIA GPUs, one bfloat16 pass on TPUs.
# Matched in order against the lower-cased device_kind; first match wins.
PUBLISHED_PEAK_TFLOPS = (
    ("h100 pcie", {"bf16": 756.0, "default": 378.0, "f32": 51.0}),
    ("h100 nvl", {"bf16": 835.0, "default": 418.0, "f32": 60.0}),
    ("h100", {"bf16": 989.0, "default": 495.0, "f32": 67.0}),
    ("h200", {"bf16": 989.0, "default": 495.0, "f32": 67.0}),
    ("a100", {"bf16": 312.0, "default": 156.0, "f32": 19.5}),
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


def flops(compiled) -> float:
    """XLA's FLOP count of a compiled program (NaN when the backend gives none)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):  # older JAX: one dict per program
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", float("nan")))


def temp_bytes(compiled) -> int | None:
    """Temporary (activation and workspace) bytes XLA allotted the program, or None."""
    try:
        analysis = compiled.memory_analysis()
    except (NotImplementedError, jax.errors.JaxRuntimeError):
        return None
    return None if analysis is None else int(analysis.temp_size_in_bytes)


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
