"""Precision study (issue 13): does a lower precision drown iCT's consistency signal?

    python -m benchmarks.precision_study            # cifar10_ict NCSN++: 23 min, busy 2-core CPU
    python -m benchmarks.precision_study --quick    # a tiny NCSN++ (seconds)

On the finest iCT grid (N = method.s1 + 1 = 1281 Karras levels, docs/methods.md section 2), at
--levels pair indices i spread log-uniformly in sigma, with one fixed z per sample, it computes
the consistency function f of the network (evaluation mode, no dropout) at the teacher's
input x + s_i z and the student's x + s_{i+1} z, in float32 at highest precision (the
reference) and in each variant v of VARIANTS. Per level (each a per-sample ratio averaged over
the batch; d = f(x + s_{i+1} z, s_{i+1}) - f(x + s_i z, s_i); f at the student's level):

  signal          ||d|| / ||f||                  the reference's consistency signal
  v f error       ||f_v - f|| / ||f||
  v pair noise    ||d_v - d|| / ||f||            what v adds to the signal
  v noise/signal  ||d_v - d|| / ||d||            >= 1: v drowns the signal; >= 0.1: degrades it

Variants: the repo's own paths, built through cm.experiment from the config with model.dtype and
model.matmul_precision set (benchmarks/perf.py's modes): "f32 default" (the device's default;
XLA:CPU
runs it as highest) and "bf16" (model.dtype = bfloat16, as training runs it); and, because a
CPU cannot run them, two accelerator defaults emulated on the float32 network
(benchmarks/emulated_matmul.py): "tf32 emulated" (NVIDIA GPUs) and "bf16-pass emulated" (TPUs).

The network is cifar10_ict's NCSN++ at initialization, with one change: EDM's initialization
scales the layers that close a residual branch (each block's conv1, the attention projection)
and the output conv by 1e-5, so a fresh F is about 1e-5 and f = c_skip x + (almost) nothing:
the study would see only the exact skip path. Those kernels are redrawn from the ordinary
Xavier-uniform initializer (gain 1), and the output conv is then scaled so that F has unit RMS
on the batch at sigma = sigma_data (a trained F's target has unit variance by c_out's design).
A trained network is a smoother function of its input than a random one; the signal measured
here is that of a random network.

Data: CIFAR-10 is not available offline, so a deterministic batch of smooth random fields (an
amplitude spectrum falling as 1/frequency, as natural images have), scaled to [-1, 1].
"""

import io
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import emulated_matmul, perf, tiny
from cm import experiment, precond, schedules
from cm.io import fileio
from cm.models import inits
from configs import cifar10_ict

REFERENCE = "f32 highest"
# name -> (model.dtype, model.matmul_precision, emulated mantissa bits of conv / matmul inputs)
VARIANTS = {
    REFERENCE: (*perf.PRECISION_MODES[REFERENCE][:2], None),
    "f32 default": (*perf.PRECISION_MODES["f32 default"][:2], None),
    "bf16": (*perf.PRECISION_MODES["bf16"][:2], None),
    "tf32 emulated": ("float32", "highest", emulated_matmul.TF32_BITS),
    "bf16-pass emulated": ("float32", "highest", emulated_matmul.BFLOAT16_BITS),
}
PER_VARIANT = ("f error", "pair noise", "noise/signal")
LEVEL_COLUMNS = ("i", "sigma_i", "gap", "signal")
DROWNS, DEGRADES = 1.0, 0.1  # noise/signal thresholds of the reading
# Kernels that EDM's initialization scales by 1e-5 (role "zero" in cm/models/inits.py).
BRANCH_CLOSERS = ("conv1", "proj", "out_conv")
ZERO_INIT_BOUND = 1e-3  # such a kernel's largest entry at initialization is far below this
CHROMA = 0.3  # weight of each channel's own field next to the shared luminance field


