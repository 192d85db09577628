"""ECT, easy consistency tuning (docs/methods.md section 8), as locuslab/ect's ECMLoss and
ECMPrecond run it on CIFAR-10.

Per sample: t = exp(Pm + Ps n) (continuous lognormal) and r = ect_r(t, stage) < t, the stage
doubling every method.ect_double_images training images. One noise eps serves both calls: the
student D(y + t eps, t) with the gradient; the teacher D(y + r eps, r), the same network under
stop_gradient with the same dropout key, passed through nan_to_num and replaced by y itself
where r = 0. Loss: batch mean of distance(student, teacher) / (t - r), the distance over the
whole sample (ECT's c = 0: the L2 norm). D is EDM's denoiser while training (sigma_min = 0) and
the boundary-respecting consistency function, with method.sigma_min, at sampling.
"""

import functools
import operator

import jax
import jax.numpy as jnp

from cm.methods import losses
from cm.methods.spec import CONSISTENCY_SAMPLERS, Method, invalid, precond_pair
from cm.precond import bcast

# ECT's own config fields (locuslab/ect ECMLoss); t ~ lognormal(method.p_mean, method.p_std),
# -1.1 and 2.0 as in ECT, and the distance method.distance (ECT's CIFAR-10 c = 0: l2_norm) are
# shared.
DEFAULTS = {
    "ect_q": 2.0,  # the decay factor q
    "ect_k": 8.0,  # k of the sigmoid adjustment
    "ect_b": 1.0,  # b of the sigmoid adjustment
    # stage = training images // this (ECT's --double=250 ticks of --tick=12.8 kimg = 3.2 Mimg);
    # a multiple of training.batch_size.
    "ect_double_images": 3_200_000,
    # ECT's generator_fn re-noises the raw x0 estimate: no clip between sampling steps
    # (docs/methods.md section 8, "Clipping between sampling steps").
    "ect_clip_denoised": False,
}


def ect_stage(step, double_steps: int):
    """The stage of optimizer step `step` (may be traced): step // double_steps."""
    return step // double_steps


def ect_r(t, stage, q: float, k: float, b: float):
    """r = max(0, t (1 - q^-(stage + 1) (1 + k sigmoid(-b t)))). t: [B]; stage: int (traced)."""
    decay = jnp.power(jnp.float32(q), -(jnp.asarray(stage, jnp.float32) + 1.0))
    adjustment = 1.0 + k * jax.nn.sigmoid(-b * t)
    return jnp.maximum(t * (1.0 - decay * adjustment), 0.0)


def ect_loss(
    denoise,
    params,
    batch,
    rng,
    step,
    aux=(),
    extra=(),
    *,
    p_mean: float,
    p_std: float,
    q: float,
    k: float,
    b: float,
    double_steps: int,
    distance,
    c_factor: float,
):
    """ECT's loss (module docstring). denoise: EDM's denoiser of the network (training form);
    the distance's c = c_factor sqrt(d) (method.huber_c_factor, as iCT's)."""
    del aux, extra
    y, labels = batch["image"], batch.get("label")  # [B, H, W, C], [B]
    k_t, k_noise, k_dropout = jax.random.split(rng, 3)
    t = jnp.exp(p_mean + p_std * jax.random.normal(k_t, (y.shape[0],)))  # [B]
    stage = ect_stage(step, double_steps)
    r = ect_r(t, stage, q, k, b)  # [B], 0 <= r < t
    eps = jax.random.normal(k_noise, y.shape, y.dtype)  # shared by student and teacher

    student = denoise(params, y + bcast(t) * eps, t, labels, True, k_dropout)
    teacher_params = jax.lax.stop_gradient(params)
    teacher = denoise(teacher_params, y + bcast(r) * eps, r, labels, True, k_dropout)
    teacher = jnp.nan_to_num(jax.lax.stop_gradient(teacher))  # r = 0 gives ln(0) labels
    target = jnp.where(bcast(r > 0), teacher, y)

    c = losses.huber_c(y[0].size, c_factor)
    per_sample = distance(student, target, c) / (t - r)  # [B]
    loss = jnp.mean(per_sample)
    metrics = {
        "loss": loss,
        "stage": stage,
        "t_mean": jnp.mean(t),
        "r_zero_frac": jnp.mean((r == 0).astype(jnp.float32)),
    }
    return loss, metrics


def objective(config, denoisers):
    """ECT's loss_fn with the config's values (the table's objective)."""
    m = config.method
    return functools.partial(
        ect_loss,
        denoisers.train,
        p_mean=m.p_mean,
        p_std=m.p_std,
        q=m.ect_q,
        k=m.ect_k,
        b=m.ect_b,
        double_steps=m.ect_double_images // config.training.batch_size,
        distance=losses.get_distance(m.distance),
        c_factor=m.huber_c_factor,
    )


def check(config, mode: str):
    """ECT's fields: q > 0 and a doubling interval that is a whole number of steps."""
    if mode != "train":
        return
    m, batch = config.method, config.training.batch_size
    if not (isinstance(m.ect_q, int | float) and m.ect_q > 0):
        invalid("method.ect_q", m.ect_q, "ECT's decay factor q must be a number > 0")
    images = m.ect_double_images
    if not (isinstance(images, int) and images > 0 and images % batch == 0):
        invalid(
            "method.ect_double_images",
            images,
            f"the stage interval must be a positive multiple of training.batch_size={batch}",
        )


METHOD = Method(
    objective=objective,
    parameterization=precond_pair("edm", "consistency"),
    sampler=CONSISTENCY_SAMPLERS,
    defaults=DEFAULTS,
    check=check,
    init_sources=("edm",),
    clip_denoised=operator.attrgetter("method.ect_clip_denoised"),
)
