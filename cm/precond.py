"""Preconditioning: the consistency function f and the EDM denoiser D around a raw network F.

f(x, s) = c_skip(s) x + c_out(s) F(c_in(s) x, c_noise(s)); f(x, sigma_min) = x exactly.
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


def c_noise_fourier(sigma):
    """Noise label for Fourier-embedding nets (NCSN++): 0.25 ln sigma."""
    return 0.25 * jnp.log(sigma)


def c_noise_positional(sigma):
    """Noise label for positional-embedding nets (DDPM++, ADM): 1000 * 0.25 ln sigma."""
    return 250.0 * jnp.log(sigma)


SCALINGS = {"consistency": consistency_scalings, "edm": edm_scalings}
C_NOISE = {"fourier": c_noise_fourier, "positional": c_noise_positional}


def make_denoiser(model, kind: str, embedding: str, sigma_data: float, sigma_min: float):
    """Returns denoise(params, x, sigma, labels, train, dropout_rng) -> f or D.

    x: [B, H, W, C]; sigma: [B]; labels: [B] int or None. The dropout key is passed explicitly
    so that callers can share it between two calls (the iCT teacher and student).
    """
    if kind not in SCALINGS:
        raise ValueError(f"Unknown preconditioning {kind!r}; valid: {sorted(SCALINGS)}.")
    if embedding not in C_NOISE:
        raise ValueError(f"Unknown model.embedding {embedding!r}; valid: {sorted(C_NOISE)}.")
    scalings, c_noise = SCALINGS[kind], C_NOISE[embedding]

    def denoise(params, x, sigma, labels=None, train=False, dropout_rng=None):
        c_skip, c_out, c_in = (
            s[:, None, None, None] for s in scalings(sigma, sigma_data, sigma_min)
        )
        rngs = {"dropout": dropout_rng} if dropout_rng is not None else {}
        out = model.apply(
            {"params": params}, c_in * x, c_noise(sigma), labels, train=train, rngs=rngs
        )
        return c_skip * x + c_out * out.astype(x.dtype)

    return denoise
