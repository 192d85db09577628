"""Training objectives as pure functions: iCT consistency training and EDM denoising.

`make_objective(config, denoise)` reads the config once and returns
loss_fn(params, batch, rng, step) -> (loss, metrics); everything inside is traced, so one
compiled step serves every stage of the curriculum.
"""

import functools

import jax
import jax.numpy as jnp

from cm import losses, schedules


def ict_loss(
    denoise,
    params,
    batch,
    rng,
    step,
    *,
    total_steps: int,
    s0: int,
    s1: int,
    sigma_min: float,
    sigma_max: float,
    rho: float,
    p_mean: float,
    p_std: float,
    distance,
    c_factor: float,
):
    """iCT loss (PAPERS.md section 2): batch mean of lambda(sigma_i) d(f_student, f_teacher).

    One z per sample; the student sees x + sigma_{i+1} z, the teacher (same parameters under
    stop_gradient, same dropout key, training mode) sees x + sigma_i z.
    """
    x, labels = batch["image"], batch.get("label")  # [B, H, W, C], [B]
    num_scales = schedules.ict_num_scales(step, total_steps, s0, s1)
    sigmas = schedules.karras_sigmas(
        num_scales, sigma_min, sigma_max, rho, schedules.max_num_scales(s1)
    )  # [s1 + 1]
    logits = schedules.lognormal_index_logits(sigmas, num_scales, p_mean, p_std)
    k_index, k_noise, k_dropout = jax.random.split(rng, 3)
    i = jax.random.categorical(k_index, logits, shape=(x.shape[0],))  # [B]
    sigma_lo, sigma_hi = sigmas[i], sigmas[i + 1]  # [B]
    z = jax.random.normal(k_noise, x.shape, x.dtype)
    bcast = lambda s: s[:, None, None, None]

    student = denoise(params, x + bcast(sigma_hi) * z, sigma_hi, labels, True, k_dropout)
    teacher_params = jax.lax.stop_gradient(params)
    teacher = denoise(teacher_params, x + bcast(sigma_lo) * z, sigma_lo, labels, True, k_dropout)
    teacher = jax.lax.stop_gradient(teacher)

    c = losses.huber_c(x[0].size, c_factor)
    per_sample = schedules.ct_weight(sigma_lo, sigma_hi) * distance(student, teacher, c)  # [B]
    loss = jnp.mean(per_sample)
    metrics = {"loss": loss, "num_scales": num_scales, "sigma_mean": jnp.mean(sigma_hi)}
    return loss, metrics


def edm_loss(denoise, params, batch, rng, step, *, p_mean: float, p_std: float, sigma_data: float):
    """EDM loss (PAPERS.md section 5): ln s ~ N(Pm, Ps^2), weight (s^2+sd^2)/(s sd)^2, MSE to x."""
    del step
    x, labels = batch["image"], batch.get("label")  # [B, H, W, C], [B]
    k_sigma, k_noise, k_dropout = jax.random.split(rng, 3)
    sigma = jnp.exp(p_mean + p_std * jax.random.normal(k_sigma, (x.shape[0],)))  # [B]
    noise = jax.random.normal(k_noise, x.shape, x.dtype) * sigma[:, None, None, None]
    denoised = denoise(params, x + noise, sigma, labels, True, k_dropout)
    weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2  # [B]
    mse = jnp.mean(jnp.square(denoised - x), axis=(1, 2, 3))  # [B]
    loss = jnp.mean(weight * mse)
    return loss, {"loss": loss, "sigma_mean": jnp.mean(sigma)}


def _ict_from_config(config, denoise):
    m = config.method
    return functools.partial(
        ict_loss,
        denoise,
        total_steps=config.training.num_steps,
        s0=m.s0,
        s1=m.s1,
        sigma_min=m.sigma_min,
        sigma_max=m.sigma_max,
        rho=m.rho,
        p_mean=m.p_mean,
        p_std=m.p_std,
        distance=losses.get_distance(m.distance),
        c_factor=m.huber_c_factor,
    )


def _edm_from_config(config, denoise):
    m = config.method
    return functools.partial(
        edm_loss, denoise, p_mean=m.p_mean, p_std=m.p_std, sigma_data=m.sigma_data
    )


OBJECTIVES = {"ict": _ict_from_config, "edm": _edm_from_config}
# Which preconditioning each method trains: consistency function or EDM denoiser.
PRECONDITIONING = {"ict": "consistency", "edm": "edm"}


def check_method(name: str):
    """Raises one clear sentence for an unknown method name."""
    if name not in OBJECTIVES:
        raise ValueError(f"Unknown method.name {name!r}; valid: {sorted(OBJECTIVES)}.")


def make_objective(config, denoise):
    """loss_fn(params, batch, rng, step) -> (loss, metrics) for config.method.name."""
    check_method(config.method.name)
    return OBJECTIVES[config.method.name](config, denoise)
