"""Precision studies (issues 13, 22): does a lower precision drown the signal a consistency
method learns from? Two studies, chosen by --study (default both):

  difference  iCT's student-teacher difference (this module)
  tangent     sCT's and MeanFlow's JVP tangent (benchmarks/precision_tangent.py)

    python -m benchmarks.precision_study --study=difference   # cifar10_ict NCSN++ (23 min, CPU)
    python -m benchmarks.precision_study --study=tangent      # cifar10_sct, cifar10_meanflow
    python -m benchmarks.precision_study --quick              # both, tiny networks (a minute)
    python -m benchmarks.precision_study --from_json=docs/precision_study.json   # report again

The variants, the network with its residual branches opened and the image-like data are
benchmarks/precision_inputs.py's. --json and --png: "auto" writes each study to its own
docs/precision_{study,tangent}.{json,png} (none with --quick); a path gets one record (and one
figure) holding every study run.

The difference study: on the finest iCT grid (N = method.s1 + 1 = 1281 Karras levels,
docs/methods.md section 2), at --levels pair indices i spread log-uniformly in sigma, with one
fixed z per sample, it computes the consistency function f of cifar10_ict's NCSN++ (evaluation
mode, no dropout) at the teacher's input x + s_i z and the student's x + s_{i+1} z, in float32
at highest precision (the reference) and in each variant v. Per level (each a per-sample ratio
averaged over the batch; d = f(x + s_{i+1} z, s_{i+1}) - f(x + s_i z, s_i); f at the student's
level):

  signal                  ||d|| / ||f||        the reference's consistency signal
  v f error               ||f_v - f|| / ||f||
  v pair noise            ||d_v - d|| / ||f||  what v adds to the signal
  v noise/signal          ||d_v - d|| / ||d||  >= 1: v drowns the signal; >= 0.1: degrades it
  v student noise/signal  ||f_v - f|| / ||d||  only the student in v, the teacher in float32:
                                               what a float32 teacher pass would leave

Its network is scaled so that F has unit RMS at sigma = sigma_data (the output conv divided by
F's RMS there).
"""

import io
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import precision_inputs as pi
from benchmarks import precision_tangent
from cm import precond, schedules
from cm.io import fileio
from configs import cifar10_ict

STUDIES = ("difference", "tangent")
PER_VARIANT = ("f error", "pair noise", "noise/signal", "student noise/signal")
LEVEL_COLUMNS = ("i", "sigma_i", "gap", "signal")
AUTO_PATHS = {"difference": "docs/precision_study", "tangent": "docs/precision_tangent"}


def define_flags():
    """The command-line flags, defined only when the study runs as a script, so that importing
    it (the tests) adds nothing to absl's global flags (device_check also has --quick)."""
    global _STUDY, _QUICK, _BATCH, _LEVELS, _TIMES, _VARIANTS, _SEED, _PNG, _JSON, _FROM_JSON
    _STUDY = flags.DEFINE_enum("study", "both", [*STUDIES, "both"], "Which study to run.")
    _QUICK = flags.DEFINE_bool("quick", False, "Tiny networks (a CPU check of the studies).")
    _BATCH = flags.DEFINE_integer(
        "batch",
        0,
        "Images per level or time; 0 = 4 for the difference, 2 for the tangent (--quick: 2).",
    )
    _LEVELS = flags.DEFINE_integer("levels", 0, "Difference: pair indices; 0 = 20 (--quick: 4).")
    _TIMES = flags.DEFINE_integer("times", 0, "Tangent: times per method; 0 = 5 (--quick: 3).")
    _VARIANTS = flags.DEFINE_list(
        "variants", list(pi.VARIANTS)[1:], f"Any of {list(pi.VARIANTS)[1:]}."
    )
    _SEED = flags.DEFINE_integer("seed", 0, "Seed of the images, the noise and the network.")
    _PNG = flags.DEFINE_string(
        "png", "auto", "Plot ('' = none; auto: docs/precision_<study>.png, none with --quick)."
    )
    _JSON = flags.DEFINE_string(
        "json", "auto", "Record ('' = none; auto: docs/precision_<study>.json, none if quick)."
    )
    _FROM_JSON = flags.DEFINE_string("from_json", "", "Only report the record of this JSON file.")


