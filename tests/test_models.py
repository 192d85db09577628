"""Tests of the networks in cm/models: shapes, NsLN, conditioning, dropout, dtypes, builder.

On the CPU nearly all the time goes into XLA compilation, so the numeric tests share one jitted,
initialized tiny net, shape checks use `jax.eval_shape` (no compilation), and random test data
comes from numpy.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cm.models import build_model, count_params, param_table
from cm.models.layers import NsLayerNorm, downsample, group_count, upsample
from cm.models.unet import UNet
from configs.common import base_config

TINY = dict(channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,))
SHAPE = (2, 8, 8, 1)
LABELS = jnp.array([0, 2])
RNG = np.random.RandomState(0)
X = jnp.asarray(RNG.standard_normal(SHAPE), jnp.float32)  # [2, 8, 8, 1]
C_NOISE = jnp.array([-100.0, 300.0])  # 250 ln(sigma) for sigma ~ 0.67 and ~ 3.3


def key(seed):
    return jax.random.key(seed, impl="rbg")  # compiles several times faster than threefry


def randomize(params, scale=0.1, seed=1):
    """Add noise to every parameter, so zero-initialized layers no longer hide the signal."""
    rng = np.random.RandomState(seed)
    return jax.tree_util.tree_map(lambda p: p + scale * rng.standard_normal(p.shape), params)


def abstract_init(model, shape, labels=None):
    """Parameter shapes and dtypes, without computing or compiling anything."""
    fn = lambda k, x: model.init(k, x, jnp.zeros(shape[0]), labels, train=False)["params"]
    return jax.eval_shape(fn, key(0), jax.ShapeDtypeStruct(shape, jnp.float32))


def jit_apply(model, train=False):
    """model.apply(variables, x, c_noise, labels, rngs=...) as one compiled function."""
    return jax.jit(functools.partial(model.apply, train=train))


@pytest.fixture(scope="module")
def net():
    """A tiny class-conditional net on 8x8x1: model, fresh params, randomized params, apply."""
    model = UNet(out_channels=1, num_classes=3, **TINY)
    init = jax.jit(lambda k: model.init(k, X, C_NOISE, LABELS, train=False)["params"])
    params = init(key(0))
    return model, params, randomize(params), jit_apply(model)


@pytest.mark.parametrize(
    "size,ch,embedding,norm,classes,dtype",
    [
        (8, 1, "positional", "group", 0, jnp.float32),
        (8, 3, "fourier", "nsln", 10, jnp.float32),
        (16, 3, "positional", "nsln", 0, jnp.bfloat16),
        (16, 1, "fourier", "group", 5, jnp.float32),
    ],
)
def test_output_shape_and_params(size, ch, embedding, norm, classes, dtype):
    model = UNet(ch, embedding=embedding, norm=norm, num_classes=classes, dtype=dtype, **TINY)
    shape = (2, size, size, ch)
    labels = jnp.array([0, classes - 1]) if classes else None
    params = abstract_init(model, shape, labels)
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    out = jax.eval_shape(
        lambda p, x: model.apply({"params": p}, x, C_NOISE, labels, train=False), params, x
    )
    assert out.shape == shape and out.dtype == jnp.float32
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params))
    paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(params)]
    assert any("scale" in p for p in paths) == (norm == "group")  # nsln replaces every norm
    assert any("map_label" in p for p in paths) == (classes > 0)
    if norm == "nsln":  # the output norm's bias covers the whole (H, W, C) feature map
        assert params["out_norm"]["bias"].shape == (size, size, TINY["channels"])


def test_extension_options_trace():
    """adaptive scale/shift, several attention heads, FIR (1, 3, 3, 1), wider noise embedding."""
    model = UNet(
        1, adaptive_scale=True, head_channels=8, resample_filter=(1, 3, 3, 1), noise_mult=2, **TINY
    )
    params = abstract_init(model, SHAPE)
    x = jax.ShapeDtypeStruct(SHAPE, jnp.float32)
    out = jax.eval_shape(
        lambda p, x: model.apply({"params": p}, x, C_NOISE, train=False), params, x
    )
    assert out.shape == SHAPE
    assert params["enc_4x4_block0"]["affine"]["kernel"].shape == (64, 2 * 32)  # scale and shift
    assert params["map_layer0"]["kernel"].shape == (32, 64)  # noise embedding 2 * channels


def test_fresh_network_outputs_exactly_zero(net):
    model, params, _, apply = net
    out = apply({"params": params}, X, C_NOISE, LABELS)
    assert out.shape == SHAPE and out.dtype == jnp.float32
    np.testing.assert_array_equal(out, 0.0)  # zero-initialized output conv


def test_nsln_invariance_bias_and_gradient():
    norm = NsLayerNorm()
    x = jnp.asarray(10.0 * RNG.standard_normal((2, 4, 4, 8)), jnp.float32)  # var >> eps
    params = norm.init(key(1), x)["params"]
    assert set(params) == {"bias"} and params["bias"].shape == (4, 4, 8)
    np.testing.assert_array_equal(params["bias"], 0.0)
    params = randomize(params)
    a, b = jnp.array([2.5, 0.3])[:, None, None, None], jnp.array([3.0, -1.0])[:, None, None, None]
    y1, y2 = norm.apply({"params": params}, x), norm.apply({"params": params}, a * x + b)
    np.testing.assert_allclose(y1, y2, atol=1e-5)
    np.testing.assert_allclose(y1.mean(axis=(1, 2, 3)), params["bias"].mean(), atol=1e-5)
    w = jnp.asarray(RNG.standard_normal(x.shape), jnp.float32)
    grad = jax.grad(lambda p: jnp.sum(w * norm.apply({"params": p}, x) ** 2))(params)
    assert float(jnp.abs(grad["bias"]).mean()) > 0.1


def test_group_count_guard():
    assert group_count(256, 32) == 32  # the paper nets: 32 groups
    assert group_count(16, 32) == 4  # at least 4 channels per group
    assert group_count(36, 32) == 9 and group_count(30, 32) == 6  # always divides channels


def test_resample_filters():
    x = jnp.asarray(RNG.standard_normal((1, 4, 4, 3)), jnp.float32)
    pooled = x.reshape(1, 2, 2, 2, 2, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(downsample(x), pooled, atol=1e-6)
    np.testing.assert_allclose(upsample(x), jnp.repeat(jnp.repeat(x, 2, 1), 2, 2), atol=1e-6)
    ones = jnp.ones((1, 8, 8, 2))  # (1, 3, 3, 1) keeps a constant away from the border
    assert upsample(ones, (1, 3, 3, 1)).shape == (1, 16, 16, 2)
    np.testing.assert_allclose(upsample(ones, (1, 3, 3, 1))[:, 2:-2, 2:-2], 1.0, atol=1e-6)
    np.testing.assert_allclose(downsample(ones, (1, 3, 3, 1))[:, 1:-1, 1:-1], 1.0, atol=1e-6)


def test_labels_and_noise_labels_change_output(net):
    model, _, params, apply = net
    v = {"params": params}
    out = apply(v, X, C_NOISE, LABELS)
    per_sample = lambda y: np.asarray(jnp.abs(y - out).mean(axis=(1, 2, 3)))
    moved = per_sample(apply(v, X, C_NOISE, jnp.array([1, 2])))
    assert moved[0] > 1e-3 and moved[1] == 0.0  # only the sample whose label changed
    moved = per_sample(apply(v, X, jnp.array([-100.0, 0.0]), LABELS))
    assert moved[0] == 0.0 and moved[1] > 1e-3  # only the sample whose noise label changed
    with pytest.raises(ValueError, match="class_labels"):
        jax.eval_shape(lambda p: model.apply({"params": p}, X, C_NOISE, None, train=False), params)
    scalar = jax.eval_shape(
        lambda p: model.apply({"params": p}, X, 1.0, LABELS, train=False), params
    )
    assert scalar.shape == SHAPE  # a scalar noise label is broadcast over the batch


def test_unconditional_net_ignores_labels(net):
    """Callers may always pass the batch labels: an unconditional net traces to the same program."""
    params = {k: v for k, v in net[2].items() if k != "map_label"}
    model = UNet(out_channels=1, **TINY)
    program = lambda labels: str(
        jax.make_jaxpr(lambda p: model.apply({"params": p}, X, C_NOISE, labels, train=False))(
            params
        )
    )
    assert program(LABELS) == program(None)


def test_dropout(net):
    _, _, params, apply = net
    v = {"params": params}
    model = UNet(out_channels=1, num_classes=3, dropout=0.5, **TINY)
    train = jit_apply(model, train=True)
    run = lambda k: train(v, X, C_NOISE, LABELS, rngs={"dropout": k})
    np.testing.assert_array_equal(run(key(10)), run(key(10)))
    assert float(jnp.abs(run(key(10)) - run(key(11))).mean()) > 1e-4
    assert float(jnp.abs(apply(v, X, C_NOISE, LABELS) - run(key(10))).mean()) > 1e-4
    # train=False needs no dropout key and is the very program of the dropout-free net.
    program = lambda m: str(
        jax.make_jaxpr(lambda p: m.apply({"params": p}, X, C_NOISE, LABELS, train=False))(params)
    )
    assert program(model) == program(net[0])


def test_fourier_features_frozen():
    """The Fourier frequencies are constants of the seed field, not parameters or init-key draws."""

    def features(model, seed):
        init = lambda k: model.init(k, X, C_NOISE, train=False, capture_intermediates=True)
        assert "map_noise" not in jax.eval_shape(init, key(seed))["params"]
        # Only the embedding is returned, so the parameter draws are compiled away.
        embed = lambda k: init(k)["intermediates"]["map_noise"]["__call__"][0]  # [B, channels]
        return jax.jit(embed)(key(seed))

    model = UNet(out_channels=1, embedding="fourier", **TINY)
    first = features(model, 0)
    assert first.shape == (2, TINY["channels"])
    np.testing.assert_array_equal(first, features(model, 1))
    other = features(model.clone(fourier_seed=1), 0)
    assert not np.allclose(other, first)


def test_bfloat16_close_to_float32(net):
    model, _, params, apply = net
    v = {"params": params}
    ref = apply(v, X, C_NOISE, LABELS)
    low = jit_apply(model.clone(dtype=jnp.bfloat16))(v, X, C_NOISE, LABELS)
    assert low.dtype == jnp.float32
    rel = float(jnp.linalg.norm(low - ref) / jnp.linalg.norm(ref))
    assert 0.0 < rel < 5e-2


def test_build_model_from_config():
    config = base_config()
    model = build_model(config)
    assert isinstance(model, UNet)
    assert (model.out_channels, model.num_classes, model.channels) == (1, 10, 32)
    assert model.channel_mult == (1, 2) and model.dtype == jnp.float32
    shape = (2, config.data.image_size, config.data.image_size, config.data.channels)
    params = abstract_init(model, shape, LABELS)
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    out = jax.eval_shape(
        lambda p, x: model.apply({"params": p}, x, C_NOISE, LABELS, train=False), params, x
    )
    assert out.shape == shape and out.dtype == jnp.float32
    config.model.use_labels = False
    assert build_model(config).num_classes == 0
    config.model.use_labels, config.data.num_classes = True, 0
    assert build_model(config).num_classes == 0
    config.model.dtype = "bfloat16"
    assert build_model(config).dtype == jnp.bfloat16


@pytest.mark.parametrize(
    "field,value,valid",
    [
        ("name", "resnet", ["unet"]),
        ("norm", "batch", ["group", "nsln"]),
        ("dtype", "float16", ["bfloat16", "float32"]),
        ("embedding", "learned", ["fourier", "positional"]),
    ],
)
def test_build_model_rejects_unknown_values(field, value, valid):
    config = base_config()
    config.model[field] = value
    with pytest.raises(ValueError, match=value) as info:
        build_model(config)
    assert all(repr(v) in str(info.value) for v in valid)


def test_param_table_and_count(net):
    params = net[1]
    n = count_params(params)
    assert n == sum(p.size for p in jax.tree_util.tree_leaves(params)) > 0
    table = param_table(params)
    lines = table.splitlines()
    assert lines[-1] == f"parameters: {n}"
    assert len({len(line) for line in lines[:-1]}) == 1  # aligned rows
    assert {line.split()[0] for line in lines[1:-1]} == set(params)
    assert sum(int(line.split()[1]) for line in lines[1:-1]) == n
    assert param_table({"params": params}) == table


def test_ddpmpp_cifar10_parameter_count():
    """The paper configuration matches EDM's DDPM++ CIFAR-10 size (PAPERS.md section 6: 55.7 M)."""
    params = abstract_init(UNet(out_channels=3), (1, 32, 32, 3))
    assert abs(count_params(params) - 55.7e6) < 0.1e6
