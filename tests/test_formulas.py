"""The formulas of docs/methods.md sections 1, 2 and 5 and the distances of section 8, pinned
against hand-computed values."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_config
from scipy.special import erf

from cm import precond, schedules, state
from cm.methods import losses
from configs import (
    celebahq256_slct,
    cifar10_edm,
    cifar10_ict,
    common,
    demo,
    demo_slct,
    imagenet64_ict,
)


def test_karras_grid_ends_and_midpoint():
    two = schedules.karras_sigmas(2, 0.002, 80.0, 7.0, size=2)
    np.testing.assert_allclose(two, [0.002, 80.0], rtol=1e-5)
    three = schedules.karras_sigmas(3, 0.002, 80.0, 7.0, size=3)
    # ((0.002^(1/7) + 80^(1/7)) / 2)^7 computed by hand (float64): 2.515219
    np.testing.assert_allclose(three[1], 2.515219, rtol=1e-5)


def test_karras_grid_padded_matches_unpadded_and_increases():
    n = 11
    padded = schedules.karras_sigmas(n, 0.002, 80.0, 7.0, size=1281)
    ref = (0.002 ** (1 / 7) + np.arange(n) / (n - 1) * (80 ** (1 / 7) - 0.002 ** (1 / 7))) ** 7
    np.testing.assert_allclose(padded[:n], ref, rtol=1e-5)
    assert np.all(np.diff(padded[:n]) > 0)
    np.testing.assert_allclose(padded[n:], 80.0, rtol=1e-5)


@pytest.mark.parametrize(
    "step,expected",
    [
        (0, 11),
        (49_999, 11),
        (50_000, 21),
        (100_000, 41),
        (150_000, 81),
        (200_000, 161),
        (250_000, 321),
        (300_000, 641),
        (350_000, 1281),
        (399_999, 1281),
    ],
)
def test_ict_curriculum_400k(step, expected):
    assert int(schedules.ict_num_scales(step, 400_000, 10, 1280)) == expected


def test_ict_curriculum_traced_under_jit():
    f = jax.jit(lambda k: schedules.ict_num_scales(k, 400_000, 10, 1280))
    assert [int(f(k)) for k in (0, 50_000, 399_999)] == [11, 21, 1281]
    # sLCT's s1 = 640 caps at 641.
    assert int(schedules.ict_num_scales(10**6, 400_000, 10, 640)) == 641


def test_lognormal_index_probs_against_scipy():
    n = 21
    sigmas = schedules.karras_sigmas(n, 0.002, 80.0, 7.0, size=41)
    probs = np.asarray(schedules.lognormal_index_probs(sigmas, n, -1.1, 2.0))
    s = np.asarray(sigmas[:n], np.float64)
    mass = erf((np.log(s[1:]) - -1.1) / (np.sqrt(2) * 2.0)) - erf(
        (np.log(s[:-1]) - -1.1) / (np.sqrt(2) * 2.0)
    )
    np.testing.assert_allclose(probs[: n - 1], mass / mass.sum(), rtol=1e-4, atol=1e-7)
    assert np.all(probs[n - 1 :] == 0)


def test_lognormal_sign_of_p_mean():
    """Pm = -1.1 puts the mode of the index law below sigma = 1 (the known trap is +1.1)."""
    n = 1281
    sigmas = schedules.karras_sigmas(n, 0.002, 80.0, 7.0, size=n)
    probs = schedules.lognormal_index_probs(sigmas, n, -1.1, 2.0)
    mode = int(jnp.argmax(probs / jnp.diff(jnp.log(sigmas))))
    assert 0.2 < float(sigmas[mode]) < 0.5  # exp(-1.1) = 0.333


def test_ct_weight():
    np.testing.assert_allclose(schedules.ct_weight(0.5, 0.75), 4.0)


def test_pseudo_huber_whole_vector_not_elementwise():
    a = jnp.array([[[[3.0], [4.0]]]])  # one sample, d = 2
    b = jnp.zeros_like(a)
    c = 0.5
    # sqrt(3^2 + 4^2 + 0.25) - 0.5 by hand
    np.testing.assert_allclose(losses.pseudo_huber(a, b, c), [math.sqrt(25.25) - 0.5], rtol=1e-6)
    elementwise = (math.sqrt(9 + 0.25) - 0.5) + (math.sqrt(16 + 0.25) - 0.5)
    assert abs(float(losses.pseudo_huber(a, b, c)[0]) - elementwise) > 1e-2
    np.testing.assert_allclose(losses.l2_norm(a, b), [5.0])


def test_distances_by_name_by_hand():
    """jcm's "l1" and "l2" are means over the elements; "l2_norm" is the Euclidean norm (ECT's
    c = 0). Two samples of d = 4: differences (3, -4, 0, 1) and (1, 1, 1, -1)."""
    a = jnp.array([[[[3.0], [-4.0]], [[0.0], [1.0]]], [[[1.0], [1.0]], [[1.0], [-1.0]]]])
    b = jnp.zeros_like(a)
    by_name = {name: losses.get_distance(name)(a, b, 0.5) for name in ("l1", "l2", "l2_norm")}
    np.testing.assert_allclose(by_name["l1"], [8 / 4, 4 / 4])  # (3 + 4 + 0 + 1) / 4, 4 / 4
    np.testing.assert_allclose(by_name["l2"], [26 / 4, 4 / 4])  # (9 + 16 + 0 + 1) / 4, 4 / 4
    np.testing.assert_allclose(by_name["l2_norm"], [math.sqrt(26), 2.0], rtol=1e-6)
    # A method carrying network distances gets fn(a, b, c, frozen) that ignores `frozen`.
    with_frozen = losses.get_distance("l1", tiny_config(method__name="cd"))
    np.testing.assert_allclose(with_frozen(a, b, 0.5, {}), [2.0, 1.0])


def test_huber_c_cifar():
    np.testing.assert_allclose(losses.huber_c(32 * 32 * 3, 0.00054), 0.0299298, rtol=1e-5)


def test_unknown_distance():
    with pytest.raises(ValueError, match="pseudo_huber"):
        losses.get_distance("huber")


def test_consistency_scalings_hand_values_and_boundary():
    c_skip, c_out, c_in = precond.consistency_scalings(jnp.float32(1.0), 0.5, 0.002)
    np.testing.assert_allclose(c_skip, 0.25 / (0.998**2 + 0.25), rtol=1e-6)
    np.testing.assert_allclose(c_out, 0.5 * 0.998 / math.sqrt(1.25), rtol=1e-6)
    np.testing.assert_allclose(c_in, 1 / math.sqrt(1.25), rtol=1e-6)
    c_skip, c_out, _ = precond.consistency_scalings(jnp.float32(0.002), 0.5, 0.002)
    assert float(c_skip) == 1.0 and float(c_out) == 0.0


def test_edm_scalings_hand_values():
    c_skip, c_out, c_in = precond.edm_scalings(jnp.float32(0.5), 0.5)
    np.testing.assert_allclose(
        [c_skip, c_out, c_in], [0.5, 0.25 / math.sqrt(0.5), 1 / math.sqrt(0.5)], rtol=1e-6
    )


def test_noise_labels_by_hand():
    """sigma = e^2 (ln sigma = 2): ln(sigma)/4 = 0.5, 250 ln(sigma) = 500; sigma = 0.002:
    ln 0.002 = -6.2146, so -1.5537 and -1553.7."""
    sigma = jnp.asarray([math.e**2, 0.002], jnp.float32)
    quarter = precond.noise_label_fn("log_sigma_over_4")(sigma)
    np.testing.assert_allclose(quarter, [0.5, -1.55365], rtol=1e-5)
    np.testing.assert_allclose(
        precond.noise_label_fn("250_log_sigma")(sigma), [500, -1553.65], rtol=1e-5
    )
    with pytest.raises(ValueError, match=r"method\.noise_label.*250_log_sigma"):
        precond.noise_label_fn("positional")


@pytest.mark.parametrize(
    "make,label",
    [
        # EDM's preconditioning feeds ln(sigma)/4 to DDPM++ (and to every net).
        (cifar10_edm.get_config, "log_sigma_over_4"),
        # NCSN++ with ln(sigma)/4, as EDM, ECT and the CIFAR-10 JAX CM code.
        (cifar10_ict.get_config, "log_sigma_over_4"),
        (lambda: cifar10_ict.get_config("deep"), "log_sigma_over_4"),
        # ADM with 250 ln(sigma), as openai/consistency_models.
        (imagenet64_ict.get_config, "250_log_sigma"),
        # sLCT's latent ADM, from quandao10/LCT (which inherits openai/consistency_models).
        (celebahq256_slct.get_config, "250_log_sigma"),
        (lambda: celebahq256_slct.get_config("ilct"), "250_log_sigma"),
        (lambda: common.slct_latent_model(common.base_config()), "250_log_sigma"),
        # The demos: our choice, 250 ln(sigma) (configs/demo.py).
        (demo.get_config, "250_log_sigma"),
        (demo_slct.get_config, "250_log_sigma"),
    ],
)
def test_each_paper_config_names_its_noise_label(make, label):
    config = make()
    assert config.method.noise_label == label
    fn = precond.noise_label_fn(config.method.noise_label)
    expected = 0.5 if label == "log_sigma_over_4" else 500.0  # at sigma = e^2
    np.testing.assert_allclose(fn(jnp.float32(math.e**2)), expected, rtol=1e-6)


class _Affine:
    """A stand-in network F(x, c_noise) = 3 x + c_noise, to check the wrapper's algebra."""

    def apply(self, variables, x, c_noise, labels, train, rngs):
        return 3.0 * x + c_noise[:, None, None, None]


