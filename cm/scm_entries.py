"""The method-table entries of sCT, sCD (cm/sct.py over cm/trigflow.py) and MeanFlow
(cm/meanflow.py), with their sampler kinds (docs/methods.md section 9).

The Denoisers of these entries are not EDM-signature denoisers of sigma: for sct/scd, train is
the normalized velocity F(params, x_t, t, labels, train, dropout_rng, augment_labels) of a
TrigFlow time t, sample the consistency function f = cos t x_t - sin t sd F, teacher the F of
the EDM form (an EDM network reused exactly, trigflow.make_flow); for meanflow, all three are
the average velocity u(params, z, r, t, labels, train, dropout_rng, augment_labels).

sCM's learned weighting w(t) is the entries' auxiliary parameter tree (init_aux); sCD's frozen
teacher is its extra state (init_extra, a copy of method.init_from's EDM network, as CD).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from cm import augment, meanflow, sct, trigflow
from cm.method_spec import Denoisers, Method, SamplerKind, invalid


def _flow(config, model, form: str):
    m = config.method
    return trigflow.make_flow(model, form, m.sigma_data, m.trig_time_scale, m.noise_label)


def trig_parameterization(config, model) -> Denoisers:
    """F of method.trig_form (train), its consistency function (sample), the EDM form's F
    (sCD's teacher)."""
    F = _flow(config, model, config.method.trig_form)
    f = trigflow.consistency_fn(F, config.method.sigma_data)
    return Denoisers(train=F, sample=f, teacher=_flow(config, model, "edm"))


def _weighting_module(config) -> sct.TimeWeighting:
    m = config.method
    return sct.TimeWeighting(m.scm_weighting_channels, m.scm_weighting_fourier_scale)


def init_weighting(config, rng):
    """w(t)'s parameters (zero output layer: w = 0 at the start)."""
    return sct.init_weighting(_weighting_module(config), rng)


def scm_objective(config, denoisers, distill: bool):
    """loss_fn(params, batch, rng, step, aux, extra) of sCT (distill False) or sCD: aux is
    w(t)'s parameters, extra {"teacher": the EDM network} for sCD."""
    m = config.method
    time_label = trigflow.time_label_fn(m.trig_form, m.sigma_data, m.trig_time_scale, m.noise_label)
    weighting = sct.make_weighting(_weighting_module(config), time_label)
    loss = functools.partial(
        sct.scm_loss,
        denoisers.train,
        weighting,
        sigma_data=m.sigma_data,
        p_mean=m.scm_p_mean,
        p_std=m.scm_p_std,
        warmup_steps=m.scm_tangent_warmup_steps,
        tangent_c=m.scm_tangent_c,
        prior_weighting=m.scm_prior_weighting,
        tangent_norm=m.scm_tangent_norm,
    )

    def loss_fn(params, batch, rng, step, aux=(), extra=()):
        if not distill:
            return loss(params, aux, batch, rng, step)
        teacher_params = jax.lax.stop_gradient(extra["teacher"])
        return loss(
            params, aux, batch, rng, step, teacher=denoisers.teacher, teacher_params=teacher_params
        )

    return loss_fn


def init_teacher(config, params) -> dict:
    """sCD's frozen teacher: a copy of the starting (method.init_from's EDM) parameters."""
    del config
    return {"teacher": jax.tree.map(jnp.copy, params)}


def _number(path, value, lo=None, lo_open=False, integer=False):
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    ok = ok and (isinstance(value, int) or not integer)
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if not ok:
        kind = "an integer" if integer else "a number"
        bound = "" if lo is None else f" {'>' if lo_open else '>='} {lo}"
        invalid(path, value, f"it must be {kind}{bound}")


# sCM's own time label c_noise(t) = t: its JVP time tangent cos t sin t dc/dt peaks at 1/2.
SCM_LABEL_TANGENT = 0.5


def label_time_tangent(config) -> float:
    """The largest |cos t sin t d c_noise / dt| over t in (0, pi/2): what one unit of the JVP's
    time direction (jvp_tangent scales it by cos t sin t) moves the network's time label. For
    the edm form it is the label's slope per unit ln sigma (d ln sigma / dt = 1 / (cos t sin t))."""
    m = config.method
    label = trigflow.time_label_fn(m.trig_form, m.sigma_data, m.trig_time_scale, m.noise_label)
    t = jnp.linspace(0.01, np.pi / 2 - 0.01, 64)  # [64], inside the open interval
    _, dlabel = jax.jvp(label, (t,), (jnp.ones_like(t),))
    return float(jnp.max(jnp.abs(jnp.cos(t) * jnp.sin(t) * dlabel)))


def check_scm(config, mode: str, distill: bool):
    """sCT/sCD fields (every mode: they shape the loss, the state and the samplers)."""
    del mode
    m = config.method
    if m.trig_form not in trigflow.TRIG_FORMS:
        invalid("method.trig_form", m.trig_form, f"valid forms are {list(trigflow.TRIG_FORMS)}")
    if distill and m.trig_form != "edm":
        invalid(
            "method.trig_form",
            m.trig_form,
            "sCD's student starts as its EDM teacher, so it needs the edm form",
            "--config.method.trig_form=edm",
        )
    if m.scm_tangent_norm not in sct.TANGENT_NORMS:
        invalid(
            "method.scm_tangent_norm", m.scm_tangent_norm, f"valid are {list(sct.TANGENT_NORMS)}"
        )
    _number("method.trig_time_scale", m.trig_time_scale, 0, lo_open=True)
    tangent = label_time_tangent(config)
    if tangent > SCM_LABEL_TANGENT:
        logging.warning(
            "The network's time label moves %.3g per unit of the JVP's time tangent, %.0fx "
            "sCM's c_noise(t) = t; sCM found such labels unstable and sCD on the digits diverged "
            "with noise_label 250_log_sigma (docs/methods.md section 9).",
            tangent,
            tangent / SCM_LABEL_TANGENT,
        )
    _number("method.scm_p_mean", m.scm_p_mean)
    _number("method.scm_p_std", m.scm_p_std, 0, lo_open=True)
    _number("method.scm_tangent_warmup_steps", m.scm_tangent_warmup_steps, 0, integer=True)
    _number("method.scm_tangent_c", m.scm_tangent_c, 0, lo_open=True)
    _number("method.scm_weighting_channels", m.scm_weighting_channels, 2, integer=True)
    if m.scm_weighting_channels % 2:
        invalid("method.scm_weighting_channels", m.scm_weighting_channels, "it must be even")
    _number("method.scm_weighting_fourier_scale", m.scm_weighting_fourier_scale, 0, lo_open=True)
    t_max = trigflow.t_max(m.sigma_max, m.sigma_data)
    for i, mids in enumerate(config.sampling.trigflow_mid_times):
        seq = (t_max, *mids)
        if not all(isinstance(t, int | float) for t in mids) or not all(
            a > b > 0 for a, b in zip(seq, seq[1:], strict=False)
        ):
            invalid(
                f"sampling.trigflow_mid_times[{i}]",
                tuple(mids),
                f"times after the first step must decrease within (0, t_max = {t_max:.4f})",
            )


def check_meanflow(config, mode: str):
    """MeanFlow fields (every mode)."""
    del mode
    m = config.method
    if m.mf_condition not in meanflow.MF_CONDITIONS:
        invalid("method.mf_condition", m.mf_condition, f"valid are {list(meanflow.MF_CONDITIONS)}")
    if m.mf_tr_order not in meanflow.TR_ORDERS:
        invalid("method.mf_tr_order", m.mf_tr_order, f"valid are {list(meanflow.TR_ORDERS)}")
    _number("method.mf_time_scale", m.mf_time_scale, 0, lo_open=True)
    for name in ("mf_t_mean", "mf_r_mean"):
        _number(f"method.{name}", m[name])
    for name in ("mf_t_std", "mf_r_std", "mf_norm_eps"):
        _number(f"method.{name}", m[name], 0, lo_open=True)
    _number("method.mf_norm_p", m.mf_norm_p, 0)
    f = m.mf_equal_fraction
    if not (isinstance(f, int | float) and 0 <= f <= 1):
        invalid("method.mf_equal_fraction", f, "the fraction of rows with r = t is in [0, 1]")
    for i, times in enumerate(config.sampling.meanflow_times):
        ok = len(times) >= 2 and times[0] == 1 and times[-1] == 0
        ok = ok and all(a > b for a, b in zip(times, times[1:], strict=False))
        if not ok:
            invalid(
                f"sampling.meanflow_times[{i}]",
                tuple(times),
                "each schedule decreases from 1.0 (noise) to 0.0 (data)",
            )


def meanflow_parameterization(config, model) -> Denoisers:
    """u(params, z, r, t, ...) for every use (MeanFlow has no teacher)."""
    m = config.method
    u = meanflow.make_u(model, m.mf_condition, m.mf_time_scale)
    return Denoisers(train=u, sample=u, teacher=u)


def meanflow_objective(config, denoisers):
    """MeanFlow's loss_fn of the table's signature (no aux, no extra); EDM's augmentation of
    config.augment when augment.p > 0 (the CIFAR-10 recipe)."""
    m = config.method
    loss = functools.partial(
        meanflow.meanflow_loss,
        denoisers.train,
        t_mean=m.mf_t_mean,
        t_std=m.mf_t_std,
        r_mean=m.mf_r_mean,
        r_std=m.mf_r_std,
        equal_fraction=m.mf_equal_fraction,
        tr_order=m.mf_tr_order,
        norm_p=m.mf_norm_p,
        norm_eps=m.mf_norm_eps,
        augment_settings=augment.Settings.from_config(config.augment),
    )

    def loss_fn(params, batch, rng, step, aux=(), extra=()):
        del aux, extra
        return loss(params, batch, rng, step)

    return loss_fn


def trigflow_names(config) -> dict:
    """One TrigFlow sampler per entry of sampling.trigflow_mid_times, named by its steps."""
    return {f"{len(m) + 1}step": tuple(m) for m in config.sampling.trigflow_mid_times}


def meanflow_names(config) -> dict:
    """One MeanFlow sampler per entry of sampling.meanflow_times, named by its steps."""
    return {f"{len(t) - 1}step": tuple(t) for t in config.sampling.meanflow_times}


def build_trigflow(config, f, levels):
    """x0 = f(sd z, t_max), t_max = arctan(method.sigma_max / sd), then one step per mid time."""
    m = config.method
    start = trigflow.t_max(m.sigma_max, m.sigma_data)
    sample = functools.partial(
        trigflow.trigflow_sample, f, sigma_data=m.sigma_data, start_time=start, mid_times=levels
    )
    return lambda params, rng, labels, shape: sample(params, rng, labels, shape)


def build_meanflow(config, u, levels):
    """z_r = z_t - (t - r) u(z_t, r, t) over the schedule `levels` (1.0 ... 0.0)."""
    del config
    return lambda params, rng, labels, shape: meanflow.meanflow_sample(
        u, params, rng, labels, shape, times=levels
    )


SAMPLER_KINDS = {
    "trigflow": SamplerKind(names=trigflow_names, build=build_trigflow),
    "meanflow": SamplerKind(names=meanflow_names, build=build_meanflow),
}

SCT = Method(
    objective=functools.partial(scm_objective, distill=False),
    parameterization=trig_parameterization,
    sampler="trigflow",
    init_aux=init_weighting,
    check=functools.partial(check_scm, distill=False),
)

SCD = Method(
    objective=functools.partial(scm_objective, distill=True),
    parameterization=trig_parameterization,
    sampler="trigflow",
    init_aux=init_weighting,
    init_extra=init_teacher,
    check=functools.partial(check_scm, distill=True),
    init_sources=("edm",),
    requires_init_from=True,
)

MEANFLOW = Method(
    objective=meanflow_objective,
    parameterization=meanflow_parameterization,
    sampler="meanflow",
    check=check_meanflow,
    augments=True,
)
