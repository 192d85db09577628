"""EDM2's power-function EMA (Karras et al. 2024, arXiv 2312.02696, section 3 and appendix C).

A power-function EMA with exponent gamma averages the online parameters theta(tau) of steps
tau in [0, t] with the profile

    p_{t,gamma}(tau) = (gamma + 1) tau^gamma / t^(gamma + 1),

tracked online by ema <- beta_t ema + (1 - beta_t) theta with beta_t = (1 - 1/t)^(gamma + 1),
t = the number of optimizer steps taken (t = 1 gives beta = 0: the EMA starts at theta).
Its width relative to t is

    sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3))),

so configs name profiles by sigma_rel (EDM2 tracks 0.05 and 0.10). Post-hoc reconstruction:
snapshots of the tracked EMAs at times t_i with exponents gamma_i are combined with weights x
that minimise || sum_i x_i p_{t_i,gamma_i} - p_{t_out,gamma_out} ||^2 in L2([0, inf)), i.e.
A x = b with A_ij = <p_i, p_j>, b_i = <p_i, p_out>, where for t_a <= t_b

    <p_{t_a,g_a}, p_{t_b,g_b}> = (g_a + 1)(g_b + 1) / ((g_a + g_b + 1) t_b) * (t_a / t_b)^g_b,

then x is divided by sum_i x_i, as EDM2's solve_posthoc_coefficients does: the least-squares
weights alone sum to less than 1 (0.99747 for sigma_rel 0.15 from 0.05/0.10 snapshots every
100 of 1000 steps, 0.9875 every 500 of 3000), which would shrink every merged parameter.
"""

import jax
import jax.numpy as jnp
import numpy as np


def gamma_to_std(gamma):
    """sigma_rel of exponent gamma (float64)."""
    g = np.float64(gamma)
    return np.sqrt((g + 1) / ((g + 2) ** 2 * (g + 3)))


def std_to_gamma(std: float) -> float:
    """The exponent gamma whose sigma_rel is std: the largest real root of
    gamma^3 + 7 gamma^2 + (16 - std^-2) gamma + (12 - std^-2) = 0."""
    if not 0.0 < std < gamma_to_std(0.0):
        raise ValueError(
            f"A power-EMA sigma_rel of {std} is outside (0, {gamma_to_std(0.0):.4f}); "
            "use values such as 0.05 or 0.10 (EDM2's defaults)."
        )
    s = np.float64(std) ** -2
    roots = np.roots([1.0, 7.0, 16.0 - s, 12.0 - s])
    return float(roots[np.abs(roots.imag) < 1e-9].real.max())


def one_minus_beta(t, gamma: float):
    """1 - (1 - 1/t)^(gamma + 1), computed through log1p/expm1 so that it stays accurate in
    float32 at large t (where 1 - 1/t rounds); t = steps taken, t >= 1."""
    t = jnp.asarray(t, jnp.float32)
    return -jnp.expm1((gamma + 1.0) * jnp.log1p(-1.0 / t))


def update(power_emas: tuple, params, t, gammas) -> tuple:
    """Each tracked EMA after optimizer step t (t = steps taken, counted from 1)."""
    out = []
    for ema, gamma in zip(power_emas, gammas, strict=True):
        w = one_minus_beta(t, gamma)
        beta = jnp.exp((gamma + 1.0) * jnp.log1p(-1.0 / jnp.asarray(t, jnp.float32)))
        # beta e + (1 - beta) p, both factors exact at t = 1 (0 and 1): the EMA starts at p.
        out.append(jax.tree.map(lambda e, p, b=beta, w=w: b * e + w * p, ema, params))
    return tuple(out)


def profile_dot(t_a, g_a, t_b, g_b):
    """<p_{t_a,g_a}, p_{t_b,g_b}> in L2 (broadcasting, float64)."""
    t_a, g_a, t_b, g_b = (np.asarray(v, np.float64) for v in (t_a, g_a, t_b, g_b))
    lo, hi = np.minimum(t_a, t_b), np.maximum(t_a, t_b)
    g_hi = np.where(t_a <= t_b, g_b, g_a)  # exponent of the profile that ends later
    return (g_a + 1) * (g_b + 1) / ((g_a + g_b + 1) * hi) * (lo / hi) ** g_hi


def posthoc_coefficients(in_t, in_gamma, out_t: float, out_gamma: float) -> np.ndarray:
    """Weights x [K] (summing to 1) of K stored power-EMA snapshots (times in_t [K], exponents
    in_gamma [K]) whose combined profile best matches p_{out_t, out_gamma}: the least-squares
    solution, normalized to sum 1 (an average of parameters, as EDM2 does)."""
    in_t, in_gamma = np.asarray(in_t, np.float64), np.asarray(in_gamma, np.float64)
    a = profile_dot(in_t[:, None], in_gamma[:, None], in_t[None, :], in_gamma[None, :])
    b = profile_dot(in_t, in_gamma, out_t, out_gamma)
    x = np.linalg.lstsq(a, b, rcond=None)[0]  # [K]
    return x / x.sum()
