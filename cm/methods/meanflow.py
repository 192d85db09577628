"""MeanFlow (docs/methods.md section 9): one-step generation by the average velocity.

Conventions of the authors' code (Gsunshine/meanflow, JAX; Gsunshine/py-meanflow, CIFAR-10):
t = 0 is data, t = 1 noise, z_t = (1 - t) x + t e with e ~ N(0, I), v = e - x, and r <= t.
The network predicts the average velocity over [r, t],

    u(z_t, r, t) = (1 / (t - r)) int_r^t v(z_s, s) ds,    so u(z, t, t) = v(z, t),

conditioned on two time labels: (t, t - r) as both official codes do, or (t, r) (config
method.mf_condition), each scaled by method.mf_time_scale (1: the raw times, as the code feeds
its positional embedding) and embedded like the noise label (models/unet.py
second_noise_label). The MeanFlow identity u = v - (t - r) du/dt (total derivative along the
trajectory) gives the training target

    (u, du/dt) = jvp(u, (z_t, r, t), (v, 0, 1));   target = sg(v - (t - r) du/dt)
    loss_i = ||u - target||^2 / sg(||u - target||^2 + eps)^p     (sums over the sample)

t and r are logit-normal; a fixed fraction of each batch has r = t (plain flow matching).
With EDM's augmentation on (augment.p > 0, the CIFAR-10 recipe), x is the augmented image, so
v = e - x_aug, and its labels condition u in the JVP (constants: no tangent); sampling passes
none, which the network reads as zero labels. The JVP runs at the network's precision in that
one pass unless method.jvp_dtype / method.jvp_matmul_precision name its own (cm/precision.py);
the target, the error and the weighting are float32.
Sampling: z_r = z_t - (t - r) u(z_t, r, t) over decreasing times from 1 to 0; one step is
x = e - u(e, 0, 1).
"""

import functools

import jax
import jax.numpy as jnp

from cm import precision
from cm.methods import augment
from cm.methods.spec import Denoisers, Method, SamplerKind, invalid, require_number, stateless
from cm.precond import bcast

# MeanFlow's own config fields (arXiv 2505.13447; configs/common.py merges them).
DEFAULTS = {
    # The second time label: t_minus_r = (t, t - r) (both official codes) | r = (t, r); times
    # scaled by mf_time_scale.
    "mf_condition": "t_minus_r",
    "mf_time_scale": 1.0,  # raw times in [0, 1], as the official codes feed them
    "mf_t_mean": -2.0,  # t, r logit-normal(mean, std): the paper's CIFAR-10 recipe
    "mf_t_std": 2.0,
    "mf_r_mean": -2.0,
    "mf_r_std": 2.0,
    # sorted: (t, r) = (max, min) of the two draws (the paper) | clamped: t its own draw,
    # r = min(t, r) (py-meanflow's v1).
    "mf_tr_order": "sorted",
    "mf_equal_fraction": 0.25,  # rows with r = t (CIFAR-10: r != t for 75%)
    "mf_norm_p": 0.75,  # adaptive loss weighting 1 / sg(err + eps)^p (CIFAR-10)
    "mf_norm_eps": 1e-3,
    # The JVP pass's dtype and matmul precision (cm/precision.py): "model" = the network's, one
    # pass whose primal is the prediction, as both official codes (FastGen's
    # precision_amp_jvp default).
    **precision.JVP_DEFAULTS,
}

MF_CONDITIONS = ("t_minus_r", "r")  # the second time label: t - r (both official codes) or r
TR_ORDERS = ("sorted", "clamped")  # (t, r) = (max, min) of the draws (paper) | r = min(t, r)


def make_u(model, condition: str, time_scale: float):
    """u(params, z, r, t, labels=None, train=False, dropout_rng=None, augment_labels=None).

    z: [B, H, W, C]; r, t: [B]. The network (second_noise_label=True) reads time_scale * t and
    time_scale * (t - r) (condition "t_minus_r") or time_scale * r ("r"). Returns [B, H, W, C].
    """
    if condition not in MF_CONDITIONS:
        raise ValueError(
            f"Unknown method.mf_condition {condition!r}; valid: {list(MF_CONDITIONS)}."
        )

    def u(params, z, r, t, labels=None, train=False, dropout_rng=None, augment_labels=None):
        second = t - r if condition == "t_minus_r" else r
        rngs = {"dropout": dropout_rng} if dropout_rng is not None else {}
        extra = {} if augment_labels is None else {"augment_labels": augment_labels}
        out = model.apply(
            {"params": params},
            z,
            time_scale * t,
            labels,
            train=train,
            rngs=rngs,
            second_noise_labels=time_scale * second,
            **extra,
        )
        return out.astype(z.dtype)

    return u


