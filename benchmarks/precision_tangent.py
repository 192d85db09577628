"""Precision study of the JVP tangent (issue 22): does a lower precision spoil the tangent that
sCT and MeanFlow learn from? Run by benchmarks/precision_study.py (--study=tangent or both).

For sCT (configs/cifar10_sct.py: NCSN++ in TrigFlow, c_noise(t) = t) and MeanFlow
(configs/cifar10_meanflow.py's U-Net), at --times times t spread over the method's own time law
(quantiles z in [-Z_RANGE, Z_RANGE] of its normal variable: sCT's tau = ln(sd tan t), MeanFlow's
logit t), with one fixed image and noise per sample, the network in evaluation mode and its JVP
exactly as the training step takes them (sct.jvp_tangent, meanflow.total_derivative), in float32
at highest (the reference) and in each variant v of precision_inputs.VARIANTS. Per time, each
a per-sample ratio averaged over the batch:

sCT: x_t = cos t x0 + sin t z, dx_t/dt = cos t z - sin t x0 (z ~ N(0, sd^2 I)); the tangent
dF = cos t sin t dF/dt (the JVP's output); g = sct.tangent(F, dF, x_t, dx_t/dt, t, r = 1) and
g^ = g / (||g|| + c) (sct.normalize_tangent), the regression target of F_theta - F-: the step's
gradient is along g^ alone, so ||g^_v - g^|| / ||g^|| is its noise/signal.

  v F error        ||F_v - F|| / ||F||
  v tangent error  ||dF_v - dF|| / ||dF||
  v target error   ||g^_v - g^|| / ||g^||, F- and dF in v (model.dtype = v's: one pass)
  v jvp-only error the same with only dF in v (network float32, method.jvp_dtype = v's)
  v net-only error the same with only F- in v (model.dtype = v's, method.jvp_dtype = float32)

MeanFlow at r = 0 (the largest gap t - r at each t; the 1-step sampler's pair is (0, 1)):
z_t = (1 - t) x + t e, v = e - x; the target T = v - (t - r) du/dt.

  v u error        ||u_v - u|| / ||u||
  v tangent error  ||du_v - du|| / ||du||       (du = du/dt)
  v target error   ||T_v - T|| / ||T||           (T takes only du/dt: with the JVP in float32,
                                                 method.jvp_dtype, it is 0 whatever the network)

Scale columns: "g rms" (sCT) and "target rms" (MeanFlow), the per-element RMS of the reference's
g and T. Both targets carry their own sampling noise of about that size: dx_t/dt and v are one
draw's velocity, not the expected one; sCT's ||g|| stayed about 2 on the 64-pixel digits
through training (its tangent_norm metric, BENCHMARKS.md "sCT's starting point" runs). The
network: precision_inputs.open_network, the output conv scaled by the power of two nearest to
unit output RMS at the middle time (within a factor sqrt(2) of it; exact, so an unchanged variant
errs by exactly 0).
"""

import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import precision_inputs as pi
from cm.methods import meanflow, sct
from configs import cifar10_meanflow, cifar10_sct

Z_RANGE = 2.5  # the studied times: z in [-Z_RANGE, Z_RANGE] of the law's normal variable
METHOD_CONFIGS = {"sct": cifar10_sct.get_config, "meanflow": cifar10_meanflow.get_config}
METRICS = {
    "sct": ("F error", "tangent error", "target error", "jvp-only error", "net-only error"),
    "meanflow": ("u error", "tangent error", "target error"),
}
LEVEL_COLUMNS = {"sct": ("t", "sigma", "z", "g rms"), "meanflow": ("t", "z", "target rms")}
MEANFLOW_R = 0.0  # r of every studied pair: t - r = t


