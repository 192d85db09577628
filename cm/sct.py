"""sCT and sCD: continuous-time consistency training and distillation (docs/methods.md section 9).

One training step, per sample (sCM, Algorithm 1):

    tau ~ N(Pm, Ps^2), t = arctan(e^tau / sd);  z ~ N(0, sd^2 I);  x_t = cos t x0 + sin t z
    dx_t/dt = cos t z - sin t x0                        (sCT, from the data)
            = sd F_teacher(x_t, t)                      (sCD, the frozen teacher in eval mode)
    (F-, cos t sin t dF-/dt) = jvp(F(sg(theta), ., .), (x_t, t), cos t sin t (dx_t/dt, 1))
    g = -cos^2 t (sd F- - dx_t/dt) - r cos t sin t (x_t + sd dF-/dt),  r = min(1, step / H)
    g <- g / (||g|| + c)
    loss = prior(t) e^{w(t)} / D ||F_theta - F- - g||^2 - w(t),  prior = 1 / (sd tan t) or 1

g equals cos(t) df-/dt at r = 1, so the gradient pushes f along its own time derivative; F- is
F_theta's value under stop_gradient, so F_theta - F- is zero in value and only carries the
gradient. The JVP runs with the same dropout key as the F_theta pass (one mask for both), and
the step enters only through r, a traced value: one compiled step serves warm-up and after.
w is TimeWeighting, a separate parameter tree trained with the network.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from cm.models.embeddings import NoiseEmbedding
from cm.trigflow import bcast


def trig_time_law(key, n: int, p_mean: float, p_std: float, sigma_data: float):
    """sCM's proposal: tau ~ N(Pm, Ps^2), t = arctan(e^tau / sd). Returns float32 [n]."""
    tau = p_mean + p_std * jax.random.normal(key, (n,))
    return jnp.arctan(jnp.exp(tau) / sigma_data)


def tangent_warmup(step, warmup_steps: int):
    """r = min(1, step / warmup_steps) as a traced float32 scalar; 1 when warmup_steps <= 0."""
    if warmup_steps <= 0:
        return jnp.float32(1.0)
    return jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / warmup_steps)


def tangent(F_minus, dF_scaled, x_t, dxdt, t, r, sigma_data: float):
    """g = -cos^2 t (sd F- - dx_t/dt) - r (cos t sin t x_t + sd cos t sin t dF-/dt).

    dF_scaled is cos t sin t dF-/dt (the JVP along cos t sin t (dx_t/dt, 1)); images
    [B, H, W, C], t [B], r a scalar. Returns g [B, H, W, C].
    """
    cos, sin = bcast(jnp.cos(t)), bcast(jnp.sin(t))
    first = -(cos**2) * (sigma_data * F_minus - dxdt)
    return first - r * (cos * sin * x_t + sigma_data * dF_scaled)


TANGENT_NORMS = ("l2", "rms")  # the paper's ||g||_2 | FastGen's ||g||_2 / sqrt(D)


def normalize_tangent(g, c: float, kind: str = "l2"):
    """g / (n + c) with n over each sample's D elements: the L2 norm ("l2", the paper) or the
    root-mean-square ||g||_2 / sqrt(D) ("rms", FastGen's g_norm_spatial_invariance).
    Returns (g [B, ...], n [B])."""
    if kind not in TANGENT_NORMS:
        raise ValueError(f"Unknown method.scm_tangent_norm {kind!r}; valid: {list(TANGENT_NORMS)}.")
    reduce = jnp.sum if kind == "l2" else jnp.mean
    norm = jnp.sqrt(reduce(jnp.square(g), axis=tuple(range(1, g.ndim))))
    return g / bcast(norm + c), norm


def jvp_tangent(F_of, x_t, t, dxdt):
    """(F(x_t, t), cos t sin t dF/dt): one jax.jvp of F_of(x, t) along cos t sin t (dx_t/dt, 1)."""
    cs = jnp.cos(t) * jnp.sin(t)  # [B]
    return jax.jvp(F_of, (x_t, t), (bcast(cs) * dxdt, cs))


