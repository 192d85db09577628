"""TrigFlow diffusion training (docs/methods.md section 9, "TrigFlow diffusion"): the diffusion
model that sCM's Algorithm 1 starts sCT and sCD from, with sCT's network form.

Per sample: tau ~ N(Pm, Ps^2) (method.p_mean / p_std, EDM's law), t = arctan(e^tau / sd);
z ~ N(0, sd^2 I); x_t = cos t x0 + sin t z; the target is the TrigFlow velocity

    v_t = dx_t/dt = cos t z - sin t x0,    loss = batch mean of ||sd F(x_t, t) - v_t||^2 / D,

F = trigflow.make_flow of method.trig_form, the form an sCT run with the same trig_form reads,
so that sCT starts from this network exactly (method.init_from). With sigma = sd tan t this is
sd^2 times EDM's weighted loss: the same noise draws give sd F - v_t = -(D - x0) / sin t, and
EDM's weight is 1 / (sd sin t)^2. EDM's augmentation applies as in EDM's loss (x0 is the
augmented batch, its labels condition the network), so EDM's CIFAR-10 recipe carries over.

Sampling: EDM's Heun sampler over the x0 prediction as an EDM denoiser of sigma,
D(x, sigma) = f(cos t x, t) with t = arctan(sigma / sd) (x = x0 + sigma n is x_t / cos t).
"""

import jax
import jax.numpy as jnp

from cm.methods import augment, edm, sct, trigflow
from cm.methods.spec import HEUN_SAMPLERS, Denoisers, Method, invalid, require_number
from cm.precond import bcast

# No fields of its own: the time law is EDM's method.p_mean / p_std, the network form sCT's
# method.trig_form / trig_time_scale (cm/methods/sct.py), sd method.sigma_data.
DEFAULTS = {}


def velocity_target(x0, z, t):
    """v_t = cos t z - sin t x0, the time derivative of x_t = cos t x0 + sin t z.
    x0, z: [B, H, W, C]; t: [B]. Returns [B, H, W, C]."""
    return bcast(jnp.cos(t)) * z - bcast(jnp.sin(t)) * x0


def trigflow_diffusion_loss(
    F,
    params,
    batch,
    rng,
    step,
    *,
    p_mean: float,
    p_std: float,
    sigma_data: float,
    augment_settings: augment.Settings | None = None,
):
    """The loss of the module docstring. F: trigflow.make_flow(...), F(params, x_t, t, labels,
    train, dropout_rng, augment_labels). The keys are used as EDM's loss uses them
    (augmentation, then time, noise, dropout). Returns (loss, metrics)."""
    del step
    x0, labels = batch["image"], batch.get("label")  # [B, H, W, C], [B]
    x0, augment_labels = augment.for_step(rng, x0, augment_settings)  # [B, label_dim] | None
    k_time, k_noise, k_dropout = jax.random.split(rng, 3)
    t = sct.trig_time_law(k_time, x0.shape[0], p_mean, p_std, sigma_data)  # [B]
    z = sigma_data * jax.random.normal(k_noise, x0.shape, x0.dtype)
    x_t = bcast(jnp.cos(t)) * x0 + bcast(jnp.sin(t)) * z
    prediction = sigma_data * F(params, x_t, t, labels, True, k_dropout, augment_labels)
    per_sample = jnp.mean(jnp.square(prediction - velocity_target(x0, z, t)), axis=(1, 2, 3))
    loss = jnp.mean(per_sample)
    return loss, {"loss": loss, "t_mean": jnp.mean(t)}


def sigma_denoiser(f, sigma_data: float):
    """EDM's denoiser of sigma from a TrigFlow x0 prediction f (trigflow.consistency_fn):
    D(params, x, sigma, ...) = f(params, cos t x, t, ...), t = arctan(sigma / sd), for the
    samplers of sigma (EDM's Heun). x: [B, H, W, C] = x0 + sigma n; sigma: [B]."""

    def denoise(params, x, sigma, labels=None, train=False, dropout_rng=None, augment_labels=None):
        t = trigflow.time_from_sigma(sigma, sigma_data)  # [B]
        return f(params, bcast(jnp.cos(t)) * x, t, labels, train, dropout_rng, augment_labels)

    return denoise


def parameterization(config, model) -> Denoisers:
    """F of method.trig_form (train); its x0 prediction as EDM's denoiser of sigma (sample, and
    teacher: the same function)."""
    m = config.method
    F = trigflow.make_flow(model, m.trig_form, m.sigma_data, m.trig_time_scale, m.noise_label)
    D = sigma_denoiser(trigflow.consistency_fn(F, m.sigma_data), m.sigma_data)
    return Denoisers(train=F, sample=D, teacher=D)


objective = edm.lognormal_objective(trigflow_diffusion_loss)  # EDM's keywords and time law


def check(config, mode: str):
    """The network form, in every mode (it shapes the loss and the samplers); the time law's
    method.p_std is a rule of config_checks."""
    del mode
    m = config.method
    if m.trig_form not in trigflow.TRIG_FORMS:
        invalid("method.trig_form", m.trig_form, f"valid forms are {list(trigflow.TRIG_FORMS)}")
    require_number("method.trig_time_scale", m.trig_time_scale, 0, lo_open=True)


METHOD = Method(
    objective=objective,
    parameterization=parameterization,
    sampler=HEUN_SAMPLERS,
    check=check,
    augments=True,
)
