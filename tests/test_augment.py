"""EDM's augmentation (cm/methods/augment.py): identity when off, probabilities, label layout, each
transform against hand-computed images, the network's augmentation input, data parallelism."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_config
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cm import experiment, methods, train
from cm.data import batches, sources
from cm.methods import augment
from cm.models.unet import UNet
from cm.workdir import run_record
from configs import cifar10_edm, common

EDM_CIFAR = augment.Settings.from_config(cifar10_edm.get_config().augment)


def _apply(image, s, **params):
    """One [H, W] image through augment.apply with hand-chosen parameters (batch of one):
    a number per transform, or a pair for aniso (w, r) and translate_frac (wx, wy)."""
    x = jnp.asarray(image, jnp.float32)[None, :, :, None]
    p = {k: jnp.asarray(v, jnp.float32).reshape(-1, 1) for k, v in params.items()}
    p = {k: v if v.shape[0] == 2 else v[:, 0] for k, v in p.items()}
    return np.asarray(augment.apply(x, p, s))[0, :, :, 0]


def test_p_zero_is_the_identity():
    s = augment.Settings.from_config(common.base_config().augment)
    assert s.p == 0 and s.enabled() == () and augment.label_dim(s) == 0
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
    y, labels = augment.augment(jax.random.key(1), x, s)
    assert y is x and labels.shape == (4, 0)


def test_edm_cifar_settings_and_label_width():
    """EDM's train.py: p = 0.12, xflip 1e8, the other five multipliers 1, default strengths."""
    assert (EDM_CIFAR.p, EDM_CIFAR.xflip) == (0.12, 1e8)
    assert EDM_CIFAR.enabled() == augment.TRANSFORMS
    assert augment.label_dim(EDM_CIFAR) == 9 == cifar10_edm.get_config().model.augment_dim
    assert (EDM_CIFAR.scale_std, EDM_CIFAR.aniso_std, EDM_CIFAR.translate_frac_std) == (
        0.2,
        0.2,
        0.125,
    )


def test_probabilities_multiply_p():
    """Each transform is drawn with probability min(multiplier * p, 1); a drawn flip flips with
    probability 1/2 (x: 1e8 * 0.12 > 1, so always drawn: 0.5; y: 0.12 / 2 = 0.06); the axis of
    the anisotropic scaling is rotated with probability aniso_rotate_prob = 0.5 regardless."""
    n = 200_000
    p = augment.draw(jax.random.key(3), n, EDM_CIFAR)
    frac = lambda a: float(jnp.mean(a != 0))  # noqa: E731
    tol = 5e-3  # about 7 binomial standard deviations at 0.12 and n = 200k
    assert abs(frac(p["xflip"]) - 0.5) < tol and abs(frac(p["yflip"]) - 0.06) < tol
    for name in ("scale", "rotate_frac"):
        assert abs(frac(p[name]) - 0.12) < tol
    assert abs(frac(p["aniso"][0]) - 0.12) < tol and abs(frac(p["aniso"][1]) - 0.5) < tol
    wx, wy = p["translate_frac"]
    assert abs(frac(wx) - 0.12) < tol and bool(jnp.all((wx != 0) == (wy != 0)))
    drawn = p["rotate_frac"][p["rotate_frac"] != 0]
    assert float(jnp.max(jnp.abs(drawn))) <= math.pi and float(jnp.std(drawn)) > 1.5  # uniform


def test_label_layout_is_edms():
    """EDM's order: xflip, yflip, scale w, rotation (cos a - 1, sin a), aniso (w cos r, w sin r),
    translation (wx, wy)."""
    params = {
        "xflip": jnp.array([1.0]),
        "yflip": jnp.array([0.0]),
        "scale": jnp.array([0.5]),
        "rotate_frac": jnp.array([math.pi / 3]),
        "aniso": jnp.array([[1.5], [math.pi / 6]]),
        "translate_frac": jnp.array([[0.25], [-0.5]]),
    }
    labels = augment.labels(params, EDM_CIFAR)
    expected = [1, 0, 0.5, -0.5, math.sqrt(3) / 2, 1.5 * math.sqrt(3) / 2, 0.75, 0.25, -0.5]
    np.testing.assert_allclose(labels[0], expected, rtol=1e-6, atol=1e-7)
    # Disabled transforms leave no columns: y-flip and translation only -> [yflip, wx, wy].
    s = augment.Settings(p=1, yflip=1, translate_frac=1)
    sub = {k: params[k] for k in ("yflip", "translate_frac")}
    np.testing.assert_allclose(augment.labels(sub, s)[0], [0, 0.25, -0.5])


