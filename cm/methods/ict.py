"""iCT and sLCT consistency training (docs/methods.md sections 2, 3): the loss, its config
fields and the table entry.

`objective(config, denoisers)` reads the config once and returns loss_fn(params, batch, rng,
step, aux, extra) -> (loss, metrics); everything inside is traced, so one compiled step serves
every stage of the curriculum. The consistency function is both the student and its own
stop-gradient teacher, in training and in sampling.
"""

import functools
import operator

import jax
import jax.numpy as jnp

from cm import schedules
from cm.data import coupling
from cm.methods import losses
from cm.methods.spec import CONSISTENCY_SAMPLERS, Method, precond_pair, stateless
from cm.precond import bcast

# iCT's own config fields (configs/common.py merges them into config.method).
DEFAULTS = {
    "s0": 10,  # the curriculum's first N - 1
    "s1": 1280,  # its last N - 1 (doubling from s0)
    # sLCT switches (docs/methods.md section 3); the defaults are plain iCT.
    "adaptive_c": False,  # c(N) = exp(slope ln(N - 1) + offset) after the first stage
    "adaptive_c_log_slope": -1.15,
    "adaptive_c_log_offset": -0.85,
    "diffusion_weight": 0.0,  # sLCT: 5.0 (EDM-weighted x0 MSE at low noise)
    "diffusion_quantile": 0.25,  # the lowest fraction of the current grid it covers
    "ot_coupling": False,  # exact minibatch OT pairing of data and noise in each group
    # Rows per OT group: the global batch is cut into consecutive groups of this size, each
    # paired on its own, whatever the device count (128 = the per-GPU batch of the sLCT
    # authors' scripts; it must divide batch_size / process count).
    "ot_group_size": 128,
    "ot_prefetch": 2,  # coupled batches computed ahead on the host
    # Samplers clip each x0 estimate to the pixel range before re-noising it. iCT released no
    # code; the CM codes it builds on clip (the CIFAR-10 notebook, openai/consistency_models'
    # clip_denoised=True), as sLCT's does on pixels; latents are never clipped
    # (sampling.clip_range). docs/methods.md section 8, "Clipping between sampling steps".
    "ict_clip_denoised": True,
}


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
    adaptive_c: bool = False,
    c_log_slope: float = -1.15,
    c_log_offset: float = -0.85,
    diffusion_weight: float = 0.0,
    diffusion_quantile: float = 0.25,
    sigma_data: float = 0.5,
    noise_from_batch: bool = False,
):
    """iCT loss (docs/methods.md section 2): batch mean of lambda(sigma_i) d(f_student, f_teacher).

    One z per sample; the student sees x + sigma_{i+1} z, the teacher (same parameters under
    stop_gradient, same dropout key, training mode) sees x + sigma_i z.

    sLCT switches (section 3): `adaptive_c` replaces c = c_factor sqrt(d) by c(N) after the
    first stage; `diffusion_weight` > 0 adds that multiple of the EDM-weighted x0 MSE of the
    same student output over the pairs in the lowest `diffusion_quantile` of the grid;
    `noise_from_batch` takes z from batch["noise"] (the OT-coupled noise of cm.coupling).
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
    if noise_from_batch:
        if "noise" not in batch:
            raise ValueError(
                "method.ot_coupling needs batch['noise'] from cm.coupling; wrap the batch "
                "iterator with coupling.CoupledBatches or set --config.method.ot_coupling=False."
            )
        z = batch["noise"].astype(x.dtype)  # [B, H, W, C], paired with x by the OT assignment
    else:
        z = jax.random.normal(k_noise, x.shape, x.dtype)

    student = denoise(params, x + bcast(sigma_hi) * z, sigma_hi, labels, True, k_dropout)
    teacher_params = jax.lax.stop_gradient(params)
    teacher = denoise(teacher_params, x + bcast(sigma_lo) * z, sigma_lo, labels, True, k_dropout)
    teacher = jax.lax.stop_gradient(teacher)

    c = losses.huber_c(x[0].size, c_factor)
    if adaptive_c:
        c = schedules.slct_cauchy_c(num_scales, s0, c, c_log_slope, c_log_offset)
    per_sample = schedules.ct_weight(sigma_lo, sigma_hi) * distance(student, teacher, c)  # [B]
    ct = jnp.mean(per_sample)
    metrics = {"num_scales": num_scales, "sigma_mean": jnp.mean(sigma_hi), "c": c}
    loss = ct
    if diffusion_weight > 0:
        selected = schedules.low_noise_mask(i + 1, num_scales, diffusion_quantile)  # [B]
        diffusion = low_noise_diffusion_loss(student, x, sigma_hi, selected, sigma_data)
        loss = ct + diffusion_weight * diffusion
        metrics |= {"ct_loss": ct, "diffusion_loss": diffusion, "diffusion_frac": selected.mean()}
    return loss, {"loss": loss, **metrics}


def low_noise_diffusion_loss(denoised, x, sigma, selected, sigma_data: float):
    """sLCT's diffusion term: mean over the selected samples of (1/s^2 + 1/sd^2) MSE(f, x).

    denoised, x: [B, H, W, C]; sigma: [B] student levels; selected: bool [B]. The MSE is a mean
    over elements. Returns 0 (not NaN) when no sample is selected.
    """
    weight = 1.0 / jnp.square(sigma) + 1.0 / sigma_data**2  # [B]
    mse = jnp.mean(jnp.square(denoised - x), axis=(1, 2, 3))  # [B]
    mask = selected.astype(mse.dtype)
    return jnp.sum(mask * weight * mse) / jnp.maximum(jnp.sum(mask), 1.0)


def objective(config, denoisers):
    """iCT's loss_fn with the config's values (the table's objective)."""
    m = config.method
    if m.ot_coupling:  # fail at start-up, before the workdir is touched
        coupling.check_groups(config.training.batch_size, m.ot_group_size, jax.process_count())
    loss = functools.partial(
        ict_loss,
        denoisers.train,
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
        adaptive_c=m.adaptive_c,
        c_log_slope=m.adaptive_c_log_slope,
        c_log_offset=m.adaptive_c_log_offset,
        diffusion_weight=m.diffusion_weight,
        diffusion_quantile=m.diffusion_quantile,
        sigma_data=m.sigma_data,
        noise_from_batch=m.ot_coupling,
    )
    return stateless(loss)


METHOD = Method(
    objective=objective,
    parameterization=precond_pair("consistency", "consistency"),
    sampler=CONSISTENCY_SAMPLERS,
    defaults=DEFAULTS,
    clip_denoised=operator.attrgetter("method.ict_clip_denoised"),
)
