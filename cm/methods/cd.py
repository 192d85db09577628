"""CD, consistency distillation (docs/methods.md section 8), as CM's CIFAR-10 code
(openai/consistency_models_cifar10, jcm/losses.py) runs it.

The teacher is a trained EDM denoiser: method.init_from's network, copied into the run's extra
state at step 0 (checkpointed with the run, never trained) and also the student's starting
point. Per sample: a uniform pair of adjacent levels t_n < t_{n+1} of the Karras grid of
method.cd_num_scales levels; x_{n+1} = x + t_{n+1} z; x_hat_n = one Heun step of the teacher's
PF-ODE dx/ds = (x - D(x, s)) / s from t_{n+1} down to t_n; loss = batch mean of
distance(f(x_{n+1}, t_{n+1}), f_target(x_hat_n, t_n)), where f is the student's consistency
function and f_target the same function with the target parameters under stop_gradient: the
student's own (method.cd_target_ema = 0, CM's CIFAR-10 code) or their EMA with rate mu (> 0),
kept in the extra state. Student and target share the dropout key; the teacher runs without
dropout. method.distance: jcm's l1 and l2 (means over the elements), l2_norm, pseudo_huber, ...
or CM's lpips (cm/models/lpips.py), whose frozen VGG16 and heads, read from
method.lpips_vgg_path and method.lpips_lin_path when the run starts, live in the extra state
under "lpips" beside the teacher (losses.frozen_weights).
"""

import functools
import operator

import jax
import jax.numpy as jnp

from cm import schedules
from cm.methods import losses
from cm.methods.spec import CONSISTENCY_SAMPLERS, Method, invalid, precond_pair
from cm.models import lpips
from cm.precond import bcast

# CD's own config fields (CM's jcm/losses.py): the teacher is method.init_from's network (an
# EDM run), one Heun step of its PF-ODE between adjacent levels of the grid below.
DEFAULTS = {
    "cd_num_scales": 18,  # N of the Karras grid (method.sigma_min, sigma_max, rho)
    # mu of the target EMA of the student; 0 = the stop-gradient student itself (CM's CIFAR-10
    # CD code runs 0; the CM paper's ImageNet-64 / LSUN CD used 0.95).
    "cd_target_ema": 0.0,
    # method.distance = "lpips" (cm/models/lpips.py, docs/methods.md section 8): LPIPS-VGG v0.1
    # on images upsampled bilinearly to lpips_resize a side when smaller (CM: 224; 0 = never);
    # VGG16 poolings "max" (CM's CIFAR-10 code, the lpips package) or "avg" (CM's PyTorch code
    # for ImageNet 64 / LSUN: piq with replace_pooling=True). The weights are read once, when a
    # run starts (a resume has them in its checkpoints): torchvision's VGG16 and the lpips
    # package's calibrated heads (README, "Data and weights").
    "lpips_resize": 224,
    "lpips_pooling": "max",
    "lpips_vgg_path": "~/.cache/cm/vgg16-397923af.pth",
    "lpips_lin_path": "~/.cache/cm/lpips/v0.1/vgg.pth",
    # Samplers clip each x0 estimate to the pixel range before re-noising it, as both CM codes
    # do (the CIFAR-10 notebook's multistep sampler; openai/consistency_models' clip_denoised)
    # (docs/methods.md section 8, "Clipping between sampling steps").
    "cd_clip_denoised": True,
}


def heun_step(teacher, teacher_params, x, t, t_next, labels):
    """One Heun step of dx/ds = (x - D(x, s)) / s from s = t to s = t_next (both [B], > 0),
    D = teacher(teacher_params, ...) without dropout. x: [B, H, W, C]."""
    d = (x - teacher(teacher_params, x, t, labels, False, None)) / bcast(t)
    x_euler = x + bcast(t_next - t) * d
    d_next = (x_euler - teacher(teacher_params, x_euler, t_next, labels, False, None)) / bcast(
        t_next
    )
    return x + bcast(t_next - t) * 0.5 * (d + d_next)