def define_flags():
    """The command-line flags, defined only when the study runs as a script, so that importing
    it (the tests) adds nothing to absl's global flags (device_check also has --quick)."""
    global _QUICK, _BATCH, _LEVELS, _VARIANTS, _SEED, _PNG, _JSON, _FROM_JSON
    _QUICK = flags.DEFINE_bool("quick", False, "A tiny NCSN++ (a CPU check of the study itself).")
    _BATCH = flags.DEFINE_integer("batch", 0, "Images per level; 0 = 4 (--quick: 2).")
    _LEVELS = flags.DEFINE_integer("levels", 0, "Pair indices in the grid; 0 = 20 (--quick: 4).")
    _VARIANTS = flags.DEFINE_list("variants", list(VARIANTS)[1:], f"Any of {list(VARIANTS)[1:]}.")
    _SEED = flags.DEFINE_integer("seed", 0, "Seed of the images, the noise and the network.")
    _PNG = flags.DEFINE_string(
        "png", "auto", "Plot ('' = none; auto: docs/precision_study.png, none with --quick)."
    )
    _JSON = flags.DEFINE_string(
        "json", "auto", "Rows as JSON ('' = none; auto: docs/precision_study.json, none if quick)."
    )
    _FROM_JSON = flags.DEFINE_string("from_json", "", "Only report the rows of this JSON file.")


# ----------------------------------------------------------------------------- inputs


def study_config(quick: bool):
    """cifar10_ict's config (its NCSN++, grid and preconditioning), tiny when quick."""
    c = cifar10_ict.get_config()
    # --quick: a one-level 8 x 8 NCSN++ of 8 channels (the device check's --quick network).
    return tiny.with_overrides(c, tiny.TINY_PAPER_NETWORK) if quick else c


def variant_config(config, name: str):
    """A copy of `config` computing in variant `name`'s dtype and matmul precision."""
    c = config.copy_and_resolve_references()
    c.model.dtype, c.model.matmul_precision, _ = VARIANTS[name]
    return c


def smooth_fields(seed: int, batch: int, size: int, channels: int) -> np.ndarray:
    """Deterministic image-like batch [B, H, W, C] in [-1, 1]: Gaussian fields whose amplitude
    spectrum falls as 1 / frequency, a shared luminance field plus CHROMA x one per channel."""
    rng = np.random.default_rng(seed)
    freq = np.fft.fftfreq(size)
    amplitude = 1.0 / np.maximum(np.hypot(freq[:, None], freq[None, :]), 1.0 / size)  # [H, W]
    white = rng.standard_normal((batch, channels + 1, size, size))
    fields = np.fft.ifft2(np.fft.fft2(white) * amplitude).real  # [B, C + 1, H, W]
    images = fields[:, :1] + CHROMA * fields[:, 1:]  # [B, C, H, W]
    lo = images.min(axis=(1, 2, 3), keepdims=True)
    hi = images.max(axis=(1, 2, 3), keepdims=True)
    return (2.0 * (images - lo) / (hi - lo) - 1.0).transpose(0, 2, 3, 1).astype(np.float32)


def finest_grid(config) -> np.ndarray:
    """The training step's float32 Karras grid at its largest N (s1 + 1 levels), [N]."""
    m = config.method
    n = schedules.max_num_scales(m.s1)
    return np.asarray(schedules.karras_sigmas(n, m.sigma_min, m.sigma_max, m.rho, n))


def study_indices(sigmas: np.ndarray, count: int) -> np.ndarray:
    """Up to `count` pair indices i (0 <= i <= N - 2), nearest to log-uniform sigma_i from
    sigma_1 to sigma_{N-1}, increasing and distinct."""
    log_lo = np.log(sigmas[:-1].astype(np.float64))  # [N - 1] teacher levels
    targets = np.linspace(log_lo[0], log_lo[-1], count)
    return np.unique(np.argmin(np.abs(log_lo[None, :] - targets[:, None]), axis=1))


