"""Samplers against closed forms: exact denoisers make the ODE solvable by hand; the clip
between consistency steps (docs/methods.md section 8) with a stub denoiser f(x) = 2 x."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_config

from cm import experiment, methods, sampling

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


def _doubling(params, x, sigma, labels=None, *args):
    """A stub denoiser f(x) = 2 x: its estimates leave [-1, 1] quickly."""
    return 2.0 * x


# Noises of four one-element samples: z_0 for the first step, z_1 for the re-noising.
Z0 = np.array([0.001, -0.002, 0.5, 0.01], np.float32).reshape(4, 1, 1, 1)
Z1 = np.array([-1.0, 1.0, -2.5, 0.5], np.float32).reshape(4, 1, 1, 1)


@pytest.mark.parametrize(
    "method,one_step,two_steps",
    [
        # Clipped (CD's default). Step 1: f(80 z_0) = 160 z_0 = (0.16, -0.32, 80, 1.6) -> clip
        # (0.16, -0.32, 1, 1). Re-noise at t = 0.5 with smin = 0.3: + sqrt(0.25 - 0.09) z_1 =
        # + 0.4 z_1 = (-0.4, 0.4, -1, 0.2) -> (-0.24, 0.08, 0, 1.2); doubled (-0.48, 0.16, 0,
        # 2.4) -> clip (-0.48, 0.16, 0, 1).
        ("cd", [0.16, -0.32, 1.0, 1.0], [-0.48, 0.16, 0.0, 1.0]),
        # Not clipped (ECT's default): (0.16, -0.32, 80, 1.6); + 0.4 z_1 = (-0.24, 0.08, 79,
        # 1.8); doubled (-0.48, 0.16, 158, 3.6).
        ("ect", [0.16, -0.32, 80.0, 1.6], [-0.48, 0.16, 158.0, 3.6]),
    ],
)
def test_clip_between_steps_with_a_doubling_denoiser_by_hand(method, one_step, two_steps):
    c = tiny_config(method__name=method)
    denoise = sampling.sample_denoiser(c, methods.get(method).clip_denoised, _doubling)
    steps = functools.partial(sampling.consistency_steps, denoise, {}, None, sigma_min=0.3)
    one = steps([jnp.asarray(Z0)], sigma_max=80.0, levels=())
    two = steps([jnp.asarray(Z0), jnp.asarray(Z1)], sigma_max=80.0, levels=(0.5,))
    np.testing.assert_allclose(one.ravel(), one_step, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(two.ravel(), two_steps, rtol=1e-6, atol=1e-6)


def test_each_method_default_clip_and_the_switch():
    """CD (both CM codes) and iCT (the CM codes it builds on) clip; ECT, sCT and sCD (ECT's and
    FastGen's samplers) do not; EDM's Heun and MeanFlow re-noise no x0 estimate (no switch)."""
    expected = {"ict": True, "cd": True, "ect": False, "sct": False, "scd": False}
    for name, clips in expected.items():
        assert methods.get(name).clip_denoised(tiny_config(method__name=name)) is clips, name
    for name in ("edm", "meanflow"):
        assert methods.get(name).clip_denoised is None, name
    c = tiny_config(method__name="ect")
    c.method.ect_clip_denoised = True  # the switch turns it on
    assert sampling.sample_denoiser(c, methods.get("ect").clip_denoised, _doubling) is not _doubling
    c.data.name = "latents"  # standardized latents have no range: never clipped
    assert sampling.sample_denoiser(c, methods.get("ect").clip_denoised, _doubling) is _doubling
    assert sampling.sample_denoiser(c, None, _doubling) is _doubling


def test_trigflow_sampler_clips_when_switched_on():
    """sCT's sampler with f(x) = 2 x: one step is f(sd z) = z, clipped to [-1, 1] when
    method.scm_clip_denoised is on; two steps stay in [-1, 1] only then."""
    c = tiny_config(method__name="sct")
    entry, shape, rng = methods.get("sct"), (64, 2, 2, 1), jax.random.key(4)
    outputs = {}
    for clip in (False, True):
        c.method.scm_clip_denoised = clip
        denoise = sampling.sample_denoiser(c, entry.clip_denoised, _doubling)
        for name, levels in (("1step", ()), ("2step", (1.1,))):
            outputs[name, clip] = entry.sampler.build(c, denoise, levels)({}, rng, None, shape)
    z = jax.random.normal(jax.random.split(rng, 1)[0], shape)  # the sampler's first draw
    np.testing.assert_allclose(outputs["1step", False], z, rtol=1e-6)
    np.testing.assert_allclose(outputs["1step", True], jnp.clip(z, -1.0, 1.0), rtol=1e-6)
    assert float(jnp.abs(outputs["2step", False]).max()) > 1.0
    assert float(jnp.abs(outputs["2step", True]).max()) <= 1.0