# ----------------------------------------------------------------------------- inputs


def study_config(quick: bool):
    """cifar10_ict's config (its NCSN++, grid and preconditioning), tiny when quick."""
    return pi.paper_config(cifar10_ict.get_config, quick)


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


def raw_output_rms(pair, config, params, images, noise, sigma: float) -> float:
    """RMS of the network's own output F = (f - c_skip x_s) / c_out at noise level sigma, from
    the pair function (pair_function: both levels at sigma, no compile of its own)."""
    noisy = images + sigma * noise  # [B, H, W, C]
    _, f = pair(params, images, noise, sigma, sigma)  # [B, H, W, C]
    m = config.method
    c_skip, c_out, _ = precond.consistency_scalings(sigma, m.sigma_data, m.sigma_min)
    return float(jnp.sqrt(jnp.mean(jnp.square((f - c_skip * noisy) / c_out))))


def study_network(config, pair, images, noise, seed: int):
    """Parameters of the study's network (precision_inputs, and F scaled to unit RMS at
    sigma_data by the reference's pair function) and F's RMS before the output conv was
    scaled."""
    params = pi.open_network(config, seed)
    rms = raw_output_rms(pair, config, params, images, noise, config.method.sigma_data)
    return pi.scale_output(params, 1.0 / rms), rms


# ----------------------------------------------------------------------------- measurement


def pair_function(config, name: str):
    """jitted (params, x [B,H,W,C], z [B,H,W,C], sigma_lo, sigma_hi) -> (f at the teacher's
    level, f at the student's level), each [B, H, W, C] float32, in variant `name`.
    The sigmas are inputs, so one compile serves every level."""
    denoise = pi.variant_forms(config, name).sample

    def pair(params, x, z, sigma_lo, sigma_hi):
        b = x.shape[0]
        sigma = jnp.concatenate([jnp.full((b,), sigma_lo), jnp.full((b,), sigma_hi)])  # [2B]
        noisy = jnp.concatenate([x, x]) + sigma[:, None, None, None] * jnp.concatenate([z, z])
        f = denoise(params, noisy, sigma)  # [2B, H, W, C]
        return f[:b], f[b:]

    return jax.jit(pi.emulated(pair, name))


def signal(ref_lo, ref_hi) -> float:
    """||d|| / ||f_hi||, d = f_hi - f_lo: the consistency signal of one pair of levels."""
    return pi.relative(np.subtract(ref_hi, ref_lo, dtype=np.float64), ref_hi)


def variant_metrics(ref_lo, ref_hi, var_lo, var_hi) -> dict:
    """PER_VARIANT of a variant's pair against the reference's."""
    ref_hi, var_hi = np.asarray(ref_hi, np.float64), np.asarray(var_hi, np.float64)
    d_ref = ref_hi - np.asarray(ref_lo, np.float64)
    d_var = var_hi - np.asarray(var_lo, np.float64)
    return {
        "f error": pi.relative(var_hi - ref_hi, ref_hi),
        "pair noise": pi.relative(d_var - d_ref, ref_hi),
        "noise/signal": pi.relative(d_var - d_ref, d_ref),
        "student noise/signal": pi.relative(var_hi - ref_hi, d_ref),
    }


def run_study(
    config, params, images, noise, indices, variants, say=print, reference=None
) -> list[dict]:
    """One row per pair index: LEVEL_COLUMNS and "<variant> <metric>" for each variant.
    reference: the reference's pair function when already compiled."""
    sigmas = finest_grid(config)
    levels = [(int(i), sigmas[i], sigmas[i + 1]) for i in indices]

    def evaluate(name):
        start = time.perf_counter()
        pair = reference if name == pi.REFERENCE and reference else pair_function(config, name)
        out = [pair(params, images, noise, lo, hi) for _, lo, hi in levels]
        out = jax.device_get(out)
        say(f"  {name}: {len(levels)} levels in {time.perf_counter() - start:.0f} s")
        return out

    reference = evaluate(pi.REFERENCE)
    rows = []
    for (i, lo, hi), (ref_lo, ref_hi) in zip(levels, reference, strict=True):
        gap = (float(hi) - float(lo)) / float(lo)
        rows.append({"i": i, "sigma_i": float(lo), "gap": gap, "signal": signal(ref_lo, ref_hi)})
    for name in variants:
        for row, ref, var in zip(rows, reference, evaluate(name), strict=True):
            for metric, value in variant_metrics(*ref, *var).items():
                row[f"{name} {metric}"] = value
    return rows


