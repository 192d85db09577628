"""iCT and EDM objectives: exact values on stand-in networks, teacher gradients, shared dropout."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cm import methods, schedules
from cm.methods import augment, edm, ict, losses

ICT = dict(
    total_steps=400_000,
    s0=10,
    s1=1280,
    sigma_min=0.002,
    sigma_max=80.0,
    rho=7.0,
    p_mean=-1.1,
    p_std=2.0,
    distance=losses.pseudo_huber,
    c_factor=0.00054,
)


def _batch(b=6):
    x = jax.random.uniform(jax.random.key(1), (b, 4, 4, 3), minval=-1, maxval=1)
    return {"image": x, "label": jnp.zeros((b,), jnp.int32)}


def _replay_pair(rng, step, b, shape):
    """The index and noise the iCT loss draws for rng, recomputed outside it."""
    n = schedules.ict_num_scales(step, ICT["total_steps"], 10, 1280)
    sig = schedules.karras_sigmas(n, 0.002, 80.0, 7.0, 1281)
    logits = schedules.lognormal_index_logits(sig, n, -1.1, 2.0)
    k_index, k_noise, _ = jax.random.split(rng, 3)
    i = jax.random.categorical(k_index, logits, shape=(b,))
    z = jax.random.normal(k_noise, shape)
    return np.asarray(sig[i], np.float64), np.asarray(sig[i + 1], np.float64), np.asarray(z)


@pytest.mark.slow
def test_ict_loss_value_with_identity_network():
    """With f(x, s) = x: loss = mean_b (sqrt(gap^2 ||z||^2 + c^2) - c) / gap, gap = s_hi - s_lo."""
    identity = lambda params, x, sigma, labels, train, rng: x
    batch, rng, step = _batch(), jax.random.key(7), 60_000
    loss, metrics = ict.ict_loss(identity, {}, batch, rng, step, **ICT)
    s_lo, s_hi, z = _replay_pair(rng, step, 6, batch["image"].shape)
    c = 0.00054 * math.sqrt(48)
    gap = s_hi - s_lo
    sq = np.sum(z.reshape(6, -1).astype(np.float64) ** 2, axis=1)
    expected = np.mean((np.sqrt(gap**2 * sq + c**2) - c) / gap)
    np.testing.assert_allclose(loss, expected, rtol=1e-4)
    assert int(metrics["num_scales"]) == 21


def test_ict_student_at_upper_teacher_at_lower_level_same_z_and_dropout_key():
    calls = []

    def spy(params, x, sigma, labels, train, rng):
        calls.append((np.asarray(sigma), np.asarray(x), jax.random.key_data(rng), train))
        return x

    batch, rng = _batch(), jax.random.key(3)
    ict.ict_loss(spy, {}, batch, rng, 0, **ICT)
    (s_student, x_student, k_student, t1), (s_teacher, x_teacher, k_teacher, t2) = calls
    s_lo, s_hi, z = _replay_pair(rng, 0, 6, batch["image"].shape)
    np.testing.assert_allclose(s_student, s_hi, rtol=1e-6)
    np.testing.assert_allclose(s_teacher, s_lo, rtol=1e-6)
    x = np.asarray(batch["image"])
    np.testing.assert_allclose(x_student, x + s_hi[:, None, None, None] * z, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(x_teacher, x + s_lo[:, None, None, None] * z, rtol=1e-5, atol=1e-5)
    assert np.array_equal(k_student, k_teacher) and t1 and t2


def test_no_gradient_flows_through_teacher():
    """grad of the iCT loss == grad of the same loss with the teacher output frozen."""
    w = {"w": jnp.array(1.3)}
    net = lambda p, x, sigma, labels, train, rng: (
        p["w"] * x * (1 + 0.1 * sigma[:, None, None, None])
    )
    batch, rng = _batch(), jax.random.key(5)
    grad_full = jax.grad(lambda p: ict.ict_loss(net, p, batch, rng, 0, **ICT)[0])(w)

    s_lo, s_hi, z = _replay_pair(rng, 0, 6, batch["image"].shape)
    x = batch["image"]
    teacher = net(
        w, x + s_lo[:, None, None, None] * z, jnp.asarray(s_lo, jnp.float32), None, True, None
    )
    c = 0.00054 * math.sqrt(48)

    def student_only(p):
        student = net(
            p, x + s_hi[:, None, None, None] * z, jnp.asarray(s_hi, jnp.float32), None, True, None
        )
        d = losses.pseudo_huber(student, teacher, c)
        return jnp.mean(d / jnp.asarray(s_hi - s_lo, jnp.float32))

    grad_student = jax.grad(student_only)(w)
    np.testing.assert_allclose(grad_full["w"], grad_student["w"], rtol=1e-4)
    # If the teacher were differentiated too, the gradient would differ.
    both = lambda p: jnp.mean(
        losses.pseudo_huber(
            net(
                p,
                x + s_hi[:, None, None, None] * z,
                jnp.asarray(s_hi, jnp.float32),
                None,
                True,
                None,
            ),
            net(
                p,
                x + s_lo[:, None, None, None] * z,
                jnp.asarray(s_lo, jnp.float32),
                None,
                True,
                None,
            ),
            c,
        )
        / jnp.asarray(s_hi - s_lo, jnp.float32)
    )
    assert abs(float(jax.grad(both)(w)["w"]) - float(grad_full["w"])) > 1e-3


def test_edm_loss_value_with_zero_network():
    """D = 0 gives loss = mean_b w(s) mean(x^2) with the sampled sigma."""
    zero = lambda params, x, sigma, labels, train, rng: jnp.zeros_like(x)
    batch, rng = _batch(), jax.random.key(11)
    loss, _ = edm.edm_loss(zero, {}, batch, rng, 0, p_mean=-1.2, p_std=1.2, sigma_data=0.5)
    k_sigma, _, _ = jax.random.split(rng, 3)
    s = np.exp(-1.2 + 1.2 * np.asarray(jax.random.normal(k_sigma, (6,)), np.float64))
    w = (s**2 + 0.25) / (s * 0.5) ** 2
    x = np.asarray(batch["image"], np.float64)
    np.testing.assert_allclose(loss, np.mean(w * np.mean(x**2, axis=(1, 2, 3))), rtol=1e-4)


def test_edm_loss_with_augmentation_targets_the_augmented_batch():
    """With augmentation on, the network sees y + s n and its labels, and the target is y:
    y and the labels replayed from fold_in(rng, AUGMENT_TAG); sigma and n as without it."""
    calls = []

    def zero(params, x, sigma, labels, train, rng, augment_labels=None):
        calls.append((np.asarray(x), augment_labels))
        return jnp.zeros_like(x)

    s = augment.Settings(p=1, xflip=1, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)
    batch, rng = _batch(), jax.random.key(12)
    kw = dict(p_mean=-1.2, p_std=1.2, sigma_data=0.5)
    loss, _ = edm.edm_loss(zero, {}, batch, rng, 0, augment_settings=s, **kw)
    key = jax.random.fold_in(rng, augment.AUGMENT_TAG)
    y, labels = augment.augment(key, batch["image"], s)
    k_sigma, k_noise, _ = jax.random.split(rng, 3)
    s64 = np.exp(-1.2 + 1.2 * np.asarray(jax.random.normal(k_sigma, (6,)), np.float64))
    n = np.asarray(jax.random.normal(k_noise, y.shape))
    ((seen, seen_labels),) = calls
    np.testing.assert_allclose(seen, np.asarray(y) + s64[:, None, None, None] * n, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(seen_labels), labels)
    assert labels.shape == (6, 9) and np.abs(np.asarray(y) - np.asarray(batch["image"])).max() > 0
    w = (s64**2 + 0.25) / (s64 * 0.5) ** 2
    y64 = np.asarray(y, np.float64)
    np.testing.assert_allclose(loss, np.mean(w * np.mean(y64**2, axis=(1, 2, 3))), rtol=1e-4)
    # p = 0: no augmentation and no labels: the plain loss.
    calls.clear()
    off, _ = edm.edm_loss(zero, {}, batch, rng, 0, augment_settings=augment.Settings(), **kw)
    plain, _ = edm.edm_loss(zero, {}, batch, rng, 0, **kw)
    assert float(off) == float(plain) and calls[0][1] is None


def test_unknown_method_is_one_sentence():
    try:
        methods.get("ctm")
    except ValueError as e:
        assert "edm" in str(e) and "ict" in str(e)
    else:
        raise AssertionError("no error")