class TimeWeighting(nn.Module):
    """The adaptive weighting w(t) = Dense(Fourier features of c_noise(t)), EDM2's log-variance
    head: `channels` frozen random frequencies of scale `fourier_scale`, then one linear layer,
    zero-initialised so that training starts unweighted (w = 0)."""

    channels: int = 128
    fourier_scale: float = 1.0
    fourier_seed: int = 0

    @nn.compact
    def __call__(self, time_labels):  # [B] -> [B] float32
        feats = NoiseEmbedding("fourier", self.channels, self.fourier_scale, self.fourier_seed)(
            time_labels.astype(jnp.float32)
        )  # [B, channels]
        return nn.Dense(1, kernel_init=nn.initializers.zeros, name="linear")(feats)[:, 0]


def make_weighting(module: TimeWeighting, time_label):
    """w(weighting_params, t) -> [B]: `module` applied to the network's time label of t."""
    return lambda weighting_params, t: module.apply({"params": weighting_params}, time_label(t))


def init_weighting(module: TimeWeighting, key):
    """The weighting's parameter tree (zeros: w = 0 at the start)."""
    return module.init(key, jnp.zeros((1,)))["params"]


def scm_loss(
    F,
    weighting,
    params,
    weighting_params,
    batch,
    rng,
    step,
    *,
    sigma_data: float,
    p_mean: float,
    p_std: float,
    warmup_steps: int,
    tangent_c: float,
    prior_weighting: bool,
    tangent_norm: str = "l2",
    teacher=None,
    teacher_params=None,
):
    """sCT (teacher None) or sCD loss, batch mean of the per-sample loss in the module docstring.

    F: trigflow.make_flow(...), F(params, x_t, t, labels, train, dropout_rng); weighting:
    make_weighting(...); teacher: an F of the frozen teacher network (sCD), run in eval mode.
    Returns (loss, metrics).
    """
    x0, labels = batch["image"], batch.get("label")  # [B, H, W, C], [B]
    k_time, k_noise, k_dropout = jax.random.split(rng, 3)
    t = trig_time_law(k_time, x0.shape[0], p_mean, p_std, sigma_data)  # [B]
    z = sigma_data * jax.random.normal(k_noise, x0.shape, x0.dtype)
    cos, sin = bcast(jnp.cos(t)), bcast(jnp.sin(t))
    x_t = cos * x0 + sin * z
    if teacher is None:
        dxdt = cos * z - sin * x0
    else:
        dxdt = sigma_data * teacher(teacher_params, x_t, t, labels, False, None)
    dxdt = jax.lax.stop_gradient(dxdt)

    # The JVP of the stop-gradient network, then F_theta with the same dropout key. XLA merges
    # the JVP's primal with this forward pass (identical computations): the compiled step has
    # the convolutions, FLOPs and memory of taking F_theta as the JVP's primal.
    frozen = jax.lax.stop_gradient(params)
    _, dF_scaled = jvp_tangent(lambda x, s: F(frozen, x, s, labels, True, k_dropout), x_t, t, dxdt)
    F_theta = F(params, x_t, t, labels, True, k_dropout)
    F_minus, dF_scaled = jax.lax.stop_gradient((F_theta, dF_scaled))

    r = tangent_warmup(step, warmup_steps)
    g = tangent(F_minus, dF_scaled, x_t, dxdt, t, r, sigma_data)
    g, g_norm = normalize_tangent(jax.lax.stop_gradient(g), tangent_c, tangent_norm)
    mse = jnp.mean(jnp.square(F_theta - F_minus - g), axis=(1, 2, 3))  # [B], ||.||^2 / D
    w = weighting(weighting_params, t)  # [B]
    prior = 1.0 / (sigma_data * jnp.tan(t)) if prior_weighting else jnp.ones_like(t)
    per_sample = prior * jnp.exp(w) * mse - w
    loss = jnp.mean(per_sample)
    metrics = {
        "loss": loss,
        "mse": jnp.mean(mse),
        "weighting_mean": jnp.mean(w),
        "tangent_norm": jnp.mean(g_norm),
        "tangent_warmup": r,
        "t_mean": jnp.mean(t),
    }
    return loss, metrics