def test_flips_by_hand():
    image = np.arange(6.0).reshape(2, 3)  # [[0, 1, 2], [3, 4, 5]]
    s = augment.Settings(p=1, xflip=1, yflip=1)
    np.testing.assert_array_equal(_apply(image, s, xflip=1, yflip=0), [[2, 1, 0], [5, 4, 3]])
    np.testing.assert_array_equal(_apply(image, s, xflip=0, yflip=1), [[3, 4, 5], [0, 1, 2]])
    np.testing.assert_array_equal(_apply(image, s, xflip=0, yflip=0), image)


def _reflect(k, n):
    """Index k of the reflect-padded axis of length n (no edge repeat): -1 -> 1, n -> n - 2."""
    k = abs(k)
    return 2 * (n - 1) - k if k > n - 1 else k


def test_integer_translation_by_hand():
    """translate_frac (wx, wy) = (1, -2) on 8x8 with std 0.125 moves the image by
    (wx * 8 * 0.125, wy * 8 * 0.125) = (1, -2) pixels: output (x, y) samples the input at
    (x - 1, y + 2), an upsampled grid point, where the sym6 up/down pair is the identity (its
    even shifts are orthonormal); pixels coming from outside are the reflect padding's."""
    image = np.asarray(jax.random.uniform(jax.random.key(4), (8, 8)))
    s = augment.Settings(p=1, translate_frac=1)
    out = _apply(image, s, translate_frac=[1.0, -2.0])
    expected = [[image[_reflect(i + 2, 8), _reflect(j - 1, 8)] for j in range(8)] for i in range(8)]
    np.testing.assert_allclose(out, expected, atol=1e-5)
    np.testing.assert_allclose(_apply(image, s, translate_frac=[0.0, 0.0]), image, atol=1e-5)


def test_quarter_rotation_by_hand():
    """rotate_frac angle pi/2: G_inv = rotation(pi/2), so the output offset (px, py) from the
    centre samples the input at (-py, px): output row i, column j reads input row j (and column
    7 - i). An image constant along each row, image[i, j] = f(i), becomes out[i, j] = f(j)
    (= np.rot90(image)); the sample points are upsampled grid points and the varying axis keeps
    its orientation, so this is exact. Labels: cos - 1 = -1, sin = 1."""
    f = np.array([3, -1, 4, 1, -5, 9, 2, -6]) / 10
    image = np.repeat(f[:, None], 8, axis=1)
    s = augment.Settings(p=1, rotate_frac=1)
    out = _apply(image, s, rotate_frac=math.pi / 2)
    np.testing.assert_allclose(out, np.repeat(f[None, :], 8, axis=0), atol=1e-5)
    np.testing.assert_allclose(out, np.rot90(image), atol=1e-5)
    p = {"rotate_frac": jnp.array([math.pi / 2])}
    np.testing.assert_allclose(augment.labels(p, s)[0], [-1, 1], atol=1e-7)


def test_inverse_matrices_by_hand():
    """G_inv maps an output offset to the input offset it samples: the inverse transform."""
    s = augment.Settings(p=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)
    one = lambda name, v: augment.inverse_matrix({name: jnp.asarray(v)}, s, 8, 16)[0]  # noqa: E731
    # Isotropic scale 2^(w * 0.2) with w = 5: scale 2, sampling at offset / 2.
    np.testing.assert_allclose(one("scale", [5.0]), np.diag([0.5, 0.5, 1]), atol=1e-7)
    # Rotation by a: [[cos a, -sin a], [sin a, cos a]].
    c, sn = math.cos(0.3), math.sin(0.3)
    np.testing.assert_allclose(
        one("rotate_frac", [0.3]), [[c, -sn, 0], [sn, c, 0], [0, 0, 1]], atol=1e-6
    )
    # Anisotropic w = 5 along r = 0: stretch x by 2, squash y by 2 -> sample (x / 2, 2 y).
    np.testing.assert_allclose(one("aniso", [[5.0], [0.0]]), np.diag([0.5, 2, 1]), atol=1e-6)
    # ... along r = pi/2: the stretch is along y -> sample (2 x, y / 2).
    rotated = one("aniso", [[5.0], [math.pi / 2]])
    np.testing.assert_allclose(rotated, np.diag([2, 0.5, 1]), atol=1e-6)
    # Translation (wx, wy) = (1, 2) on H x W = 8 x 16: shift (16, 16) * 0.125 = (2, 2).
    expected = [[1, 0, -2], [0, 1, -2], [0, 0, 1]]
    np.testing.assert_allclose(one("translate_frac", [[1.0], [2.0]]), expected, atol=1e-7)