def cd_loss(
    denoise,
    teacher,
    params,
    batch,
    rng,
    step,
    aux=(),
    extra=(),
    *,
    num_scales: int,
    sigma_min: float,
    sigma_max: float,
    rho: float,
    distance,
    c_factor: float,
    target_ema: float,
):
    """CD's loss (module docstring). denoise: the student's consistency function; teacher: EDM's
    denoiser of the network; extra: {"teacher": params, "target": params when target_ema > 0,
    "lpips": weights for that distance}; distance: fn(a, b, c, extra) -> [B] (losses.get_distance
    with the config)."""
    del aux, step
    x, labels = batch["image"], batch.get("label")  # [B, H, W, C], [B]
    sigmas = schedules.karras_sigmas(num_scales, sigma_min, sigma_max, rho, num_scales)  # [N]
    k_index, k_noise, k_dropout = jax.random.split(rng, 3)
    n = jax.random.randint(k_index, (x.shape[0],), 0, num_scales - 1)  # [B], pair (n, n + 1)
    t_lo, t_hi = sigmas[n], sigmas[n + 1]  # [B]
    z = jax.random.normal(k_noise, x.shape, x.dtype)
    x_hi = x + bcast(t_hi) * z

    student = denoise(params, x_hi, t_hi, labels, True, k_dropout)
    teacher_params = jax.lax.stop_gradient(extra["teacher"])
    x_lo = jax.lax.stop_gradient(heun_step(teacher, teacher_params, x_hi, t_hi, t_lo, labels))
    target_params = jax.lax.stop_gradient(extra["target"] if target_ema > 0 else params)
    target = jax.lax.stop_gradient(denoise(target_params, x_lo, t_lo, labels, True, k_dropout))

    per_sample = distance(student, target, losses.huber_c(x[0].size, c_factor), extra)  # [B]
    loss = jnp.mean(per_sample)
    return loss, {"loss": loss, "sigma_mean": jnp.mean(t_hi)}


def objective(config, denoisers):
    """CD's loss_fn with the config's values (the table's objective)."""
    m = config.method
    return functools.partial(
        cd_loss,
        denoisers.train,
        denoisers.teacher,
        num_scales=m.cd_num_scales,
        sigma_min=m.sigma_min,
        sigma_max=m.sigma_max,
        rho=m.rho,
        distance=losses.get_distance(m.distance, config),
        c_factor=m.huber_c_factor,
        target_ema=m.cd_target_ema,
    )


def init_extra(config, params) -> dict:
    """The teacher (and the target EMA when mu > 0), copies of the starting parameters."""
    extra = {"teacher": jax.tree.map(jnp.copy, params)}
    if config.method.cd_target_ema > 0:
        extra["target"] = jax.tree.map(jnp.copy, params)
    return extra


def update_extra(config):
    """target <- mu target + (1 - mu) params after each step when mu > 0; else None."""
    mu = config.method.cd_target_ema
    if mu <= 0:
        return None

    def update(extra, params, step):
        del step
        target = jax.tree.map(lambda e, p: mu * e + (1.0 - mu) * p, extra["target"], params)
        return {**extra, "target": target}

    return update


def check(config, mode: str):
    """CD's fields (every mode: they shape the loss and the train state): a grid of at least
    2 levels, a target rate in [0, 1), and LPIPS's settings when it is the distance."""
    del mode
    m = config.method
    if m.distance == "lpips":
        _check_lpips(config)
    n = m.cd_num_scales
    if not (isinstance(n, int) and not isinstance(n, bool) and n >= 2):
        invalid("method.cd_num_scales", n, "the Karras grid needs an integer >= 2 levels")
    mu = m.cd_target_ema
    if not (isinstance(mu, int | float) and 0 <= mu < 1):
        invalid("method.cd_target_ema", mu, "the target EMA rate must be a number in [0, 1)")


def _check_lpips(config):
    """A known pooling, a resize side >= 0, RGB or gray images, and a VGG input large enough
    that relu5_3 keeps a pixel after four 2x2 poolings."""
    m, d = config.method, config.data
    if m.lpips_pooling not in lpips.POOLINGS:
        reason = f"it must be one of {list(lpips.POOLINGS)}"
        invalid("method.lpips_pooling", m.lpips_pooling, reason)
    r = m.lpips_resize
    if not (isinstance(r, int) and not isinstance(r, bool) and r >= 0):
        invalid("method.lpips_resize", r, "it must be an integer >= 0 (0 = no resize)")
    if d.channels not in (1, 3):
        invalid(
            "method.distance",
            m.distance,
            f"LPIPS compares RGB (or gray) images, and data.channels={d.channels}",
            "--config.method.distance=pseudo_huber (or l2) for such data",
        )
    if max(d.image_size, r) < lpips.MIN_SIDE:
        invalid(
            "method.lpips_resize",
            r,
            f"LPIPS's VGG16 needs images of at least {lpips.MIN_SIDE} pixels a side and "
            f"data.image_size={d.image_size}",
            f"--config.method.lpips_resize to at least {lpips.MIN_SIDE} (CM: 224)",
        )


METHOD = Method(
    objective=objective,
    parameterization=precond_pair("consistency", "consistency"),
    sampler=CONSISTENCY_SAMPLERS,
    defaults=DEFAULTS,
    init_extra=init_extra,
    update_extra=update_extra,
    check=check,
    init_sources=("edm",),
    requires_init_from=True,
    network_distance=True,
    clip_denoised=operator.attrgetter("method.cd_clip_denoised"),
)