def measure(quick: bool, batch: int, levels: int, variants, seed: int) -> dict:
    """The difference study's record: what was measured ("header", "batch", "variants") and
    its rows."""
    config = study_config(quick)
    size, channels = config.data.image_size, config.data.channels
    images = pi.smooth_fields(seed, batch, size, channels)  # [B, H, W, C]
    noise = pi.study_noise(seed, images.shape)  # [B, H, W, C]
    sigmas = finest_grid(config)
    indices = study_indices(sigmas, levels)
    start = time.perf_counter()
    reference = pair_function(config, pi.REFERENCE)  # one compile: the scale and every level
    params, rms = study_network(config, reference, images, noise, seed)
    header = (
        f"{'tiny NCSN++ (--quick)' if quick else 'cifar10_ict NCSN++'}, N = {len(sigmas)}, "
        f"batch {batch}, {len(indices)} levels, {jax.devices()[0].device_kind}; F's RMS at "
        f"sigma_data before scaling the output conv: {rms:.3g}"
    )
    print(header)
    rows = run_study(config, params, images, noise, indices, variants, reference=reference)
    print(f"measured in {time.perf_counter() - start:.0f} s")
    return {"header": header, "quick": quick, "batch": batch, "variants": variants, "rows": rows}


# ----------------------------------------------------------------------------- reporting


def columns(variants, rows=None) -> list[str]:
    """The table's columns; with `rows`, only those the rows hold (a record written before a
    metric existed)."""
    cols = [*LEVEL_COLUMNS, *(f"{v} {m}" for v in variants for m in PER_VARIANT)]
    return cols if rows is None else [c for c in cols if c in rows[0]]