@pytest.mark.parametrize(
    "params",
    [
        {"scale": [1.0]},  # zoom in by 2^0.2
        {"scale": [-1.5]},  # zoom out by 2^0.3
        {"rotate_frac": [0.7]},
        {"aniso": [[1.2], [0.4]]},
        {"translate_frac": [[0.3], [-0.45]]},  # (1.2, -1.8) pixels
        {
            "scale": [0.5],
            "rotate_frac": [-2.0],
            "aniso": [[-0.8], [1.1]],
            "translate_frac": [[0.2], [0.1]],
        },
    ],
)
def test_geometric_transforms_of_an_affine_image(params):
    """Scale, rotation, anisotropic scale and translation move an affine image exactly.

    F(x, y) = a x + b y + c0 on 32 x 32. Along one axis, sym6 upsampling reproduces linear data
    (its even and odd taps have equal sums 1/sqrt(2) and equal first moments): upsampled pixel
    n holds F at original position (n + 5 - c)/2 - pad, c = sum_t t h[t] / sum_t h[t] (about
    5.098), times 1/sqrt(2); bilinear sampling of linear data is exact; downsampling gives
    sqrt(2) times the sample at upsampled position 2k + 1 + c. Following augment.pixel_map, the
    output pixel p therefore holds F(e + G_inv (p - e)), the transform about
    e = (size - 1)/2 + (5 - c)/2 (0.05 px off the centre), wherever the reflect padding's kinks
    are out of the filters' reach (the central 8 x 8 pixels here)."""
    s = augment.Settings(p=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)
    params = {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}
    a, b, c0 = 0.03, -0.05, 0.1
    cols, rows = np.meshgrid(np.arange(32.0), np.arange(32.0))
    image = a * cols + b * rows + c0
    out = np.asarray(augment.apply(jnp.asarray(image)[None, :, :, None], params, s))[0, :, :, 0]
    h = np.asarray(augment.SYM6, np.float64)
    centroid = np.dot(np.arange(len(h)), h) / h.sum()
    e = 31 / 2 + (5 - centroid) / 2
    g = np.asarray(augment.inverse_matrix(params, s, 32, 32)[0], np.float64)
    x_in = e + g[0, 0] * (cols - e) + g[0, 1] * (rows - e) + g[0, 2]
    y_in = e + g[1, 0] * (cols - e) + g[1, 1] * (rows - e) + g[1, 2]
    expected = a * x_in + b * y_in + c0
    centre = np.s_[12:20, 12:20]
    np.testing.assert_allclose(out[centre], expected[centre], atol=2e-5)
    assert np.abs(out - image).max() > 0.05  # the transform did move the image


@pytest.mark.slow  # compiles the augmentation for 1 and 4 devices
def test_augmentation_does_not_depend_on_the_sharding():
    """Drawn on the global batch: a batch split over 4 devices is augmented as on one."""
    x = jax.random.normal(jax.random.key(5), (8, 8, 8, 3))
    s = augment.Settings(p=1, xflip=1, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)
    fn = jax.jit(lambda k, x: augment.augment(k, x, s))
    y, labels = fn(jax.random.key(6), x)
    sharded = jax.device_put(x, NamedSharding(experiment.make_mesh(), P("data")))
    y4, labels4 = fn(jax.random.key(6), sharded)
    assert len(y4.sharding.device_set) == 4 and labels.shape == (8, 9)
    np.testing.assert_allclose(y4, y, atol=2e-5)  # convolutions summed per shard
    np.testing.assert_array_equal(labels4, labels)
    assert len({tuple(np.round(np.asarray(row), 5)) for row in labels}) == 8  # per sample


@pytest.mark.slow  # two network compilations: about 15 s on 2 cores
def test_network_reads_augment_labels_into_the_noise_embedding():
    """A bias-free layer from the labels into the noise embedding: Xavier for DDPM++ (song
    init), so labels change the output; zero for ADM, as EDM initializes it. None = zeros."""
    x = jax.random.normal(jax.random.key(7), (2, 8, 8, 1))
    labels = jax.random.normal(jax.random.key(8), (2, 9))
    for init in ("song", "adm"):
        net = UNet(1, channels=8, channel_mult=(1,), num_blocks=0, attn_resolutions=(),
                   num_groups=4, augment_dim=9, init_scheme=init)  # fmt: skip

        @jax.jit
        def init_and_run(key, net=net):
            params = net.init(key, x, jnp.zeros(2), train=False)["params"]
            run = lambda *a: net.apply({"params": params}, x, jnp.ones(2), None, *a, train=False)  # noqa: E731
            return params, run(), run(jnp.zeros((2, 9))), run(labels)

        params, without, zeros, with_labels = init_and_run(jax.random.key(9))
        kernel = params["map_augment"]["kernel"]
        assert set(params["map_augment"]) == {"kernel"} and kernel.shape == (9, 8)
        assert bool(jnp.any(kernel != 0)) == (init == "song")
        np.testing.assert_array_equal(without, zeros)
        if init == "song":
            assert float(jnp.max(jnp.abs(with_labels - without))) > 0


