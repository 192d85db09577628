"""EDM diffusion training (docs/methods.md section 5): the denoiser's weighted MSE under a
lognormal noise-level law, with EDM's optional augmentation, sampled by EDM's Heun sampler.
EDM has no fields of its own: method.p_mean / p_std / sigma_data are shared (configs/common.py).
"""

import functools

import jax
import jax.numpy as jnp

from cm.methods import augment
from cm.methods.spec import HEUN_SAMPLERS, Method, precond_pair, stateless
from cm.precond import bcast


def edm_loss(
    denoise,
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
    """EDM loss (docs/methods.md section 5): ln s ~ N(Pm, Ps^2), weight (s^2+sd^2)/(s sd)^2,
    MSE of D(y + s n, s) to y.

    With `augment_settings` enabled, y is the batch after EDM's augmentation
    (cm/methods/augment.py),
    drawn from fold_in(rng, augment.AUGMENT_TAG) on the global batch, and its labels condition
    the network; otherwise y = x and the network gets no augmentation labels.
    """
    del step
    x, labels = batch["image"], batch.get("label")  # [B, H, W, C], [B]
    x, augment_labels = augment.for_step(rng, x, augment_settings)  # y; [B, label_dim] | None
    k_sigma, k_noise, k_dropout = jax.random.split(rng, 3)
    sigma = jnp.exp(p_mean + p_std * jax.random.normal(k_sigma, (x.shape[0],)))  # [B]
    noise = jax.random.normal(k_noise, x.shape, x.dtype) * bcast(sigma)
    extra = {} if augment_labels is None else {"augment_labels": augment_labels}
    denoised = denoise(params, x + noise, sigma, labels, True, k_dropout, **extra)
    weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2  # [B]
    mse = jnp.mean(jnp.square(denoised - x), axis=(1, 2, 3))  # [B]
    loss = jnp.mean(weight * mse)
    return loss, {"loss": loss, "sigma_mean": jnp.mean(sigma)}


def lognormal_objective(loss_fn):
    """The table's objective(config, denoisers) of a diffusion loss with EDM's keywords
    (ln sigma ~ N(method.p_mean, method.p_std^2), method.sigma_data, EDM's augmentation):
    EDM's and TrigFlow diffusion's."""

    def objective(config, denoisers):
        m = config.method
        loss = functools.partial(
            loss_fn,
            denoisers.train,
            p_mean=m.p_mean,
            p_std=m.p_std,
            sigma_data=m.sigma_data,
            augment_settings=augment.Settings.from_config(config.augment),
        )
        return stateless(loss)

    return objective


objective = lognormal_objective(edm_loss)  # EDM's loss_fn with the config's values


METHOD = Method(
    objective=objective,
    parameterization=precond_pair("edm", "edm"),
    sampler=HEUN_SAMPLERS,
    augments=True,
)