def logit_normal(key, n: int, mean: float, std: float):
    """sigmoid(mean + std * N(0, 1)): float32 [n] in (0, 1)."""
    return jax.nn.sigmoid(mean + std * jax.random.normal(key, (n,)))


def sample_tr(
    key,
    n: int,
    *,
    t_mean: float,
    t_std: float,
    r_mean: float,
    r_std: float,
    equal_fraction: float,
    tr_order: str,
):
    """(t, r), float32 [n] each, t >= r: two independent logit-normal draws a (t's law) and b
    (r's law); "sorted" takes t, r = max, min (the paper's sampler), "clamped" t = a,
    r = min(a, b) (py-meanflow's v1). The first floor(n * equal_fraction) rows get r = t."""
    if tr_order not in TR_ORDERS:
        raise ValueError(f"Unknown method.mf_tr_order {tr_order!r}; valid: {list(TR_ORDERS)}.")
    k_t, k_r = jax.random.split(key)
    a = logit_normal(k_t, n, t_mean, t_std)
    b = logit_normal(k_r, n, r_mean, r_std)
    t = jnp.maximum(a, b) if tr_order == "sorted" else a
    r = jnp.minimum(a, b)
    equal = jnp.arange(n) < int(n * equal_fraction)
    return t, jnp.where(equal, t, r)


def total_derivative(u_of, z, r, t, v):
    """(u, du/dt) = jvp(u_of, (z, r, t), (v, 0, 1)): the derivative along the trajectory
    dz/dt = v with r held fixed. z, v: [B, H, W, C]; r, t: [B]."""
    return jax.jvp(u_of, (z, r, t), (v, jnp.zeros_like(r), jnp.ones_like(t)))


def adaptive_weighted(err, p: float, eps: float):
    """err / sg(err + eps)^p per sample (err: [B] squared norms); p = 0 is the plain L2."""
    return err / jax.lax.stop_gradient(jnp.power(err + eps, p))


def meanflow_loss(
    u,
    params,
    batch,
    rng,
    step,
    *,
    t_mean: float,
    t_std: float,
    r_mean: float,
    r_std: float,
    equal_fraction: float,
    tr_order: str,
    norm_p: float,
    norm_eps: float,
    augment_settings: augment.Settings | None = None,
    u_jvp=None,
):
    """MeanFlow loss (module docstring), batch mean. u: make_u(...). Returns (loss, metrics).

    u_jvp: u at the JVP pass's own precision (Denoisers.jvp): du/dt then comes from its JVP of
    the stop-gradient parameters and the prediction from a separate pass of u (same inputs,
    labels and dropout key); None = one pass of u, whose JVP's primal is the prediction.

    With `augment_settings` enabled, x is the batch after EDM's augmentation (augment.for_step:
    the key fold_in(rng, augment.AUGMENT_TAG), as EDM's loss), and the labels go to the one
    network call, whose JVP gives both the prediction and du/dt; otherwise x is the batch and
    the network gets no augmentation labels (the same numbers as without the option)."""
    del step
    x, labels = batch["image"], batch.get("label")  # [B, H, W, C], [B]
    x, augment_labels = augment.for_step(rng, x, augment_settings)  # [B, label_dim] | None
    k_time, k_noise, k_dropout = jax.random.split(rng, 3)
    t, r = sample_tr(
        k_time,
        x.shape[0],
        t_mean=t_mean,
        t_std=t_std,
        r_mean=r_mean,
        r_std=r_std,
        equal_fraction=equal_fraction,
        tr_order=tr_order,
    )
    e = jax.random.normal(k_noise, x.shape, x.dtype)
    z = bcast(1.0 - t) * x + bcast(t) * e
    v = e - x
    # As the official code: the JVP's primal is the prediction that carries the gradient (a
    # stop-gradient JVP plus a separate forward pass compiles to the same program).
    fn = lambda z_, r_, t_: u(params, z_, r_, t_, labels, True, k_dropout, augment_labels)
    if u_jvp is None:
        pred, dudt = total_derivative(fn, z, r, t, v)
    else:
        frozen = jax.lax.stop_gradient(params)
        fn_jvp = lambda z_, r_, t_: u_jvp(
            frozen, z_, r_, t_, labels, True, k_dropout, augment_labels
        )
        _, dudt = total_derivative(fn_jvp, z, r, t, v)
        pred = fn(z, r, t)
    target = jax.lax.stop_gradient(v - bcast(t - r) * dudt)
    err = jnp.sum(jnp.square(pred - target), axis=(1, 2, 3))  # [B]
    loss = jnp.mean(adaptive_weighted(err, norm_p, norm_eps))
    metrics = {
        "loss": loss,
        "mse": jnp.mean(err) / x[0].size,
        "v_mse": jnp.mean(jnp.square(jax.lax.stop_gradient(pred) - v)),  # monitoring only
        "t_mean": jnp.mean(t),
        "gap_mean": jnp.mean(t - r),
    }
    return loss, metrics