def test_misconfigured_augmentation_is_one_sentence():
    with pytest.raises(ValueError, match=r"model\.augment_dim=9"):
        augment.check_model(EDM_CIFAR, 0, "edm", {"edm"})
    with pytest.raises(ValueError, match=r"augment\.p=0"):
        augment.check_model(EDM_CIFAR, 9, "ict", {"edm"})
    with pytest.raises(ValueError, match=r"augment\.scale"):
        augment.Settings(p=0.1, scale=-1)
    augment.check_model(augment.Settings(), 9, "ict", {"edm"})  # off: zero labels are fine


def test_the_method_table_names_the_augmenting_methods():
    """EDM's, TrigFlow diffusion's and MeanFlow's objectives apply the augmentation (MeanFlow's
    CIFAR-10 recipe trains with it); every other entry refuses augment.p > 0 through the table
    (cm/methods/table.py),
    naming the fix."""
    augmenting = {n for n, m in methods.METHODS.items() if m.augments}
    assert augmenting == {"edm", "meanflow", "trigflow"}
    c = tiny_config()
    c.augment.p = 0.12
    c.model.augment_dim = augment.label_dim(augment.Settings.from_config(c.augment))
    for name in ("ict", "ect", "cd", "sct", "scd"):
        c.method.name = name
        with pytest.raises(ValueError, match=r"augment\.p=0"):
            methods.objective(c, None)


def test_runs_saved_before_the_new_fields_still_resume():
    """A config.json from before model.augment_dim / training.ema_halflife_images existed
    counts as 0 for both; another value is refused."""
    current = tiny_config().to_dict()
    saved = tiny_config().to_dict()
    del saved["model"]["augment_dim"], saved["training"]["ema_halflife_images"]
    run_record.check_compatible(saved, current, "w")
    current["model"]["augment_dim"] = 9
    with pytest.raises(ValueError, match="model"):
        run_record.check_compatible(saved, current, "w")


def test_a_workdir_resumes_only_its_own_method():
    """method.name decides the train state's auxiliary parameters and extra state (sCT's w(t),
    CD's teacher): resuming a workdir under another method is refused with the fix."""
    saved = tiny_config().to_dict()
    current = tiny_config().to_dict()
    current["method"]["name"] = "sct"
    with pytest.raises(ValueError, match=r"method\.name: ict there, sct now.*--workdir"):
        run_record.check_compatible(saved, current, "w")


def _edm_tiny():
    c = tiny_config()
    c.method.name = "edm"
    c.method.p_mean, c.method.p_std = -1.2, 1.2
    c.augment = cifar10_edm.get_config().augment
    c.augment.p = 0.5  # draw often, so that every transform happens in 8 samples
    c.model.augment_dim = 9
    c.model.dropout = 0.2
    c.training.ema_halflife_images = 40  # EDM's EMA with ramp-up, updated in the same step
    return c


def _edm_steps(config, devices, steps):
    exp = experiment.build(config, devices)
    step_fn = train.make_train_step(exp, tuple(config.training.ema_rates), config.seed)
    state = experiment.init_state(exp, config)
    source = sources.load_source(config.data)
    losses = []
    for k in range(steps):
        local = batches.batch_at(source, k, config.training.batch_size, config.seed, False)
        state, metrics = step_fn(state, train.global_batch(local, exp))
        losses.append(float(metrics["loss"]))
    assert step_fn._cache_size() == 1 and len(state.ema) == 2
    return jax.device_get((state.params, state.ema)), losses


@pytest.mark.slow  # two compilations of the EDM step: about 40 s on 2 idle cores
def test_four_devices_equal_one_device_with_augmentation():
    assert jax.device_count() == 4
    c = _edm_tiny()
    one, loss_one = _edm_steps(c, jax.devices()[:1], 3)
    four, loss_four = _edm_steps(c, jax.devices(), 3)
    np.testing.assert_allclose(loss_one, loss_four, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(four), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
