"""Samplers: consistency one-step and multistep, EDM Heun; data parallel over all devices.

The per-device samplers are pure functions of (params, key, labels); `make_parallel_sampler`
runs one over the 'data' mesh axis with `jax.shard_map`, each device with its own key.

Clipping between steps (docs/methods.md section 8, "Clipping between sampling steps"): both
consistency-model codes (CM's CIFAR-10 notebook and `openai/consistency_models`'
`clip_denoised`) clip every x0 estimate to the pixel range before re-noising it; ECT's sampler
does not. `sample_denoiser` applies a method's switch (its table entry's `clip_denoised`) to the
denoiser every sampler of the run calls, so the clip acts on each estimate, the last included.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cm import keys, schedules

# The range of pixel data (cm/data/batches.py maps uint8 images to it); latents have none.
PIXEL_RANGE = (-1.0, 1.0)


def clip_range(config) -> tuple | None:
    """The range an x0 estimate of the run's data lies in: PIXEL_RANGE, or None for standardized
    latents (data.name = "latents", unbounded; sLCT's code samples them unclipped)."""
    return None if config.data.name == "latents" else PIXEL_RANGE


def clipped(denoise, lo: float, hi: float):
    """`denoise` with its output, the x0 estimate [B, H, W, C], clipped to [lo, hi]."""

    def clipped_denoise(*args, **kwargs):
        return jnp.clip(denoise(*args, **kwargs), lo, hi)

    return clipped_denoise


def sample_denoiser(config, clip_denoised, denoise):
    """The denoiser the run's samplers call: `denoise`, clipped to the data range when the
    method's switch `clip_denoised` (its table entry's: config -> bool, or None for samplers
    without an x0 estimate to re-noise) is on and the data has a range (clip_range)."""
    bounds = clip_range(config)
    if clip_denoised is None or bounds is None or not clip_denoised(config):
        return denoise
    return clipped(denoise, *bounds)


def consistency_steps(denoise, params, labels, noises, *, sigma_min, sigma_max, levels):
    """x = f(smax z_0, smax); then for each t in levels: x = f(x + sqrt(t^2 - smin^2) z_i, t).

    noises: len(levels) + 1 standard normal arrays [B, H, W, C] (z_0, z_1, ...); labels: [B] or
    None; levels: decreasing noise levels after step one. Returns the last x [B, H, W, C].
    """
    b = noises[0].shape[0]
    x = denoise(params, sigma_max * noises[0], jnp.full((b,), sigma_max), labels)
    for t, z in zip(levels, noises[1:], strict=True):
        x = x + np.sqrt(t**2 - sigma_min**2) * z
        x = denoise(params, x, jnp.full((b,), t), labels)
    return x


def consistency_sample(denoise, params, rng, labels, shape, *, sigma_min, sigma_max, levels):
    """consistency_steps with z_i = normal(split(rng, len(levels) + 1)[i]) of `shape`
    (B, H, W, C); labels: [B] or None."""
    keys = jax.random.split(rng, len(levels) + 1)
    noises = [jax.random.normal(key, shape) for key in keys]
    return consistency_steps(
        denoise, params, labels, noises, sigma_min=sigma_min, sigma_max=sigma_max, levels=levels
    )


def heun_sample(
    denoise,
    params,
    rng,
    labels,
    shape,
    *,
    sigma_min,
    sigma_max,
    rho,
    num_steps,
    churn,
    s_tmin,
    s_tmax,
    s_noise,
):
    """EDM's stochastic Heun sampler (Algorithm 2) on the Karras grid; 2 N - 1 evaluations."""
    steps = schedules.karras_sigmas(num_steps, sigma_min, sigma_max, rho, num_steps)[::-1]
    t_grid = jnp.concatenate([steps, jnp.zeros((1,))])  # [N + 1], decreasing to 0
    b = shape[0]
    key, rng = jax.random.split(rng)
    x = t_grid[0] * jax.random.normal(key, shape)
    gamma_max = min(churn / num_steps, np.sqrt(2.0) - 1.0)

    def d_dt(x, t):
        return (x - denoise(params, x, jnp.full((b,), t), labels)) / t

    for i in range(num_steps):
        t_cur, t_next = t_grid[i], t_grid[i + 1]
        gamma = jnp.where((t_cur >= s_tmin) & (t_cur <= s_tmax), gamma_max, 0.0)
        t_hat = t_cur + gamma * t_cur
        rng, key = jax.random.split(rng)
        eps = s_noise * jax.random.normal(key, shape)
        x_hat = x + jnp.sqrt(jnp.maximum(t_hat**2 - t_cur**2, 0.0)) * eps
        d = d_dt(x_hat, t_hat)
        x = x_hat + (t_next - t_hat) * d
        if i < num_steps - 1:
            x = x_hat + (t_next - t_hat) * 0.5 * (d + d_dt(x, t_next))
    return x


def consistency_from_config(config, denoise, levels=()):
    """The per-device consistency sampler fn(params, rng, labels, shape): one step from
    method.sigma_max, then one per entry of `levels`."""
    m = config.method
    return functools.partial(
        consistency_sample,
        denoise,
        sigma_min=m.sigma_min,
        sigma_max=m.sigma_max,
        levels=tuple(levels),
    )


def heun_from_config(config, denoise, levels=()):
    """The per-device EDM Heun sampler fn(params, rng, labels, shape) of config.sampling."""
    del levels  # Heun's grid comes from sampling.heun_steps
    m, s = config.method, config.sampling
    return functools.partial(
        heun_sample,
        denoise,
        sigma_min=m.sigma_min,
        sigma_max=m.sigma_max,
        rho=m.rho,
        num_steps=s.heun_steps,
        churn=s.churn,
        s_tmin=s.s_tmin,
        s_tmax=s.s_tmax,
        s_noise=s.s_noise,
    )


def make_parallel_sampler(sample_fn, mesh, image_shape, num_classes: int):
    """jit(shard_map(...)): global_batch samples, each device drawing with its own key.

    Returns fn(params, rng, global_batch, ordered=False) -> (images float32 [B, H, W, C],
    labels int32 [B]), both sharded over 'data'. Labels are uniform random classes, or with
    ordered=True the class index cycling over the batch (for grids); zeros if unlabeled.
    """
    num_devices = mesh.shape["data"]

    @functools.cache
    def compiled(global_batch: int, ordered: bool):
        if global_batch % num_devices:
            raise ValueError(
                f"sampling.batch_size {global_batch} is not a multiple of the {num_devices} "
                "devices; set --config.sampling.batch_size to a multiple."
            )
        local = global_batch // num_devices

        def per_device(params, rng):
            rng = jax.random.fold_in(rng, jax.lax.axis_index("data"))
            k_label, k_sample = jax.random.split(rng)
            labels = None
            if num_classes and ordered:
                first = jax.lax.axis_index("data") * local
                labels = (first + jnp.arange(local)) % num_classes
            elif num_classes:
                labels = jax.random.randint(k_label, (local,), 0, num_classes)
            x = sample_fn(params, k_sample, labels, (local, *image_shape))
            if labels is None:
                labels = jnp.zeros((local,), jnp.int32)
            return x, labels

        mapped = jax.shard_map(
            per_device, mesh=mesh, in_specs=(P(), P()), out_specs=(P("data"), P("data"))
        )
        replicated = NamedSharding(mesh, P())
        return jax.jit(mapped, in_shardings=(replicated, replicated))

    def run(params, rng, global_batch: int, ordered: bool = False):
        return compiled(global_batch, ordered)(params, rng)

    run.jitted = compiled  # (global_batch, ordered) -> the jitted program (benchmarks lower it)
    return run


def to_uint8(x):
    """[-1, 1] floats -> uint8 [0, 255] with rounding, as FID expects."""
    return np.clip(np.round((np.asarray(x, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def generate(parallel_sampler, params, seed, num_samples, batch_size, progress=None, ordered=False):
    """num_samples uint8 images [N, H, W, C] and labels [N] on every host, batch by batch."""
    images, labels = [], []
    for index in range(-(-num_samples // batch_size)):
        rng = keys.indexed(seed, "sample", index)
        x, y = parallel_sampler(params, rng, batch_size, ordered)
        x, y = multihost_utils.process_allgather((x, y), tiled=True)
        images.append(to_uint8(x))
        labels.append(np.asarray(y))
        if progress is not None:
            progress(min((index + 1) * batch_size, num_samples), num_samples)
    return np.concatenate(images)[:num_samples], np.concatenate(labels)[:num_samples]
