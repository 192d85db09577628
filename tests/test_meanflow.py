"""MeanFlow (docs/methods.md section 9): the time sampler, the JVP target against finite
differences and a point-mass flow, the loss and gradient against float64 numpy, the samplers,
the U-Net's second time label, and EDM's augmentation (the CIFAR-10 recipe's)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_config

from cm import methods
from cm.methods import augment, meanflow, spec
from cm.models.unet import UNet
from configs import cifar10_meanflow, common

TR = dict(t_mean=-2.0, t_std=2.0, r_mean=-2.0, r_std=2.0, equal_fraction=0.25, tr_order="sorted")
LOSS = dict(TR, norm_p=0.75, norm_eps=1e-3)


def _batch(b=8, dtype=jnp.float32):
    x = jax.random.uniform(jax.random.key(1), (b, 4, 4, 3), minval=-1, maxval=1)
    return {"image": x.astype(dtype), "label": jnp.zeros((b,), jnp.int32)}


def _replay(rng, b, shape, **tr):
    """t, r and e as meanflow_loss draws them for rng, in float64."""
    k_time, k_noise, _ = jax.random.split(rng, 3)
    t, r = meanflow.sample_tr(k_time, b, **{**TR, **tr})
    e = np.asarray(jax.random.normal(k_noise, shape), np.float64)
    return np.asarray(t, np.float64), np.asarray(r, np.float64), e


def _linear_u(params, z, r, t, labels=None, train=False, dropout_rng=None, augment_labels=None):
    """u = a z + b t + c r: du/dt along (v, 0, 1) is a v + b exactly."""
    b4 = lambda s: s[:, None, None, None]
    return params["a"] * z + params["b"] * b4(t) + params["c"] * b4(r)


def test_time_sampler_orders_and_equal_fraction():
    key = jax.random.key(3)
    t, r = meanflow.sample_tr(key, 1000, **TR)
    k_t, k_r = jax.random.split(key)
    a = 1 / (1 + np.exp(-(-2.0 + 2.0 * np.asarray(jax.random.normal(k_t, (1000,)), np.float64))))
    b = 1 / (1 + np.exp(-(-2.0 + 2.0 * np.asarray(jax.random.normal(k_r, (1000,)), np.float64))))
    np.testing.assert_allclose(t, np.maximum(a, b), rtol=1e-5)
    np.testing.assert_allclose(r[250:], np.minimum(a, b)[250:], rtol=1e-5)
    np.testing.assert_array_equal(r[:250], t[:250])  # floor(1000 * 0.25) rows with r = t
    assert bool(jnp.all(t >= r)) and float(r.min()) > 0 and float(t.max()) < 1
    t, r = meanflow.sample_tr(key, 1000, **{**TR, "tr_order": "clamped", "r_mean": -4.0})
    b = 1 / (1 + np.exp(-(-4.0 + 2.0 * np.asarray(jax.random.normal(k_r, (1000,)), np.float64))))
    np.testing.assert_allclose(t, a, rtol=1e-5)  # t keeps its own law
    np.testing.assert_allclose(r[250:], np.minimum(a, b)[250:], rtol=1e-5)
    with pytest.raises(ValueError, match="mf_tr_order"):
        meanflow.sample_tr(key, 4, **{**TR, "tr_order": "random"})


def test_total_derivative_equals_central_difference_float64():
    """du/dt from one jvp along (v, 0, 1) equals the central difference of u(z + h v, r, t + h)."""
    with jax.enable_x64(True):
        k1, k2, k3, k4 = jax.random.split(jax.random.key(5), 4)
        z = jax.random.normal(k1, (3, 4, 4, 2), jnp.float64)
        v = jax.random.normal(k2, (3, 4, 4, 2), jnp.float64)
        t = jax.random.uniform(k3, (3,), jnp.float64, 0.5, 0.9)
        r = t - jnp.array([0.0, 0.2, 0.4])
        mix = jax.random.normal(k4, (2, 2), jnp.float64)

        def u(z_, r_, t_):
            r4, t4 = r_[:, None, None, None], t_[:, None, None, None]
            return jnp.tanh((z_ @ mix) * jnp.cos(2 * t4) + r4 * t4) * jnp.exp(-(t4 - r4))

        value, dudt = meanflow.total_derivative(u, z, r, t, v)
        h = 1e-5
        fd = (u(z + h * v, r, t + h) - u(z - h * v, r, t - h)) / (2 * h)
        np.testing.assert_allclose(value, u(z, r, t), rtol=1e-12)
        np.testing.assert_allclose(dudt, fd, rtol=1e-7, atol=1e-9)
        assert float(jnp.abs(dudt).max()) > 0.1


def test_point_mass_average_velocity_has_zero_loss():
    """For data at one point x*, the true average velocity is u(z, r, t) = (z - x*) / t for every
    r (straight paths); its total derivative is 0, so target = v = u and the loss is 0. Any other
    tangent order or sign would leave du/dt != 0."""
    with jax.enable_x64(True):
        point = jax.random.uniform(jax.random.key(2), (1, 4, 4, 3), jnp.float64, -1, 1)
        batch = {"image": jnp.repeat(point, 8, axis=0)}

        def exact(p, z, r, t, labels=None, train=False, dropout_rng=None, augment_labels=None):
            return (z - p) / t[:, None, None, None]

        loss, metrics = meanflow.meanflow_loss(exact, point, batch, jax.random.key(4), 0, **LOSS)
        assert float(metrics["gap_mean"]) > 0.05  # most rows have r < t
        assert abs(float(loss)) < 1e-20 and float(metrics["v_mse"]) < 1e-20


@pytest.mark.parametrize("equal_fraction", [0.25, 1.0])
def test_loss_and_gradient_match_numpy_for_a_linear_network(equal_fraction):
    """u = a z + b t + c r: the loss is mean err / (err + eps)^p with err = ||u - target||^2 and
    target = v - (t - r)(a v + b); its gradient is mean 2 (u - target) . du/dtheta / (err + eps)^p
    (no gradient through the target). With r = t everywhere the target is v: flow matching."""
    params = {"a": jnp.float32(0.6), "b": jnp.float32(-0.3), "c": jnp.float32(0.5)}
    batch, rng = _batch(), jax.random.key(7)
    kw = {**LOSS, "equal_fraction": equal_fraction}

    def loss_fn(p):
        return meanflow.meanflow_loss(_linear_u, p, batch, rng, 0, **kw)

    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    x = np.asarray(batch["image"], np.float64)
    t, r, e = _replay(rng, 8, x.shape, equal_fraction=equal_fraction)
    if equal_fraction == 1.0:
        np.testing.assert_array_equal(t, r)
    t4, r4 = t[:, None, None, None], r[:, None, None, None]
    z = (1 - t4) * x + t4 * e
    v = e - x
    a, b, c = 0.6, -0.3, 0.5
    u = a * z + b * t4 + c * r4
    target = v - (t4 - r4) * (a * v + b)
    err = np.sum((u - target) ** 2, axis=(1, 2, 3))
    weight = (err + 1e-3) ** 0.75
    np.testing.assert_allclose(loss, np.mean(err / weight), rtol=1e-5)
    diff = 2 * (u - target) / weight[:, None, None, None]
    np.testing.assert_allclose(grads["a"], np.mean(np.sum(diff * z, axis=(1, 2, 3))), rtol=1e-4)
    np.testing.assert_allclose(grads["b"], np.mean(np.sum(diff, axis=(1, 2, 3)) * t), rtol=1e-4)
    np.testing.assert_allclose(grads["c"], np.mean(np.sum(diff, axis=(1, 2, 3)) * r), rtol=1e-4)


def test_adaptive_weighting_p_zero_is_plain_l2():
    err = jnp.array([0.5, 2.0])
    np.testing.assert_allclose(meanflow.adaptive_weighted(err, 0.0, 1e-3), err)
    np.testing.assert_allclose(meanflow.adaptive_weighted(err, 1.0, 0.0), 1.0, rtol=1e-6)


def test_samplers_step_from_noise_to_data():
    """One step: x = e - u(e, 0, 1); two steps through t = 0.5, with u = z (so z_r = r-ish)."""
    seen = []

    def spy(params, z, r, t, labels=None, *rest):
        seen.append((np.asarray(r), np.asarray(t)))
        return 0.5 * z

    shape, rng = (3, 4, 4, 1), jax.random.key(8)
    e = np.asarray(jax.random.normal(rng, shape), np.float64)
    one = meanflow.meanflow_sample(spy, {}, rng, None, shape, times=(1.0, 0.0))
    np.testing.assert_allclose(one, e - 0.5 * e, rtol=1e-6)
    np.testing.assert_array_equal(seen[0][0], 0.0)
    np.testing.assert_array_equal(seen[0][1], 1.0)
    seen.clear()
    two = meanflow.meanflow_sample(spy, {}, rng, None, shape, times=(1.0, 0.5, 0.0))
    mid = e - 0.5 * 0.5 * e
    np.testing.assert_allclose(two, mid - 0.5 * 0.5 * mid, rtol=1e-6)
    assert [(float(r[0]), float(t[0])) for r, t in seen] == [(0.5, 1.0), (0.0, 0.5)]


def test_make_u_feeds_t_and_the_second_label():
    seen = []

    class Spy:
        def apply(self, variables, z, c_noise, labels, train, rngs, second_noise_labels):
            seen.append((np.asarray(c_noise), np.asarray(second_noise_labels)))
            return z

    z, r, t = jnp.ones((2, 2, 2, 1)), jnp.array([0.1, 0.5]), jnp.array([0.4, 0.5])
    meanflow.make_u(Spy(), "t_minus_r", 1.0)({}, z, r, t)
    meanflow.make_u(Spy(), "r", 1000.0)({}, z, r, t)
    np.testing.assert_allclose(seen[0][0], [0.4, 0.5])
    np.testing.assert_allclose(seen[0][1], [0.3, 0.0], atol=1e-7)
    np.testing.assert_allclose(seen[1][0], [400.0, 500.0])
    np.testing.assert_allclose(seen[1][1], [100.0, 500.0])
    with pytest.raises(ValueError, match="mf_condition"):
        meanflow.make_u(Spy(), "h", 1.0)


@pytest.mark.slow
def test_unet_second_noise_label_is_concatenated_and_off_by_default():
    """The second label doubles the mapping network's input (and the class embedding's width),
    changes the output, and is refused where the network was not built for it."""
    fields = dict(
        out_channels=1,
        channels=8,
        channel_mult=(1,),
        num_blocks=1,
        attn_resolutions=(),
        num_groups=4,
        num_classes=3,
    )
    x, labels = jnp.zeros((2, 4, 4, 1)), jnp.array([0, 2])
    one, two = UNet(**fields), UNet(**fields, second_noise_label=True)
    p1 = one.init(jax.random.key(0), x, jnp.zeros((2,)), labels, train=False)["params"]
    p2 = two.init(
        jax.random.key(0), x, jnp.zeros((2,)), labels, train=False, second_noise_labels=0.0
    )["params"]
    assert p1["map_layer0"]["kernel"].shape == (8, 32)
    assert p2["map_layer0"]["kernel"].shape == (16, 32)
    assert p2["map_label"]["kernel"].shape == (3, 16)
    shapes = lambda p: {k: jax.tree.map(jnp.shape, v) for k, v in p.items() if k[:4] != "map_"}
    assert shapes(p1) == shapes(p2)
    p2 = jax.tree.map(lambda v: v + 0.1, p2)  # non-zero output conv
    xs = jax.random.normal(jax.random.key(1), (2, 4, 4, 1))
    apply = lambda h: two.apply(
        {"params": p2}, xs, jnp.array([0.5, 0.5]), labels, train=False, second_noise_labels=h
    )
    assert float(jnp.abs(apply(0.0) - apply(0.3)).max()) > 1e-4
    with pytest.raises(ValueError, match="second_noise_label"):
        one.apply({"params": p1}, xs, 0.5, labels, train=False, second_noise_labels=0.1)
    with pytest.raises(ValueError, match="second_noise_label"):
        two.apply({"params": p2}, xs, 0.5, labels, train=False)


# The CIFAR-10 recipe's pipeline (configs/cifar10_meanflow.py) with p raised so that every
# transform happens within a batch of 8.
MF_AUG = augment.Settings(p=0.6, xflip=1e8, scale=1, aniso=1, translate_frac=1)


def _labelled_u(params, z, r, t, labels=None, train=False, dropout_rng=None, augment_labels=None):
    """u = a z + b t (1 + L.w) + c r with L the augmentation labels (zeros when None): du/dt
    along (v, 0, 1) is a v + b (1 + L.w), so a JVP that saw other labels gives another target."""
    b4 = lambda s: s[:, None, None, None]
    lab = jnp.zeros((z.shape[0], 6)) if augment_labels is None else augment_labels
    return params["a"] * z + params["b"] * b4(t * (1 + lab @ params["w"])) + params["c"] * b4(r)


LABELLED = {
    "a": jnp.float32(0.6),
    "b": jnp.float32(-0.3),
    "c": jnp.float32(0.5),
    "w": jnp.array([0.4, -0.2, 0.3, 0.1, -0.5, 0.25], jnp.float32),
}


def test_the_recipe_pipeline_is_six_labels_without_yflip_and_rotation():
    """py-meanflow's AugmentPipe (train_loop.py): xflip, scale, aniso, translate_frac at
    p = 0.12 -> 1 + 1 + 2 + 2 = 6 labels, model.augment_dim = 6 (model_configs.py)."""
    c = cifar10_meanflow.get_config()
    s = augment.Settings.from_config(c.augment)
    assert s.p == 0.12
    assert s.enabled() == ("xflip", "scale", "aniso", "translate_frac")
    assert augment.label_dim(s) == 6 == c.model.augment_dim
    assert c.data.random_flip  # the dataset's RandomHorizontalFlip (data_transform.py)


def test_augment_p_zero_is_the_unaugmented_loss_bit_for_bit():
    """p = 0 (the default config): the loss and gradient equal those without the option, and
    those of the loss replayed by hand from the same keys (t, r, e, one JVP)."""
    off = augment.Settings.from_config(common.base_config().augment)
    assert off.p == 0
    batch, rng = _batch(), jax.random.key(7)

    def loss(p, settings):
        return meanflow.meanflow_loss(
            _labelled_u, p, batch, rng, 0, **LOSS, augment_settings=settings
        )[0]

    def replay(p):
        x = batch["image"]
        k_time, k_noise, k_dropout = jax.random.split(rng, 3)
        t, r = meanflow.sample_tr(k_time, 8, **TR)
        e = jax.random.normal(k_noise, x.shape)
        v = e - x
        z = (1.0 - t)[:, None, None, None] * x + t[:, None, None, None] * e
        fn = lambda z_, r_, t_: _labelled_u(p, z_, r_, t_, batch["label"], True, k_dropout)  # noqa: E731
        pred, dudt = jax.jvp(fn, (z, r, t), (v, jnp.zeros_like(r), jnp.ones_like(t)))
        target = jax.lax.stop_gradient(v - (t - r)[:, None, None, None] * dudt)
        err = jnp.sum(jnp.square(pred - target), axis=(1, 2, 3))
        return jnp.mean(err / jax.lax.stop_gradient((err + 1e-3) ** 0.75))

    value_and_grad = lambda f: jax.value_and_grad(f)(LABELLED)  # noqa: E731
    base = value_and_grad(lambda p: loss(p, None))
    for other in (value_and_grad(lambda p: loss(p, off)), value_and_grad(replay)):
        for a, b in zip(jax.tree.leaves(base), jax.tree.leaves(other), strict=True):
            np.testing.assert_array_equal(a, b)


def test_augmented_loss_uses_the_fold_in_draw_in_both_jvp_passes():
    """p > 0: x is augment.augment's image for fold_in(rng, AUGMENT_TAG), v = e - x_aug, and
    the JVP's primal and tangent both read its labels L: u = a z + b t (1 + L.w) + c r and
    target = v - (t - r)(a v + b (1 + L.w)), recomputed in float64."""
    batch, rng = _batch(), jax.random.key(7)
    key = jax.random.fold_in(rng, augment.AUGMENT_TAG)
    x_aug, lab = augment.augment(key, batch["image"], MF_AUG)
    x_aug, lab = np.asarray(x_aug, np.float64), np.asarray(lab, np.float64)  # [8, 4, 4, 3], [8, 6]
    assert lab.shape == (8, 6) and np.all(np.any(lab != 0, axis=0))  # every label column drawn
    assert np.max(np.abs(x_aug - np.asarray(batch["image"]))) > 0.1

    def loss_fn(p, settings=MF_AUG):
        return meanflow.meanflow_loss(
            _labelled_u, p, batch, rng, 0, **LOSS, augment_settings=settings
        )

    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(LABELLED)
    t, r, e = _replay(rng, 8, x_aug.shape)
    t4, r4 = t[:, None, None, None], r[:, None, None, None]
    a, b, c = 0.6, -0.3, 0.5
    gain = (1 + lab @ np.asarray(LABELLED["w"], np.float64))[:, None, None, None]  # 1 + L.w
    z, v = (1 - t4) * x_aug + t4 * e, e - x_aug
    u = a * z + b * t4 * gain + c * r4
    target = v - (t4 - r4) * (a * v + b * gain)
    err = np.sum((u - target) ** 2, axis=(1, 2, 3))
    weight = (err + 1e-3) ** 0.75
    np.testing.assert_allclose(loss, np.mean(err / weight), rtol=1e-5)
    diff = 2 * (u - target) / weight[:, None, None, None]
    np.testing.assert_allclose(grads["a"], np.mean(np.sum(diff * z, axis=(1, 2, 3))), rtol=1e-4)
    # Without the labels in the tangent pass the target would move by (t - r) b L.w: far off.
    wrong = v - (t4 - r4) * (a * v + b)
    wrong_err = np.sum((u - wrong) ** 2, axis=(1, 2, 3))
    assert abs(np.mean(wrong_err / (wrong_err + 1e-3) ** 0.75) - float(loss)) > 1e-3


def test_the_table_entry_augments_meanflow_and_checks_the_label_width():
    """methods.objective passes config.augment to MeanFlow's loss; a model.augment_dim that is
    not the pipeline's label count is one sentence naming the fix."""
    c = tiny_config(method__name="meanflow")
    for field in ("p", "xflip", "yflip", "scale", "rotate_frac", "aniso", "translate_frac"):
        c.augment[field] = getattr(MF_AUG, field)
    c.model.augment_dim = 6
    denoisers = spec.Denoisers(_labelled_u, _labelled_u, _labelled_u)
    loss_fn = methods.objective(c, denoisers)
    batch, rng = _batch(), jax.random.key(7)
    got, _ = loss_fn(LABELLED, batch, rng, 0)
    m = c.method
    kw = dict(t_mean=m.mf_t_mean, t_std=m.mf_t_std, r_mean=m.mf_r_mean, r_std=m.mf_r_std,
              equal_fraction=m.mf_equal_fraction, tr_order=m.mf_tr_order,
              norm_p=m.mf_norm_p, norm_eps=m.mf_norm_eps)  # fmt: skip

    def run(settings):
        return meanflow.meanflow_loss(
            _labelled_u, LABELLED, batch, rng, 0, **kw, augment_settings=settings
        )[0]

    want, unaugmented = run(MF_AUG), run(None)
    np.testing.assert_array_equal(got, want)
    assert float(jnp.abs(got - unaugmented)) > 1e-4
    c.model.augment_dim = 9
    with pytest.raises(ValueError, match=r"gives 6 labels .*--config\.model\.augment_dim=6\.$"):
        methods.objective(c, denoisers)