def test_consistency_function_boundary_is_exact_identity():
    f = precond.make_denoiser(_Affine(), "consistency", "log_sigma_over_4", 0.5, 0.002)
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 1))
    out = f({}, x, jnp.full((2,), 0.002, jnp.float32))
    assert jnp.array_equal(out, x)


def test_denoiser_combines_scalings():
    f = precond.make_denoiser(_Affine(), "edm", "250_log_sigma", 0.5, 0.002)
    x = jnp.ones((1, 2, 2, 1))
    s = 1.0
    c_skip, c_out, c_in = 0.25 / 1.25, 0.5 / math.sqrt(1.25), 1 / math.sqrt(1.25)
    expected = c_skip * 1 + c_out * (3 * c_in + 250 * math.log(s))
    np.testing.assert_allclose(f({}, x, jnp.array([s])), expected, rtol=1e-6)
    # sigma = e: the label is ln(e)/4 = 0.25 with log_sigma_over_4.
    g = precond.make_denoiser(_Affine(), "edm", "log_sigma_over_4", 0.5, 0.002)
    s = math.e
    c_skip, c_out, c_in = (
        0.25 / (s**2 + 0.25),
        0.5 * s / math.sqrt(s**2 + 0.25),
        1 / math.sqrt(s**2 + 0.25),
    )
    expected = c_skip + c_out * (3 * c_in + 0.25)
    np.testing.assert_allclose(g({}, x, jnp.array([s], jnp.float32)), expected, rtol=1e-6)


