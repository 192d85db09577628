"""Per-sample distances between two batches of samples, as pure functions of arrays.

iCT's pseudo-Huber acts on the whole sample vector; sLCT's Cauchy and the iLCT baseline's
pseudo-Huber (as the sLCT authors' code computes it) on the mean over elements.
"""

import jax.numpy as jnp


def _flat(a):
    """[B, ...] -> [B, d]."""
    return a.reshape(a.shape[0], -1)


def squared_l2(a, b):
    """||a - b||_2^2 over each sample. Returns [B]."""
    return jnp.sum(jnp.square(_flat(a) - _flat(b)), axis=-1)


def l2(a, b, c=None):
    """Euclidean distance over each sample (c unused). Returns [B]."""
    del c
    return jnp.sqrt(squared_l2(a, b))


def pseudo_huber(a, b, c):
    """iCT pseudo-Huber over the whole sample vector: sqrt(||a - b||^2 + c^2) - c. Returns [B]."""
    return jnp.sqrt(squared_l2(a, b) + c**2) - c


def pseudo_huber_lct(a, b, c):
    """Pseudo-Huber on the mean over elements, as the sLCT authors' code runs its iLCT baseline
    (docs/methods.md section 3): sqrt(mean((a - b)^2) + c^2) - c. Returns [B].

    Unlike iCT's `pseudo_huber` (a sum over the d elements), the same c = 0.00054 sqrt(d) here
    meets a d times smaller squared error, so the loss is far closer to its quadratic regime.
    """
    mse = jnp.mean(jnp.square(_flat(a) - _flat(b)), axis=-1)  # [B]
    return jnp.sqrt(mse + c**2) - c


def cauchy(a, b, c):
    """sLCT Cauchy distance: log(1 + mean_over_elements((a - b)^2) / (2 c^2)). Returns [B].

    c may be a scalar or traced (the adaptive c(N) of `schedules.slct_cauchy_c`).
    """
    mse = jnp.mean(jnp.square(_flat(a) - _flat(b)), axis=-1)  # [B]
    return jnp.log1p(mse / (2.0 * jnp.square(c)))


def huber_c(num_elements: int, factor: float) -> float:
    """iCT's c = factor * sqrt(d) for samples of d elements (0.00054 * sqrt(3072) = 0.0299)."""
    return factor * num_elements**0.5


DISTANCES = {
    "l2": l2,
    "pseudo_huber": pseudo_huber,
    "pseudo_huber_lct": pseudo_huber_lct,
    "cauchy": cauchy,
}


def get_distance(name: str):
    """The distance function for a config string."""
    if name not in DISTANCES:
        raise ValueError(f"Unknown method.distance {name!r}; valid: {sorted(DISTANCES)}.")
    return DISTANCES[name]
