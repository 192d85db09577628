"""TrigFlow (docs/methods.md section 9): the sCM parameterization over cm's networks.

x_t = cos(t) x0 + sin(t) z with z ~ N(0, sd^2 I), t in [0, pi/2]; the PF-ODE velocity is
dx_t/dt = sd F(x_t / sd, c_noise(t)) and the consistency function (also the x0 prediction) is

    f(x_t, t) = cos(t) x_t - sin(t) sd F(x_t / sd, c_noise(t)),    so f(x, 0) = x.

Two forms of F over one raw network `net(x, c_noise, labels, ...)` (config method.trig_form):

  trigflow  F = net(x_t / sd, time_scale * t): sCM's c_noise(t) = t with positional time
            embeddings (its Figure 4 and hyperparameter tables); a network trained this way.
  edm       F = -net(x_t / sd, c_noise_edm(sd tan t)): an EDM-trained network reused exactly.
            With sigma = sd tan t, EDM's scalings are c_skip = cos^2 t, c_out = sd sin t and
            c_in = cos t / sd, so D(x_t / cos t, sigma) = cos t x_t + sd sin t net(x_t / sd, .)
            and F = (cos t x_t - D(x_t / cos t, sd tan t)) / (sd sin t) = -net(x_t / sd, .):
            the conversion of the sCM paper without its 0/0 at t -> 0. sCD (and sCT started
            from an EDM checkpoint) use this form so the student starts as the teacher.

Samplers: 1 step x0 = f(sd z, t_max) with t_max = arctan(sigma_max / sd); each further step
re-noises x_t = cos(t) x0 + sin(t) sd z' and applies f again (sCM: one step at t = 1.1).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from cm import precond
from cm.precond import bcast

TRIG_FORMS = ("trigflow", "edm")


def time_from_sigma(sigma, sigma_data: float):
    """TrigFlow time of an EDM noise level: t = arctan(sigma / sd)."""
    return jnp.arctan(sigma / sigma_data)


def sigma_from_time(t, sigma_data: float):
    """EDM noise level of a TrigFlow time: sigma = sd tan(t)."""
    return sigma_data * jnp.tan(t)


def edm_time_label(t, sigma_data: float, noise_label: str):
    """The EDM network's c_noise at sigma = sd tan t (config method.noise_label), with sigma kept
    above the smallest normal float so that t = 0 gives a finite label (and f(x, 0) = x)."""
    sigma = sigma_from_time(t, sigma_data)
    return precond.noise_label_fn(noise_label)(jnp.maximum(sigma, jnp.finfo(sigma.dtype).tiny))


def time_label_fn(form: str, sigma_data: float, time_scale: float, noise_label: str):
    """t -> the c_noise the network of `form` reads (also the adaptive weighting's input).

    `form` is a key of TRIG_FORMS; `time_scale` is the trigflow form's c_noise(t) =
    time_scale * t; `noise_label` the edm form's c_noise (precond.NOISE_LABELS) of sd tan t.
    """
    if form not in TRIG_FORMS:
        raise ValueError(f"Unknown method.trig_form {form!r}; valid: {list(TRIG_FORMS)}.")
    if form == "trigflow":
        return lambda t: time_scale * t
    return functools.partial(edm_time_label, sigma_data=sigma_data, noise_label=noise_label)


def make_flow(model, form: str, sigma_data: float, time_scale: float, noise_label: str):
    """The normalized velocity F (dx_t/dt = sd F) as a function
    F(params, x_t, t, labels=None, train=False, dropout_rng=None, augment_labels=None).

    x_t: [B, H, W, C] TrigFlow sample (unscaled); t: [B] TrigFlow times. Returns F [B, H, W, C]
    in x_t's dtype. The other arguments as in `time_label_fn`.
    """
    label = time_label_fn(form, sigma_data, time_scale, noise_label)
    sign = 1.0 if form == "trigflow" else -1.0

    def flow(params, x_t, t, labels=None, train=False, dropout_rng=None, augment_labels=None):
        rngs = {"dropout": dropout_rng} if dropout_rng is not None else {}
        extra = {} if augment_labels is None else {"augment_labels": augment_labels}
        out = model.apply(
            {"params": params}, x_t / sigma_data, label(t), labels, train=train, rngs=rngs, **extra
        )
        return sign * out.astype(x_t.dtype)

    return flow


def x0_from_flow(x_t, t, F_out, sigma_data: float):
    """f = cos(t) x_t - sin(t) sd F: the consistency function / x0 prediction [B, H, W, C]."""
    return bcast(jnp.cos(t)) * x_t - bcast(jnp.sin(t)) * sigma_data * F_out


def consistency_fn(F, sigma_data: float):
    """f(params, x_t, t, labels=None, train=False, dropout_rng=None) = cos t x_t - sin t sd F."""

    def f(params, x_t, t, labels=None, train=False, dropout_rng=None, augment_labels=None):
        out = F(params, x_t, t, labels, train, dropout_rng, augment_labels)
        return x0_from_flow(x_t, t, out, sigma_data)

    return f


def t_max(sigma_max: float, sigma_data: float) -> float:
    """The 1-step sampler's starting time arctan(sigma_max / sd) (1.5645 for 80 / 0.5)."""
    return float(np.arctan(sigma_max / sigma_data))


def trigflow_sample(f, params, rng, labels, shape, *, sigma_data, start_time, mid_times):
    """x0 = f(sd z, start_time); then for each t in mid_times: x0 = f(cos t x0 + sin t sd z', t).

    f: consistency_fn(...); shape: (B, H, W, C); labels: [B] or None; mid_times: decreasing
    TrigFlow times after the first step (sCM's 2-step sampler: (1.1,)).
    """
    keys = jax.random.split(rng, len(mid_times) + 1)
    b = shape[0]
    x = sigma_data * jax.random.normal(keys[0], shape)  # x_{t_max} ~ N(0, sd^2 I)
    x = f(params, x, jnp.full((b,), start_time), labels)
    for t, key in zip(mid_times, keys[1:], strict=True):
        z = sigma_data * jax.random.normal(key, shape)
        x = float(np.cos(t)) * x + float(np.sin(t)) * z
        x = f(params, x, jnp.full((b,), t), labels)
    return x