def randomize_branch_closers(params, seed: int):
    """`params` with every BRANCH_CLOSERS kernel redrawn from the ordinary Xavier-uniform
    initializer (cm/models/inits.py, role "default"); checks that each was near zero."""
    flat = flax.traverse_util.flatten_dict(params)
    draw = inits.scheme("song").kernel("default")
    key = jax.random.key(seed)
    for n, path in enumerate(sorted(flat)):
        if path[-1] != "kernel" or path[-2] not in BRANCH_CLOSERS:
            continue
        if float(jnp.max(jnp.abs(flat[path]))) > ZERO_INIT_BOUND:
            raise RuntimeError(f"{'/'.join(path)} is not a near-zero initialized kernel.")
        flat[path] = draw(jax.random.fold_in(key, n), flat[path].shape)
    return flax.traverse_util.unflatten_dict(flat)


def raw_output_rms(denoise, config, params, images, noise, sigma: float) -> float:
    """RMS of the network's own output F = (f - c_skip x_s) / c_out at noise level sigma."""
    s = jnp.full((images.shape[0],), sigma, jnp.float32)  # [B]
    noisy = images + sigma * noise  # [B, H, W, C]
    f = jax.jit(denoise)(params, noisy, s)  # [B, H, W, C]
    m = config.method
    c_skip, c_out, _ = precond.consistency_scalings(sigma, m.sigma_data, m.sigma_min)
    return float(jnp.sqrt(jnp.mean(jnp.square((f - c_skip * noisy) / c_out))))


def study_network(config, images, noise, seed: int):
    """Parameters of the study's network (see the module docstring) and F's RMS before the
    output conv was scaled to unit RMS at sigma_data."""
    exp = experiment.build(variant_config(config, REFERENCE))
    params = randomize_branch_closers(experiment.init_params(exp, config), seed)
    rms = raw_output_rms(exp.denoise, config, params, images, noise, config.method.sigma_data)
    params = dict(params)
    params["out_conv"] = jax.tree.map(lambda w: w / rms, params["out_conv"])
    return params, rms


# ----------------------------------------------------------------------------- measurement


def pair_function(config, name: str):
    """jitted (params, x [B,H,W,C], z [B,H,W,C], sigma_lo, sigma_hi) -> (f at the teacher's
    level, f at the student's level), each [B, H, W, C] float32, in variant `name`.
    The sigmas are inputs, so one compile serves every level."""
    denoise = experiment.build(variant_config(config, name)).denoise
    bits = VARIANTS[name][2]
    if bits is not None:
        denoise = emulated_matmul.with_rounded_matmul_inputs(denoise, bits)

    def pair(params, x, z, sigma_lo, sigma_hi):
        b = x.shape[0]
        sigma = jnp.concatenate([jnp.full((b,), sigma_lo), jnp.full((b,), sigma_hi)])  # [2B]
        noisy = jnp.concatenate([x, x]) + sigma[:, None, None, None] * jnp.concatenate([z, z])
        f = denoise(params, noisy, sigma)  # [2B, H, W, C]
        return f[:b], f[b:]

    return jax.jit(pair)


def per_sample_norm(a) -> np.ndarray:
    """Euclidean norm of each sample of a [B, ...] array, in float64. Returns [B]."""
    a = np.asarray(a, np.float64)
    return np.sqrt(np.sum(np.square(a), axis=tuple(range(1, a.ndim))))


def relative(numerator, denominator) -> float:
    """Mean over samples of ||numerator_b|| / ||denominator_b||."""
    return float(np.mean(per_sample_norm(numerator) / per_sample_norm(denominator)))


def signal(ref_lo, ref_hi) -> float:
    """||d|| / ||f_hi||, d = f_hi - f_lo: the consistency signal of one pair of levels."""
    return relative(np.subtract(ref_hi, ref_lo, dtype=np.float64), ref_hi)


def variant_metrics(ref_lo, ref_hi, var_lo, var_hi) -> dict:
    """f error, pair noise and noise/signal of a variant's pair against the reference's."""
    ref_hi, var_hi = np.asarray(ref_hi, np.float64), np.asarray(var_hi, np.float64)
    d_ref = ref_hi - np.asarray(ref_lo, np.float64)
    d_var = var_hi - np.asarray(var_lo, np.float64)
    return {
        "f error": relative(var_hi - ref_hi, ref_hi),
        "pair noise": relative(d_var - d_ref, ref_hi),
        "noise/signal": relative(d_var - d_ref, d_ref),
    }