def meanflow_sample(u, params, rng, labels, shape, *, times):
    """e ~ N(0, I) at times[0]; z_r = z_t - (t - r) u(z_t, r, t) for consecutive (t, r) of the
    decreasing `times` ending at 0: (1.0, 0.0) is one step, (1.0, 0.5, 0.0) two."""
    b = shape[0]
    z = jax.random.normal(rng, shape)
    for t, r in zip(times[:-1], times[1:], strict=True):
        tt, rr = jnp.full((b,), t), jnp.full((b,), r)
        z = z - (t - r) * u(params, z, rr, tt, labels)
    return z


def check(config, mode: str):
    """MeanFlow fields (every mode)."""
    del mode
    m = config.method
    if m.mf_condition not in MF_CONDITIONS:
        invalid("method.mf_condition", m.mf_condition, f"valid are {list(MF_CONDITIONS)}")
    if m.mf_tr_order not in TR_ORDERS:
        invalid("method.mf_tr_order", m.mf_tr_order, f"valid are {list(TR_ORDERS)}")
    require_number("method.mf_time_scale", m.mf_time_scale, 0, lo_open=True)
    for name in ("mf_t_mean", "mf_r_mean"):
        require_number(f"method.{name}", m[name])
    for name in ("mf_t_std", "mf_r_std", "mf_norm_eps"):
        require_number(f"method.{name}", m[name], 0, lo_open=True)
    require_number("method.mf_norm_p", m.mf_norm_p, 0)
    precision.check_jvp(config)
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


def parameterization(config, model) -> Denoisers:
    """u(params, z, r, t, ...) for every use (MeanFlow has no teacher)."""
    m = config.method
    u = make_u(model, m.mf_condition, m.mf_time_scale)
    return Denoisers(train=u, sample=u, teacher=u)


def objective(config, denoisers):
    """MeanFlow's loss_fn of the table's signature (no aux, no extra); EDM's augmentation of
    config.augment when augment.p > 0 (the CIFAR-10 recipe)."""
    m = config.method
    loss = functools.partial(
        meanflow_loss,
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
        u_jvp=denoisers.jvp,
    )

    return stateless(loss)


def meanflow_names(config) -> dict:
    """One MeanFlow sampler per entry of sampling.meanflow_times, named by its steps."""
    return {f"{len(t) - 1}step": tuple(t) for t in config.sampling.meanflow_times}


def build_meanflow(config, u, levels):
    """z_r = z_t - (t - r) u(z_t, r, t) over the schedule `levels` (1.0 ... 0.0)."""
    del config
    return lambda params, rng, labels, shape: meanflow_sample(
        u, params, rng, labels, shape, times=levels
    )


SAMPLERS = SamplerKind("meanflow", meanflow_names, build_meanflow)

METHOD = Method(
    objective=objective,
    parameterization=parameterization,
    sampler=SAMPLERS,
    defaults=DEFAULTS,
    check=check,
    augments=True,
    second_noise_label=True,
)
