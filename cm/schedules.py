"""Noise grids and curricula: Karras grid, iCT curriculum N(k), discrete lognormal index law.

Everything here works on traced values so that one compiled training step serves the whole
curriculum: the grid is padded to its largest size and masked beyond the current N.
"""

import math

import jax
import jax.numpy as jnp


def karras_sigmas(num_scales, sigma_min: float, sigma_max: float, rho: float, size: int):
    """Increasing Karras grid sigma_1 < ... < sigma_N, padded to `size` entries.

    num_scales (N) may be traced; entries at i >= N are copies of sigma_max and must be masked.
    Returns float32 [size].
    """
    i = jnp.arange(size, dtype=jnp.float32)
    frac = jnp.minimum(i / (jnp.asarray(num_scales, jnp.float32) - 1.0), 1.0)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    return (lo + frac * (hi - lo)) ** rho


def ict_num_scales(step, total_steps: int, s0: int, s1: int):
    """iCT doubling curriculum N(k) = min(s0 * 2^floor(k / K'), s1) + 1.

    K' = floor(K / (log2 floor(s1 / s0) + 1)). `step` may be a Python int or a traced int.
    """
    stage_len = math.floor(total_steps / (math.log2(math.floor(s1 / s0)) + 1))
    stage = jnp.asarray(step) // max(stage_len, 1)
    # Clamp the exponent before the power so that the integer never overflows.
    max_stage = math.ceil(math.log2(s1 / s0))
    scales = jnp.minimum(s0 * 2 ** jnp.minimum(stage, max_stage), s1)
    return (scales + 1).astype(jnp.int32)


def max_num_scales(s1: int) -> int:
    """Largest N of the curriculum: the padded grid size."""
    return s1 + 1


def lognormal_index_logits(sigmas, num_scales, p_mean: float, p_std: float):
    """Log-probabilities of the iCT discrete lognormal law over pair indices i = 0..N-2.

    p(i) ∝ erf((ln s_{i+1} - Pm) / (sqrt 2 Ps)) - erf((ln s_i - Pm) / (sqrt 2 Ps)).
    sigmas: [size] padded increasing grid. Returns [size - 1] with -inf beyond N - 2.
    """
    cdf = jax.scipy.special.erf((jnp.log(sigmas) - p_mean) / (math.sqrt(2.0) * p_std))
    mass = cdf[1:] - cdf[:-1]  # [size - 1]
    valid = jnp.arange(sigmas.shape[0] - 1) < (num_scales - 1)
    return jnp.where(valid & (mass > 0), jnp.log(jnp.where(mass > 0, mass, 1.0)), -jnp.inf)


def lognormal_index_probs(sigmas, num_scales, p_mean: float, p_std: float):
    """Normalized probabilities of `lognormal_index_logits`. Returns [size - 1]."""
    return jax.nn.softmax(lognormal_index_logits(sigmas, num_scales, p_mean, p_std))


def ct_weight(sigma_lo, sigma_hi):
    """iCT weight lambda(sigma_i) = 1 / (sigma_{i+1} - sigma_i)."""
    return 1.0 / (sigma_hi - sigma_lo)


def slct_cauchy_c(num_scales, s0: int, first_stage_c: float, log_slope: float, log_offset: float):
    """sLCT's adaptive Cauchy c(N) (docs/methods.md section 3).

    First curriculum stage (N <= s0 + 1): the fixed `first_stage_c` (0.00054 sqrt(d));
    afterwards c(N) = exp(log_slope * ln(N - 1) + log_offset), i.e. exp(-1.15 ln(N-1) - 0.85).
    num_scales may be traced. Returns a float32 scalar.
    """
    n = jnp.asarray(num_scales, jnp.float32)
    later = jnp.exp(log_slope * jnp.log(jnp.maximum(n - 1.0, 1.0)) + log_offset)
    return jnp.where(n <= s0 + 1, jnp.float32(first_stage_c), later)


def low_noise_mask(hi_index, num_scales, quantile: float):
    """Pairs whose student level sigma_{i+1} lies in the lowest `quantile` of the current grid.

    hi_index: [B] 0-based index of the student's sigma in the increasing grid of N levels.
    Selected when hi_index <= quantile * (N - 1), i.e. sigma_{i+1} <= the grid's level at that
    fraction (0.170 for quantile 0.25 once N >= 21). Returns bool [B].
    """
    n = jnp.asarray(num_scales, jnp.float32)
    return hi_index.astype(jnp.float32) <= quantile * (n - 1.0)


def karras_level_from_top(
    index: int, num_scales: int, sigma_min: float, sigma_max: float, rho: float
):
    """The sigma at `index` of an N-level Karras grid counted from the largest (index 0 = smax).

    sLCT's second sampling level is index 440 of the 641-level grid: about 0.368.
    """
    frac = (num_scales - 1 - index) / (num_scales - 1)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    return float((lo + frac * (hi - lo)) ** rho)