def run_study(config, params, images, noise, indices, variants, say=print) -> list[dict]:
    """One row per pair index: LEVEL_COLUMNS and "<variant> <metric>" for each variant."""
    sigmas = finest_grid(config)
    levels = [(int(i), sigmas[i], sigmas[i + 1]) for i in indices]

    def evaluate(name):
        start, pair = time.perf_counter(), pair_function(config, name)
        out = [pair(params, images, noise, lo, hi) for _, lo, hi in levels]
        out = jax.device_get(out)
        say(f"  {name}: {len(levels)} levels in {time.perf_counter() - start:.0f} s")
        return out

    reference = evaluate(REFERENCE)
    rows = []
    for (i, lo, hi), (ref_lo, ref_hi) in zip(levels, reference, strict=True):
        gap = (float(hi) - float(lo)) / float(lo)
        rows.append({"i": i, "sigma_i": float(lo), "gap": gap, "signal": signal(ref_lo, ref_hi)})
    for name in variants:
        for row, ref, var in zip(rows, reference, evaluate(name), strict=True):
            for metric, value in variant_metrics(*ref, *var).items():
                row[f"{name} {metric}"] = value
    return rows


# ----------------------------------------------------------------------------- reporting


def columns(variants) -> list[str]:
    return [*LEVEL_COLUMNS, *(f"{v} {m}" for v in variants for m in PER_VARIANT)]