def study_times(config, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(z, t), float64 [count] each: `count` quantiles z of the method's time law and its times.
    sCT: tau = Pm + Ps z, t = arctan(e^tau / sd) (sct.trig_time_law); MeanFlow: t =
    sigmoid(mean + std z) of its t law (meanflow.logit_normal)."""
    z = np.linspace(-Z_RANGE, Z_RANGE, count)
    m = config.method
    if m.name == "sct":
        return z, np.arctan(np.exp(m.scm_p_mean + m.scm_p_std * z) / m.sigma_data)
    return z, 1.0 / (1.0 + np.exp(-(m.mf_t_mean + m.mf_t_std * z)))


def jvp_pass(config, name: str):
    """jitted (params, inputs...) -> (network output, its tangent), float32 [N, H, W, C] each, in
    variant `name`: sCT (params, x_t, t, dx_t/dt) -> (F, cos t sin t dF/dt); MeanFlow (params,
    z, r, t, v) -> (u, du/dt). The train form of experiment.network_forms, evaluation mode."""
    net = pi.variant_forms(config, name).train
    if config.method.name == "sct":

        def run(params, x_t, t, dxdt):
            return sct.jvp_tangent(lambda x, s: net(params, x, s), x_t, t, dxdt)
    else:

        def run(params, z, r, t, v):
            return meanflow.total_derivative(lambda a, b, c: net(params, a, b, c), z, r, t, v)

    return jax.jit(pi.emulated(run, name))


def study_inputs(config, images, noise, times):
    """The inputs of jvp_pass after params, for every time and image: the batch repeated per
    time, level k in rows [k B, (k + 1) B). images, noise: [B, H, W, C]; times: [L]."""
    reps = len(times)
    x = np.tile(images, (reps, 1, 1, 1))  # [L B, H, W, C]
    n = np.tile(noise, (reps, 1, 1, 1))
    t = np.repeat(times, len(images)).astype(np.float32)  # [L B]
    t4 = t[:, None, None, None]
    if config.method.name == "sct":
        sd = config.method.sigma_data
        z = sd * n
        x_t = np.cos(t4) * x + np.sin(t4) * z
        return x_t, t, np.cos(t4) * z - np.sin(t4) * x  # x_t, t, dx_t/dt
    r = np.full_like(t, MEANFLOW_R)
    return (1.0 - t4) * x + t4 * n, r, t, n - x  # z_t, r, t, v


def normalized_target(config, inputs, F, dF):
    """sCT's g^ = normalize(tangent(F-, dF, x_t, dx_t/dt, t, r = 1)) with the run's c and norm,
    and g before the normalization; float32 [N, H, W, C] each, by the training step's
    functions."""
    m = config.method
    x_t, t, dxdt = inputs
    g = sct.tangent(F, dF, x_t, dxdt, jnp.asarray(t), 1.0, m.sigma_data)
    return sct.normalize_tangent(g, m.scm_tangent_c, m.scm_tangent_norm)[0], g


def meanflow_target(inputs, du):
    """T = v - (t - r) du/dt, float32 [N, H, W, C]."""
    _, r, t, v = inputs
    return v - (t - r)[:, None, None, None] * np.asarray(du)


def level_metrics(config, inputs, ref, var) -> dict:
    """The method's METRICS of one variant's (output, tangent) against the reference's, as
    [N]-row arrays of per-sample ratios (averaged per level by the caller)."""
    ratio = lambda a, b: pi.per_sample_norm(a) / pi.per_sample_norm(b)  # noqa: E731
    (out, tangent), (out_v, tangent_v) = ref, var
    if config.method.name == "meanflow":
        target = meanflow_target(inputs, tangent)
        return {
            "u error": ratio(np.subtract(out_v, out), out),
            "tangent error": ratio(np.subtract(tangent_v, tangent), tangent),
            "target error": ratio(meanflow_target(inputs, tangent_v) - target, target),
        }
    target = normalized_target(config, inputs, out, tangent)[0]

    def target_error(F, dF):
        return ratio(np.subtract(normalized_target(config, inputs, F, dF)[0], target), target)

    return {
        "F error": ratio(np.subtract(out_v, out), out),
        "tangent error": ratio(np.subtract(tangent_v, tangent), tangent),
        "target error": target_error(out_v, tangent_v),
        "jvp-only error": target_error(out, tangent_v),
        "net-only error": target_error(out_v, tangent),
    }


def level_rows(config, z, times, inputs, ref, batch: int) -> list[dict]:
    """One row per time with LEVEL_COLUMNS: the reference's scale of the target."""
    if config.method.name == "sct":
        scale = np.asarray(normalized_target(config, inputs, *ref)[1])
        extra = lambda t: {"sigma": float(config.method.sigma_data * np.tan(t))}  # noqa: E731
        name = "g rms"
    else:
        scale, extra, name = meanflow_target(inputs, ref[1]), lambda t: {}, "target rms"
    rows = []
    for k, (zk, tk) in enumerate(zip(z, times, strict=True)):
        level = slice(k * batch, (k + 1) * batch)
        rows.append({"t": float(tk), **extra(tk), "z": float(zk), name: pi.rms(scale[level])})
    return rows


def measure_method(method: str, quick: bool, batch: int, count: int, variants, seed: int, say):
    """The rows of one method: LEVEL_COLUMNS and "<variant> <metric>" per variant."""
    config = pi.paper_config(METHOD_CONFIGS[method], quick)
    size, channels = config.data.image_size, config.data.channels
    images = pi.smooth_fields(seed, batch, size, channels)  # [B, H, W, C]
    noise = pi.study_noise(seed, images.shape)  # [B, H, W, C]
    z, times = study_times(config, count)
    inputs = study_inputs(config, images, noise, times)
    params = pi.open_network(config, seed)

    def evaluate(name, params):
        start, fn = time.perf_counter(), jvp_pass(config, name)
        out = jax.device_get(fn(params, *inputs))
        say(f"  {method} {name}: {len(times)} times in {time.perf_counter() - start:.0f} s")
        return out

    reference = evaluate(pi.REFERENCE, params)
    middle = slice((count // 2) * batch, (count // 2 + 1) * batch)
    scale = pi.rms(reference[0][middle])
    # A power of two: the outputs (linear in the output conv) scale exactly, so the reference
    # needs no second evaluation and a variant equal to it (the CPU's default) errs by exactly 0.
    factor = float(2.0 ** np.round(-np.log2(scale)))
    params = pi.scale_output(params, factor)
    reference = jax.tree.map(lambda a: a * np.float32(factor), reference)
    rows = level_rows(config, z, times, inputs, reference, batch)
    for name in variants:
        found = level_metrics(config, inputs, reference, evaluate(name, params))
        for k, row in enumerate(rows):
            for metric, values in found.items():
                row[f"{name} {metric}"] = float(np.mean(values[k * batch : (k + 1) * batch]))
    return rows, scale


def measure(quick: bool, batch: int, count: int, variants, seed: int, say=print) -> dict:
    """The tangent study's record: what was measured and, per method, its rows."""
    start, out, scales = time.perf_counter(), {}, {}
    for method in METHOD_CONFIGS:
        out[method], scales[method] = measure_method(
            method, quick, batch, count, variants, seed, say
        )
    network = "tiny networks (--quick)" if quick else "cifar10_sct NCSN++, cifar10_meanflow U-Net"
    header = (
        f"JVP tangent: {network}, batch {batch}, {count} times, {jax.devices()[0].device_kind}; "
        "network output RMS before scaling the output conv: "
        + ", ".join(f"{m} {s:.3g}" for m, s in scales.items())
    )
    say(header)
    say(f"measured in {time.perf_counter() - start:.0f} s")
    return {"header": header, "quick": quick, "batch": batch, "variants": list(variants), **out}


# ----------------------------------------------------------------------------- reporting


def columns(method: str, variants) -> list[str]:
    metrics = METRICS[method]
    return [*LEVEL_COLUMNS[method], *(f"{v} {m}" for v in variants for m in metrics)]


def markdown_table(method: str, rows, variants) -> str:
    cols = columns(method, variants)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---:|" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join(f"{row[c]:.3g}" for c in cols) + " |")
    return "\n".join(lines)


def reading(method: str, rows, variants) -> str:
    """Per variant: the range of each error, and the times where the target error reaches the
    DEGRADES and DROWNS lines."""
    lines = []
    for name in variants:
        parts = []
        for metric in METRICS[method]:
            values = [row[f"{name} {metric}"] for row in rows]
            parts.append(f"{metric} {min(values):.3g} to {max(values):.3g}")
        for label, threshold in (("drowns", pi.DROWNS), ("degrades", pi.DEGRADES)):
            at = [f"{row['t']:.3g}" for row in rows if row[f"{name} target error"] >= threshold]
            parts.append(f"target {label} (>= {threshold:g}) at t = {', '.join(at) or 'none'}")
        lines.append(f"{method} {name}: " + "; ".join(parts))
    return "\n".join(lines)


def plot_rows(axes, method: str, rows, variants, title: str) -> None:
    """Two panels against the time (sCT: sigma = sd tan t; MeanFlow: t), log-log: left each
    variant's tangent error, right its target error (sCT: also the jvp-only and net-only
    policies, dashed and dotted) with the DEGRADES and DROWNS lines."""
    x_name = "sigma" if method == "sct" else "t"
    x = [row[x_name] for row in rows]
    left, right = axes
    for k, name in enumerate(variants):
        style = {"color": f"C{k}", "ms": 3}
        if not any(row[f"{name} tangent error"] for row in rows):
            left.plot([], [], " ", label=f"{name}: identical to the reference (0)")
            continue
        left.loglog(x, [row[f"{name} tangent error"] for row in rows], "-o", label=name, **style)
        right.loglog(x, [row[f"{name} target error"] for row in rows], "-o", label=name, **style)
        if method == "sct":
            for metric, line in (("jvp-only error", "--"), ("net-only error", ":")):
                values = [row[f"{name} {metric}"] for row in rows]
                right.loglog(x, values, line, label=f"{name}, {metric[:-6]}", **style)
    for threshold in (pi.DROWNS, pi.DEGRADES):
        right.axhline(threshold, color="gray", ls="--", lw=1)
    left.set(xlabel=x_name, ylabel="||tangent_v - tangent|| / ||tangent||", title=title)
    right.set(xlabel=x_name, ylabel="||target_v - target|| / ||target||", title="target error")
    for ax in axes:
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7)
