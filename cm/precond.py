"""Preconditioning: the consistency function f and the EDM denoiser D around a raw network F.

f(x, s) = c_skip(s) x + c_out(s) F(c_in(s) x, c_noise(s)); f(x, sigma_min) = x exactly.
c_noise(s) is config.method.noise_label, resolved in NOISE_LABELS (docs/methods.md section 1).
"""

import jax.numpy as jnp


def consistency_scalings(sigma, sigma_data: float, sigma_min: float):
    """CM boundary-respecting c_skip, c_out, c_in at noise level sigma (any shape)."""
    c_skip = sigma_data**2 / ((sigma - sigma_min) ** 2 + sigma_data**2)
    c_out = sigma_data * (sigma - sigma_min) / jnp.sqrt(sigma**2 + sigma_data**2)
    c_in = 1.0 / jnp.sqrt(sigma**2 + sigma_data**2)
    return c_skip, c_out, c_in


def edm_scalings(sigma, sigma_data: float, sigma_min: float = 0.0):
    """EDM denoiser c_skip, c_out, c_in (sigma_min unused; same signature as above)."""
    del sigma_min
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / jnp.sqrt(sigma**2 + sigma_data**2)
    c_in = 1.0 / jnp.sqrt(sigma**2 + sigma_data**2)
    return c_skip, c_out, c_in


def c_noise_log_sigma_over_4(sigma):
    """ln(sigma) / 4: EDM's preconditioning (EDMPrecond) for every network, DDPM++, NCSN++ and
    ADM alike; also ECT and the CIFAR-10 JAX consistency-model code (docs/methods.md section 1)."""
    return 0.25 * jnp.log(sigma)


def c_noise_250_log_sigma(sigma):
    """250 ln(sigma) = 1000 * ln(sigma) / 4: the PyTorch consistency-model code
    (openai/consistency_models) and sLCT's code, which inherits it (docs/methods.md section 1)."""
    return 250.0 * jnp.log(sigma)


SCALINGS = {"consistency": consistency_scalings, "edm": edm_scalings}
# The one table of noise labels, keyed by config.method.noise_label (named by the formula): the
# label depends on the codebase a recipe comes from, not on the network's embedding.
NOISE_LABELS = {
    "log_sigma_over_4": c_noise_log_sigma_over_4,
    "250_log_sigma": c_noise_250_log_sigma,
}


def noise_label_fn(name: str):
    """sigma -> c_noise for config.method.noise_label `name`."""
    if name not in NOISE_LABELS:
        raise ValueError(f"Unknown method.noise_label {name!r}; valid: {sorted(NOISE_LABELS)}.")
    return NOISE_LABELS[name]


def bcast(s):
    """A per-sample scalar [B] -> [B, 1, 1, 1], to scale images [B, H, W, C]."""
    return s[:, None, None, None]


def make_denoiser(model, kind: str, noise_label: str, sigma_data: float, sigma_min: float):
    """Returns denoise(params, x, sigma, labels, train, dropout_rng, augment_labels) -> f or D.

    x: [B, H, W, C]; sigma: [B]; labels: [B] int or None; augment_labels: [B, augment_dim]
    (EDM's augmentation labels, cm/methods/augment.py) or None, which the network reads as zeros (no
    augmentation: sampling). The dropout key is passed explicitly so that callers can share it
    between two calls (the iCT teacher and student). `noise_label` is a key of NOISE_LABELS.
    """
    if kind not in SCALINGS:
        raise ValueError(f"Unknown preconditioning {kind!r}; valid: {sorted(SCALINGS)}.")
    scalings, c_noise = SCALINGS[kind], noise_label_fn(noise_label)

    def denoise(params, x, sigma, labels=None, train=False, dropout_rng=None, augment_labels=None):
        c_skip, c_out, c_in = (bcast(s) for s in scalings(sigma, sigma_data, sigma_min))
        rngs = {"dropout": dropout_rng} if dropout_rng is not None else {}
        extra = {} if augment_labels is None else {"augment_labels": augment_labels}
        out = model.apply(
            {"params": params}, c_in * x, c_noise(sigma), labels, train=train, rngs=rngs, **extra
        )
        return c_skip * x + c_out * out.astype(x.dtype)

    return denoise