def test_edm_halflife_ema_beta_by_hand():
    """EDM CIFAR-10: batch 512, half-life 500k images, ramp-up 0.05; images_seen = step * 512
    counts the images before the current batch. beta = 0.5 ^ (512 / max(min(500k, 0.05 *
    images), 1e-8)):
      step 0: min(500k, 0) = 0 -> max(.., 1e-8) -> 0.5^(5.12e10) = 0 (the EMA copies params)
      step 1: 0.05 * 512 = 25.6 -> 0.5^20 = 9.5367e-7
      step 100: 0.05 * 51200 = 2560 -> 0.5^0.2 = 0.870551
      step 10000: 0.05 * 5.12e6 = 256000 -> 0.5^0.002 = 0.998615
      step 100000: 0.05 * 5.12e7 = 2.56e6 > 500k -> 0.5^0.001024 = 0.999290"""
    ema = state.halflife_ema(cifar10_edm.get_config().training)
    assert (ema.halflife_images, ema.rampup_ratio, ema.batch_size) == (500_000, 0.05, 512)
    betas = [float(ema.beta(jnp.int32(k))) for k in (0, 1, 100, 10_000, 100_000)]
    expected = [0.0, 0.5**20, 0.5**0.2, 0.5**0.002, 0.5**0.001024]
    np.testing.assert_allclose(betas, expected, rtol=1e-6, atol=1e-12)
    # No ramp-up (ratio 0, EDM's None): the half-life from the first step.
    flat = state.HalflifeEMA(500_000, 0.0, 512)
    np.testing.assert_allclose(float(flat.beta(jnp.int32(0))), 0.5**0.001024, rtol=1e-6)
    # Off by default; negative values are refused.
    assert state.halflife_ema(common.base_config().training) is None
    bad = common.base_config().training
    bad.ema_rampup_ratio = -1.0
    with pytest.raises(ValueError, match="ema_rampup_ratio"):
        state.halflife_ema(bad)


def test_update_emas_constant_rates_then_the_halflife_ema():
    """Entries: one per constant rate, then the half-life EMA with beta(step)."""
    t = cifar10_edm.get_config().training
    t.ema_rates = (0.75,)
    assert state.num_emas(t) == 2 and state.num_emas(cifar10_edm.get_config().training) == 1
    emas = ({"w": jnp.float32(2.0)}, {"w": jnp.float32(2.0)})
    out = state.update_emas(emas, {"w": jnp.float32(4.0)}, t.ema_rates, 100, state.halflife_ema(t))
    beta = 0.5**0.2  # step 100, as above
    np.testing.assert_allclose(out[0]["w"], 0.75 * 2 + 0.25 * 4, rtol=1e-6)
    np.testing.assert_allclose(out[1]["w"], beta * 2 + (1 - beta) * 4, rtol=1e-6)
