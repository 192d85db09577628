"""FID / IS / precision-recall against closed forms; the TF1 resize; streaming statistics;
data-parallel feature extraction; the Inception's shapes and its weight-loading errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from cm.evaluation import features, inception, metrics, reference_stats, resize


def _resize_loop(image, size):
    """TF1 legacy bilinear resize of one image [H, W, C], written as plain float64 loops."""
    h, w, _ = image.shape
    out = np.zeros((size, size, image.shape[2]))
    for i in range(size):
        y = i * h / size
        y0 = int(np.floor(y))
        y1, fy = min(y0 + 1, h - 1), y - y0
        for j in range(size):
            x = j * w / size
            x0 = int(np.floor(x))
            x1, fx = min(x0 + 1, w - 1), x - x0
            top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
            bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
            out[i, j] = top * (1 - fy) + bottom * fy
    return out


def test_resize_by_hand():
    # Upsampling 2 -> 4: source coordinates 0, 0.5, 1, 1.5; the last output repeats the edge.
    image = np.array([[0.0, 100.0], [200.0, 40.0]])[None, :, :, None]
    expected = [[0, 50, 100, 100], [100, 85, 70, 70], [200, 120, 40, 40], [200, 120, 40, 40]]
    np.testing.assert_allclose(resize.resize_bilinear_tf1(image, 4)[0, :, :, 0], expected)
    # Downsampling 5 -> 2: source coordinates 0 and 2.5.
    ramp = (100.0 * np.arange(5)[:, None] + 10.0 * np.arange(5)[None, :])[None, :, :, None]
    np.testing.assert_allclose(
        resize.resize_bilinear_tf1(ramp, 2)[0, :, :, 0], [[0, 25], [250, 275]]
    )


@pytest.mark.parametrize("shape,size", [((7, 5, 2), 11), ((32, 32, 3), 299), ((9, 9, 1), 4)])
def test_resize_equals_loop(shape, size):
    image = np.random.default_rng(0).integers(0, 256, shape).astype(np.float64)
    ours = np.asarray(resize.resize_bilinear_tf1(image[None], size))[0]
    np.testing.assert_allclose(ours, _resize_loop(image, size), atol=1e-3)


def test_resize_equals_tensorflow_legacy_kernel():
    tf = pytest.importorskip("tensorflow")
    images = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3)).astype(np.float32)
    theirs = tf.raw_ops.ResizeBilinear(
        images=images, size=[299, 299], align_corners=False, half_pixel_centers=False
    ).numpy()
    np.testing.assert_allclose(
        np.asarray(resize.resize_bilinear_tf1(images, 299)), theirs, atol=2e-4
    )


def test_preprocess_scales_and_repeats_gray():
    gray = np.array([0, 128, 255], np.uint8).reshape(1, 1, 3, 1).repeat(3, axis=1)  # [1,3,3,1]
    x = np.asarray(resize.preprocess(gray, 3))
    assert x.shape == (1, 3, 3, 3)
    np.testing.assert_allclose(x[0, 0, :, 0], [-1.0, 0.0, 127 / 128])
    np.testing.assert_array_equal(x[..., 0], x[..., 2])


def test_running_stats_equal_numpy_over_uneven_batches():
    x = np.random.default_rng(0).normal(3.0, 2.0, (103, 6))
    stats = metrics.RunningStats(6)
    for part in np.split(x, [1, 40, 41, 90]):
        stats.update(part)
    assert stats.count == 103
    np.testing.assert_allclose(stats.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.cov, np.cov(x, rowvar=False), rtol=1e-12)


def test_fid_of_identical_statistics_is_zero():
    x = np.random.default_rng(0).normal(size=(500, 16))
    mu, sigma = x.mean(0), np.cov(x, rowvar=False)
    assert abs(metrics.frechet_distance(mu, sigma, mu, sigma)) < 1e-8


def test_fid_closed_forms():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    a, b = rng.uniform(0.5, 2, 5), rng.uniform(0.5, 2, 5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected)
    # Non-commuting covariances: tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2) via symmetric roots.
    m1, m2 = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = m1 @ m1.T + np.eye(5), m2 @ m2.T + np.eye(5)
    root = scipy.linalg.sqrtm(s1).real
    w = np.linalg.eigvalsh(root @ s2 @ root)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2) - 2 * np.sum(np.sqrt(w))
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_fid_from_samples_approaches_the_analytic_distance():
    rng = np.random.default_rng(0)
    n, d = 40_000, 4
    x = rng.normal(0.0, 1.0, (n, d))
    y = rng.normal(0.5, 2.0, (n, d))
    stats = []
    for z in (x, y):
        s = metrics.RunningStats(d)
        for part in np.array_split(z, 7):
            s.update(part)
        stats.append(s)
    fid = metrics.frechet_distance(stats[0].mean, stats[0].cov, stats[1].mean, stats[1].cov)
    assert fid == pytest.approx(d * 0.25 + d * (2.0 - 1.0) ** 2, rel=0.03)


def test_fid_with_singular_covariances_adds_the_offset():
    x = np.random.default_rng(0).normal(size=(5, 32))  # rank 4 < 32
    mu, sigma = x.mean(0), np.cov(x, rowvar=False)
    fid = metrics.frechet_distance(mu, sigma, mu + 1.0, sigma, eps=1e-6)
    # With the offset the covariance terms cancel to within ~eps: the mean term remains.
    assert fid == pytest.approx(32.0, abs=1e-3)
    with_counts = metrics.frechet_distance(mu, sigma, mu + 1.0, sigma, counts=(5, 5))
    assert with_counts == pytest.approx(32.0, abs=1e-3)


def test_inception_score_closed_forms():
    uniform = np.zeros((100, 1008))
    assert metrics.inception_score(uniform) == pytest.approx((1.0, 0.0))
    classes = 5
    confident = 100.0 * np.eye(classes)[np.arange(50) % classes]  # each split holds all 5
    mean, std = metrics.inception_score(confident, splits=10)
    assert mean == pytest.approx(classes) and std == pytest.approx(0.0, abs=1e-9)


def test_precision_recall_closed_forms():
    real = np.random.default_rng(0).normal(size=(60, 8))
    assert metrics.precision_recall(real, real.copy(), k=3, chunk=16) == (1.0, 1.0)
    assert metrics.precision_recall(real, real + 100.0, k=3) == (0.0, 0.0)
    # Fake = half of the real points: all of them lie on the real manifold.
    assert metrics.precision_recall(real, real[::2], k=3)[0] == 1.0


def test_parallel_extractor_pads_keeps_order_and_compiles_once():
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    calls = []

    def apply_fn(variables, images):  # uint8 [b, H, W, C] -> {'pool': [b, 2]}
        calls.append(images.shape)
        x = images.astype(jnp.float32)
        return {"pool": jnp.stack([x.mean((1, 2, 3)), x.max((1, 2, 3))], -1) * variables}

    images = np.random.default_rng(0).integers(0, 256, (10, 3, 3, 1), dtype=np.uint8)
    extractor = features.ParallelExtractor(apply_fn, jnp.float32(2.0), mesh, batch_size=6)
    assert extractor.batch_size == 8  # rounded up to the 4 devices
    out = extractor.extract(features.array_reader(images), len(images))["pool"]
    expected = 2.0 * np.stack([images.mean((1, 2, 3)), images.max((1, 2, 3))], -1)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert calls == [(8, 3, 3, 1)]  # traced once: the last batch was padded


def test_reference_subset_does_not_depend_on_batch_size():
    x = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    a = reference_stats.accumulate(({"pool": p} for p in np.array_split(x, 7)), 50, 10)
    b = reference_stats.accumulate(({"pool": p} for p in np.array_split(x, 2)), 50, 10)
    np.testing.assert_array_equal(a["features"], b["features"])
    np.testing.assert_allclose(a["sigma"], np.cov(x.astype(np.float64), rowvar=False), rtol=1e-6)
    assert a["count"] == 50 and a["features"].shape == (10, 3)


def test_inception_shapes_and_parameter_count():
    shapes = jax.eval_shape(inception.init_variables, jax.random.key(0))
    params = shapes["params"]
    # torchvision's inception_v3 has 27,161,264 parameters; without the aux head (3,326,696)
    # and with 1008 instead of 1000 classes (+16,392): 23,850,960.
    assert sum(np.prod(x.shape) for x in jax.tree.leaves(params)) == 23_850_960
    for block in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
        assert params[block]["branch7x7dbl_5"]["conv"]["kernel"].shape[-1] == 192
    out = jax.eval_shape(
        lambda v, x: inception.FIDInceptionV3().apply(v, x),
        shapes,
        jax.ShapeDtypeStruct(
            (2, inception.MIN_INPUT_SIZE, inception.MIN_INPUT_SIZE, 3), jnp.float32
        ),
    )
    assert out["pool"].shape == (2, 2048) and out["logits"].shape == (2, 1008)


def test_missing_weights_name_file_url_and_field(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        inception.load_variables(str(tmp_path / inception.WEIGHTS_FILE))
    message = str(e.value)
    assert inception.WEIGHTS_FILE in message and inception.WEIGHTS_URL in message
    assert "eval.inception_path" in message


def _zero_state_dict():
    """pytorch-fid's keys and shapes, as zero-cost broadcast zeros."""
    shapes = jax.eval_shape(inception.init_variables, jax.random.key(0))
    names = {"kernel": "weight", "scale": "weight", "mean": "running_mean", "var": "running_var"}
    state = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]:
        *modules, name = [p.key for p in path[1:]]
        shape = leaf.shape
        if name == "kernel":  # Flax HWIO / [in, out] -> torch OIHW / [out, in]
            shape = shape[::-1] if len(shape) == 2 else (shape[3], shape[2], shape[0], shape[1])
        state[".".join([*modules, names.get(name, name)])] = np.broadcast_to(np.float32(0), shape)
    return state


def test_wrong_weights_are_refused():
    state = _zero_state_dict()
    assert len(inception.variables_from_state_dict(state)["batch_stats"]) > 0
    # The public-port bug: branch7x7dbl_5 with c7 = 160 outputs instead of 192.
    buggy = {**state, "Mixed_6c.branch7x7dbl_5.conv.weight": np.zeros((160, 160, 1, 7))}
    with pytest.raises(ValueError, match=r"'Mixed_6c.branch7x7dbl_5.conv.weight' has shape"):
        inception.variables_from_state_dict(buggy)
    del state["fc.bias"]
    with pytest.raises(ValueError, match="no 'fc.bias': it is not the FID Inception weights"):
        inception.variables_from_state_dict(state)