def markdown_table(rows, variants) -> str:
    cols = columns(variants)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---:|" * len(cols)]
    for row in rows:
        cells = [str(row["i"])] + [f"{row[c]:.3g}" for c in cols[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def drowned_runs(rows, name: str, threshold: float) -> list[tuple[int, int]]:
    """Runs of consecutive studied levels where `name`'s noise/signal >= threshold, as
    (first row, last row) positions in `rows`."""
    runs, first = [], None
    for k, row in enumerate(rows):
        if row[f"{name} noise/signal"] >= threshold:
            first = k if first is None else first
        elif first is not None:
            runs.append((first, k - 1))
            first = None
    return runs + ([(first, len(rows) - 1)] if first is not None else [])


def training_mass(config, rows, runs) -> float:
    """Probability that iCT's lognormal index law at the finest N (docs/methods.md section 2)
    draws a pair index between the first and last studied index of one of `runs`."""
    m, sigmas = config.method, finest_grid(config)
    probs = np.asarray(schedules.lognormal_index_probs(sigmas, len(sigmas), m.p_mean, m.p_std))
    return float(sum(probs[rows[a]["i"] : rows[b]["i"] + 1].sum() for a, b in runs))


def reading(config, rows, variants) -> str:
    """Where each variant drowns (noise/signal >= 1) or degrades (>= 0.1) the signal, and the
    share of iCT's training pairs at those levels."""
    lines = []
    for name in variants:
        ratios = [row[f"{name} noise/signal"] for row in rows]
        parts = [f"{name}: noise/signal {min(ratios):.3g} to {max(ratios):.3g}"]
        for label, threshold in (("drowns", DROWNS), ("degrades", DEGRADES)):
            runs = drowned_runs(rows, name, threshold)
            where = ", ".join(
                f"sigma {rows[a]['sigma_i']:.3g}-{rows[b]['sigma_i']:.3g}" for a, b in runs
            )
            mass = f" ({training_mass(config, rows, runs):.1%} of training pairs)" if runs else ""
            parts.append(f"{label} (>= {threshold:g}) at {where or 'no level'}{mass}")
        lines.append("; ".join(parts))
    return "\n".join(lines)


def plot_png(rows, variants, title: str) -> bytes:
    """PNG, log-log against sigma_i: left, the signal and each variant's pair noise (relative to
    ||f||); right, each variant's noise/signal with the DROWNS and DEGRADES lines. Variants
    whose noise is exactly zero everywhere are listed in the legend as such."""
    import matplotlib  # noqa: PLC0415 (only the plot needs it: requirements-dev.txt)

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt  # noqa: PLC0415

    sigma = [row["sigma_i"] for row in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
    left.loglog(sigma, [row["signal"] for row in rows], "k-o", ms=3, label="signal ||d|| / ||f||")
    for k, name in enumerate(variants):
        color = f"C{k}"
        noise = [row[f"{name} pair noise"] for row in rows]
        ratio = [row[f"{name} noise/signal"] for row in rows]
        if not any(noise):
            left.plot([], [], " ", label=f"{name}: identical to the reference (0)")
            continue
        left.loglog(sigma, noise, "-o", color=color, ms=3, label=f"{name} pair noise")
        right.loglog(sigma, ratio, "-o", color=color, ms=3, label=name)
    for threshold, label in ((DROWNS, "drowns"), (DEGRADES, "degrades")):
        right.axhline(threshold, color="gray", ls="--", lw=1)
        right.annotate(label, (sigma[0], threshold), va="bottom", color="gray")
    left.set(xlabel="sigma_i", ylabel="relative to ||f||", title=title)
    right.set(xlabel="sigma_i", ylabel="||d_v - d|| / ||d||", title="noise / signal")
    for ax in (left, right):
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def output_path(flag: str, quick: bool, default: str) -> str:
    return ("" if quick else default) if flag == "auto" else flag


def measure(quick: bool, batch: int, levels: int, variants, seed: int) -> dict:
    """The study's record: what was measured ("header", "batch", "variants") and its rows."""
    config = study_config(quick)
    size, channels = config.data.image_size, config.data.channels
    images = smooth_fields(seed, batch, size, channels)  # [B, H, W, C]
    noise = np.random.default_rng([seed, 1]).standard_normal(images.shape)
    noise = noise.astype(np.float32)  # [B, H, W, C]
    sigmas = finest_grid(config)
    indices = study_indices(sigmas, levels)
    start = time.perf_counter()
    params, rms = study_network(config, images, noise, seed)
    header = (
        f"{'tiny NCSN++ (--quick)' if quick else 'cifar10_ict NCSN++'}, N = {len(sigmas)}, "
        f"batch {batch}, {len(indices)} levels, {jax.devices()[0].device_kind}; F's RMS at "
        f"sigma_data before scaling the output conv: {rms:.3g}"
    )
    print(header)
    rows = run_study(config, params, images, noise, indices, variants)
    print(f"measured in {time.perf_counter() - start:.0f} s")
    return {"header": header, "quick": quick, "batch": batch, "variants": variants, "rows": rows}


def report(record: dict, png: str, header: bool = False):
    """Prints the table and the reading of a record (after its header if `header`); writes its
    plot to `png` unless ''."""
    config, rows, variants = study_config(record["quick"]), record["rows"], record["variants"]
    if header:
        print(record["header"])
    print(markdown_table(rows, variants))
    print(reading(config, rows, variants))
    if png:
        network = "tiny NCSN++" if record["quick"] else "NCSN++"
        title = f"{network}, N = {len(finest_grid(config))}, batch {record['batch']}"
        fileio.write_bytes_atomic(png, plot_png(rows, variants, title))
        print(f"plot: {png}")


def main(argv):
    del argv
    quick, variants = _QUICK.value, _VARIANTS.value
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise ValueError(f"Unknown --variants {unknown}; valid: {list(VARIANTS)}.")
    png = output_path(_PNG.value, quick, "docs/precision_study.png")
    if _FROM_JSON.value:
        report(fileio.read_json(_FROM_JSON.value), png, header=True)
        return
    batch, levels = _BATCH.value or (2 if quick else 4), _LEVELS.value or (4 if quick else 20)
    record = measure(quick, batch, levels, variants, _SEED.value)
    json_path = output_path(_JSON.value, quick, "docs/precision_study.json")
    if json_path:
        fileio.write_json_atomic(json_path, record)
    report(record, png)


if __name__ == "__main__":
    define_flags()
    app.run(main)
