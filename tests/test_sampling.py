"""Samplers against closed forms: exact denoisers make the ODE solvable by hand."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_config

from cm import experiment, sampling

HEUN = dict(
    sigma_min=0.002,
    sigma_max=80.0,
    rho=7.0,
    num_steps=18,
    churn=0.0,
    s_tmin=0.0,
    s_tmax=float("inf"),
    s_noise=1.0,
)


def test_heun_with_point_mass_denoiser_lands_on_the_point():
    """D(x, s) = x0 makes dx/dt = (x - x0)/t linear in t: Heun ends exactly at x0."""
    x0 = jnp.full((4, 2, 2, 1), 0.3)
    calls = []

    def denoise(params, x, sigma, labels):
        calls.append(1)
        return jnp.broadcast_to(x0, x.shape)

    out = sampling.heun_sample(denoise, {}, jax.random.key(0), None, x0.shape, **HEUN)
    np.testing.assert_allclose(out, x0, atol=1e-4)
    assert len(calls) == 2 * 18 - 1  # 35 network evaluations


def _heun_gain_float64(sd, n=18, smin=0.002, smax=80.0, rho=7.0):
    """Independent float64 Heun on dx/dt = x t / (t^2 + sd^2): the map x_T -> x_0 is x_T * gain."""
    i = np.arange(n)
    t = (smax ** (1 / rho) + i / (n - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    t = np.append(t, 0.0)
    slope = lambda x, s: x * s / (s * s + sd * sd)
    x = 1.0
    for k in range(n):
        d = slope(x, t[k])
        x_next = x + (t[k + 1] - t[k]) * d
        if k < n - 1:
            x_next = x + (t[k + 1] - t[k]) * 0.5 * (d + slope(x_next, t[k + 1]))
        x = x_next
    return x


def test_heun_with_gaussian_denoiser_matches_float64_recurrence():
    """Data N(0, sd^2) has D(x, s) = x sd^2 / (s^2 + sd^2); the sampler is linear in x_T."""
    sd = 0.5
    denoise = lambda params, x, sigma, labels: x * sd**2 / (sigma[:, None, None, None] ** 2 + sd**2)
    out = sampling.heun_sample(denoise, {}, jax.random.key(1), None, (4096, 2, 2, 1), **HEUN)
    x_t = 80.0 * jax.random.normal(jax.random.split(jax.random.key(1))[0], (4096, 2, 2, 1))
    # 80 * gain = 0.5276: 18 Heun steps overshoot the exact ODE's 0.49999 by 5.5 %.
    gain = _heun_gain_float64(sd)
    np.testing.assert_allclose(out, np.asarray(x_t) * gain, rtol=1e-3, atol=1e-4)


def test_heun_churn_adds_noise_only_inside_range():
    denoise = lambda params, x, sigma, labels: x * 0.25 / (sigma[:, None, None, None] ** 2 + 0.25)
    kwargs = {**HEUN, "churn": 40.0, "s_tmin": 100.0, "s_tmax": 200.0}  # range never reached
    a = sampling.heun_sample(denoise, {}, jax.random.key(2), None, (2, 2, 2, 1), **kwargs)
    b = sampling.heun_sample(denoise, {}, jax.random.key(2), None, (2, 2, 2, 1), **HEUN)
    np.testing.assert_allclose(a, b, atol=1e-6)
    kwargs["s_tmin"] = 0.0
    c = sampling.heun_sample(denoise, {}, jax.random.key(2), None, (2, 2, 2, 1), **kwargs)
    assert not np.allclose(a, c)


def test_consistency_multistep_noise_levels():
    """x = f(smax z); then f(x + sqrt(t^2 - smin^2) z', t) at each level, checked exactly.

    The noise is replayed from the sampler's keys (split(rng, levels + 1)), so the inputs are
    compared elementwise: using t instead of sqrt(t^2 - smin^2) scales the second input by
    0.821 / sqrt(0.821^2 - 0.002^2) = 1 + 3.0e-6, three times the tolerance.
    """
    seen = []

    def denoise(params, x, sigma, labels):
        seen.append((float(sigma[0]), np.asarray(x, np.float64)))
        return jnp.zeros_like(x)

    rng, shape, t, smin = jax.random.key(3), (8192, 1, 1, 1), 0.821, 0.002
    sampling.consistency_sample(
        denoise, {}, rng, None, shape, sigma_min=smin, sigma_max=80.0, levels=(t,)
    )
    (s1, x1), (s2, x2) = seen
    assert s1 == 80.0 and abs(s2 - t) < 1e-6
    k0, k1 = jax.random.split(rng, 2)
    z0 = np.asarray(jax.random.normal(k0, shape), np.float64)
    z1 = np.asarray(jax.random.normal(k1, shape), np.float64)
    np.testing.assert_allclose(x1, 80.0 * z0, rtol=1e-6)
    # f returned 0, so the second input is the fresh noise alone, at sqrt(t^2 - smin^2).
    np.testing.assert_allclose(x2, math.sqrt(t**2 - smin**2) * z1, rtol=1e-6)
    assert np.max(np.abs(x2 - t * z1) / np.abs(t * z1)) > 2e-6  # t itself would fail


@pytest.mark.slow
def test_parallel_sampler_ordered_labels_and_shape():
    c = tiny_config()
    exp = experiment.build(c)
    params = experiment.init_params(exp, c)
    sampler = experiment.samplers(c, exp)["1step"]
    x, y = sampler(params, jax.random.key(0), 12, True)
    assert x.shape == (12, 8, 8, 1)
    np.testing.assert_array_equal(y, np.arange(12) % 10)