def markdown_table(rows, variants) -> str:
    cols = columns(variants, rows)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---:|" * len(cols)]
    for row in rows:
        cells = [str(row["i"])] + [f"{row[c]:.3g}" for c in cols[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def drowned_runs(rows, name: str, threshold: float, metric: str = "noise/signal"):
    """Runs of consecutive studied levels where `name`'s `metric` >= threshold, as (first row,
    last row) positions in `rows`."""
    runs, first = [], None
    for k, row in enumerate(rows):
        if row[f"{name} {metric}"] >= threshold:
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
    share of iCT's training pairs at those levels; then the same with only the student in the
    variant, when the record has it."""
    lines = []
    for name in variants:
        for metric in ("noise/signal", "student noise/signal"):
            if f"{name} {metric}" not in rows[0]:
                continue
            ratios = [row[f"{name} {metric}"] for row in rows]
            parts = [f"{name}: {metric} {min(ratios):.3g} to {max(ratios):.3g}"]
            for label, threshold in (("drowns", pi.DROWNS), ("degrades", pi.DEGRADES)):
                runs = drowned_runs(rows, name, threshold, metric)
                where = ", ".join(
                    f"sigma {rows[a]['sigma_i']:.3g}-{rows[b]['sigma_i']:.3g}" for a, b in runs
                )
                mass = (
                    f" ({training_mass(config, rows, runs):.1%} of training pairs)" if runs else ""
                )
                parts.append(f"{label} (>= {threshold:g}) at {where or 'no level'}{mass}")
            lines.append("; ".join(parts))
    return "\n".join(lines)


def plot_rows(axes, rows, variants, title: str) -> None:
    """Two panels, log-log against sigma_i: left, the signal and each variant's pair noise
    (relative to ||f||); right, each variant's noise/signal with the DROWNS and DEGRADES lines.
    Variants whose noise is exactly zero everywhere are listed in the legend as such."""
    left, right = axes
    sigma = [row["sigma_i"] for row in rows]
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
    for threshold, label in ((pi.DROWNS, "drowns"), (pi.DEGRADES, "degrades")):
        right.axhline(threshold, color="gray", ls="--", lw=1)
        right.annotate(label, (sigma[0], threshold), va="bottom", color="gray")
    left.set(xlabel="sigma_i", ylabel="relative to ||f||", title=title)
    right.set(xlabel="sigma_i", ylabel="||d_v - d|| / ||d||", title="noise / signal")
    for ax in axes:
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)


def panels(record: dict) -> list:
    """(kind, title, rows, variants) of each figure row of a record, in STUDIES order: the
    difference, then one row per tangent method."""
    out = []
    if "difference" in record:
        part = record["difference"]
        network = "tiny NCSN++" if part["quick"] else "NCSN++"
        title = f"iCT difference: {network}, N = 1281, batch {part['batch']}"
        out.append(("difference", title, part["rows"], part["variants"]))
    if "tangent" in record:
        part = record["tangent"]
        for method in precision_tangent.METHOD_CONFIGS:
            title = (
                f"{method} tangent{' (tiny net)' if part['quick'] else ''}, batch {part['batch']}"
            )
            out.append((method, title, part[method], part["variants"]))
    return out


def plot_png(record: dict) -> bytes:
    """PNG of every study in the record, one row of two panels each."""
    import matplotlib  # noqa: PLC0415 (only the plot needs it: requirements-dev.txt)

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt  # noqa: PLC0415

    rows = panels(record)
    fig, axes = plt.subplots(
        len(rows), 2, figsize=(12, 4.8 * len(rows)), constrained_layout=True, squeeze=False
    )
    for ax_pair, (kind, title, data, variants) in zip(axes, rows, strict=True):
        if kind == "difference":
            plot_rows(ax_pair, data, variants, title)
        else:
            precision_tangent.plot_rows(ax_pair, kind, data, variants, title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def as_record(loaded: dict) -> dict:
    """A JSON file's record as {study: part}; a file of the difference study alone, as written
    before the tangent study existed, holds that part at its top level."""
    return {"difference": loaded} if "rows" in loaded else loaded


def report(record: dict, header: bool = False) -> None:
    """Prints the table and the reading of every study in the record (after its headers if
    `header`)."""
    if "difference" in record:
        part = record["difference"]
        config, rows, variants = study_config(part["quick"]), part["rows"], part["variants"]
        if header:
            print(part["header"])
        print(markdown_table(rows, variants))
        print(reading(config, rows, variants))
    if "tangent" in record:
        part = record["tangent"]
        if header:
            print(part["header"])
        for method in precision_tangent.METHOD_CONFIGS:
            print(f"\n{method}:")
            print(precision_tangent.markdown_table(method, part[method], part["variants"]))
            print(precision_tangent.reading(method, part[method], part["variants"]))


def write_outputs(record: dict, json_flag: str, png_flag: str, quick: bool) -> None:
    """--json and --png: "auto" writes each study to its own docs file (nothing when quick), a
    path the whole record, '' nothing."""
    for flag, suffix, write, encode in (
        (json_flag, ".json", fileio.write_json_atomic, lambda r: r),
        (png_flag, ".png", fileio.write_bytes_atomic, plot_png),
    ):
        if flag == "auto":
            targets = [] if quick else [(AUTO_PATHS[s] + suffix, {s: record[s]}) for s in record]
        else:
            targets = [(flag, record)] if flag else []
        for path, part in targets:
            write(path, encode(part))
            print(f"wrote {path}")


def main(argv):
    del argv
    quick, variants = _QUICK.value, _VARIANTS.value
    pi.check_variants(variants)
    if _FROM_JSON.value:
        record = as_record(fileio.read_json(_FROM_JSON.value))
        report(record, header=True)
        write_outputs(record, "", _PNG.value, quick)
        return
    studies = STUDIES if _STUDY.value == "both" else (_STUDY.value,)
    record = {}
    if "difference" in studies:
        batch, levels = _BATCH.value or (2 if quick else 4), _LEVELS.value or (4 if quick else 20)
        record["difference"] = measure(quick, batch, levels, variants, _SEED.value)
    if "tangent" in studies:
        batch, times = _BATCH.value or 2, _TIMES.value or (3 if quick else 5)
        record["tangent"] = precision_tangent.measure(quick, batch, times, variants, _SEED.value)
    report(record)
    write_outputs(record, _JSON.value, _PNG.value, quick)


if __name__ == "__main__":
    define_flags()
    app.run(main)
