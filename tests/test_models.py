"""Tests of the networks in cm/models on tiny nets: layers, shapes, NsLN, conditioning, dropout,
initialization, dtypes, builder. The paper-sized networks are in test_networks.py.

On the CPU nearly all the time goes into XLA compilation, and compiling random initializers is
the slowest part of it. So numeric tests use random parameters made with numpy in the shapes
`jax.eval_shape` reports, share one compiled apply per network (module fixtures), shape checks
use `jax.eval_shape` (no compilation), and only one test compiles a real initialization.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cm.models import build_model, count_params, param_table
from cm.models.adm import adm_unet
from cm.models.embeddings import NoiseEmbedding
from cm.models.inits import INITS, SONG_ATTN_GAIN, SONG_ZERO_GAIN
from cm.models.norms import NsLayerNorm, group_count, make_norm
from cm.models.resample import downsample, fir, prefilter_for_strided_conv, upsample
from cm.models.unet import UNet
from configs.common import base_config

TINY = dict(channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,))
# The NCSN++ options on the tiny net: Fourier features, residual input branch, FIR (1, 3, 3, 1).
NCSNPP = dict(
    embedding="fourier", noise_mult=2, encoder_type="residual", resample_filter=(1, 3, 3, 1)
)
SHAPE = (2, 8, 8, 1)
LABELS = jnp.array([0, 2])
RNG = np.random.RandomState(0)
X = jnp.asarray(RNG.standard_normal(SHAPE), jnp.float32)  # [2, 8, 8, 1]
C_NOISE = jnp.array([-100.0, 300.0])  # 250 ln(sigma) for sigma ~ 0.67 and ~ 3.3
C_NOISE_FOURIER = jnp.array([-0.1, 0.3])  # 0.25 ln(sigma) for sigma ~ 0.67 and ~ 3.3


def key(seed):
    return jax.random.key(seed, impl="rbg")  # compiles several times faster than threefry


def abstract_init(model, shape, labels=None):
    """Parameter shapes and dtypes, without computing or compiling anything."""
    fn = lambda k, x: model.init(k, x, jnp.zeros(shape[0]), labels, train=False)["params"]
    return jax.eval_shape(fn, key(0), jax.ShapeDtypeStruct(shape, jnp.float32))


def random_params(model, shape=SHAPE, labels=LABELS, scale=0.1, seed=1):
    """Parameters of the right shapes filled from numpy (nothing compiled): every layer,
    including the zero-initialized ones, passes signal."""
    rng = np.random.RandomState(seed)
    shapes = abstract_init(model, shape, labels)
    return jax.tree_util.tree_map(
        lambda s: jnp.asarray(scale * rng.standard_normal(s.shape), jnp.float32), shapes
    )


def jit_apply(model, train=False):
    """model.apply(variables, x, c_noise, labels, rngs=...) as one compiled function."""
    return jax.jit(functools.partial(model.apply, train=train))


def relative_change(y, ref):
    """Per-sample mean |y - ref| relative to the mean |ref|: [B]."""
    return jnp.abs(y - ref).mean(axis=(1, 2, 3)) / jnp.abs(ref).mean(axis=(1, 2, 3))


def count_primitive(jaxpr, name: str) -> int:
    """Occurrences of primitive `name` in a jaxpr, counting every call of a nested jaxpr."""
    n = 0
    for eqn in jaxpr.eqns:
        n += eqn.primitive.name == name
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple | list) else [value]:
                inner = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
                if hasattr(inner, "eqns"):
                    n += count_primitive(inner, name)
    return n


def leaf_paths(params):
    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]


@pytest.fixture(scope="module")
def song():
    """Tiny class-conditional NCSN++-style net: model, random params, compiled inference apply."""
    model = UNet(out_channels=1, num_classes=3, **NCSNPP, **TINY)
    return model, random_params(model), jit_apply(model)


@pytest.fixture(scope="module")
def adm():
    """Tiny class-conditional ADM with dropout: model, random params, compiled training apply."""
    model = adm_unet(out_channels=1, num_classes=3, dropout=0.5, **TINY)
    return model, random_params(model), jit_apply(model, train=True)


# ----------------------------------------------------------------------------------------------
# Layers.


def test_fir_resampling_by_hand():
    """(1, 3, 3, 1) on a separable 4x4 input outer(u, u), u = (1, 2, 3, 4), worked by hand.

    1D down: pad one zero each side, [0,1,2,3,4,0] * (1,3,3,1)/8 at even offsets:
      (0 + 3 + 6 + 3)/8 = 1.5,  (2 + 9 + 12 + 0)/8 = 2.875.
    1D up (2D gain 4 = 2 per axis, taps (1,3,3,1)/4): zero-stuff to [1,0,2,0,3,0,4], pad two each
    side, correlate: (3, 5, 7, 9, 11, 13, 15, 12)/4.
    The 2D results are the outer products of the 1D ones (the kernel is separable).
    """
    u = np.array([1.0, 2.0, 3.0, 4.0])
    x = jnp.asarray(np.outer(u, u)[None, :, :, None], jnp.float32)  # [1, 4, 4, 1]
    down1 = np.array([1.5, 2.875])
    up1 = np.array([3, 5, 7, 9, 11, 13, 15, 12]) / 4.0
    np.testing.assert_allclose(downsample(x, (1, 3, 3, 1))[0, :, :, 0], np.outer(down1, down1))
    np.testing.assert_allclose(upsample(x, (1, 3, 3, 1))[0, :, :, 0], np.outer(up1, up1))
    # (1, 1): 2x2 average pooling and nearest-neighbour upsampling.
    pooled = np.array([[1.5 * 1.5, 1.5 * 3.5], [3.5 * 1.5, 3.5 * 3.5]])
    np.testing.assert_allclose(downsample(x)[0, :, :, 0], pooled)
    np.testing.assert_allclose(
        upsample(x)[0, :, :, 0], np.repeat(np.repeat(x[0, :, :, 0], 2, 0), 2, 1)
    )
    with pytest.raises(ValueError, match="symmetric"):
        downsample(x, (1, 2))


def test_prefiltered_strided_conv_is_edm_fused_down():
    """NCSN++'s input branch: FIR (padded f + w) then a stride-2 VALID conv equals EDM's order,
    a 'SAME'-padded conv with extra padding f, then FIR downsampling without padding."""
    x = jnp.asarray(RNG.standard_normal((1, 8, 8, 2)), jnp.float32)
    w = jnp.asarray(RNG.standard_normal((3, 3, 2, 3)), jnp.float32)  # [k, k, in, out]
    conv = lambda x, stride, pad: jax.lax.conv_general_dilated(
        x, w, (stride, stride), ((pad, pad), (pad, pad)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    ours = conv(prefilter_for_strided_conv(x, (1, 3, 3, 1), 3), 2, 0)
    edm = fir(conv(x, 1, 2), (1, 3, 3, 1), padding=0, stride=2)
    assert ours.shape == (1, 4, 4, 3)
    np.testing.assert_allclose(ours, edm, rtol=1e-5, atol=1e-5)


def test_nsln_invariance_bias_and_gradient():
    norm = NsLayerNorm()
    x = jnp.asarray(10.0 * RNG.standard_normal((2, 4, 4, 8)), jnp.float32)  # var >> eps
    params = norm.init(key(1), x)["params"]
    assert set(params) == {"bias"} and params["bias"].shape == (4, 4, 8)
    np.testing.assert_array_equal(params["bias"], 0.0)
    params = {"bias": jnp.asarray(0.1 * RNG.standard_normal((4, 4, 8)), jnp.float32)}
    a, b = jnp.array([2.5, 0.3])[:, None, None, None], jnp.array([3.0, -1.0])[:, None, None, None]
    y1, y2 = norm.apply({"params": params}, x), norm.apply({"params": params}, a * x + b)
    np.testing.assert_allclose(y1, y2, atol=1e-5)
    np.testing.assert_allclose(y1.mean(axis=(1, 2, 3)), params["bias"].mean(), atol=1e-5)
    w = jnp.asarray(RNG.standard_normal(x.shape), jnp.float32)
    grad = jax.grad(lambda p: jnp.sum(w * norm.apply({"params": p}, x) ** 2))(params)
    assert float(jnp.abs(grad["bias"]).mean()) > 0.1


def test_nsln_eps_is_the_papers_in_every_network():
    """NsLN divides by sqrt(var + 1e-5) (docs/methods.md section 3), also inside SongUNet
    (eps 1e-6)."""
    x = jnp.asarray([1e-3, -1e-3] * 8, jnp.float32).reshape(1, 2, 2, 4)  # var 1e-6 ~ eps
    norm = make_norm("nsln", 4, 1, 1e-6, jnp.float32, "n")
    y = norm.apply(norm.init(key(0), x), x)
    np.testing.assert_allclose(y, x / np.sqrt(1e-6 + 1e-5), rtol=1e-5)


def _group_norm_float64(x, scale, bias, groups, eps):
    """GroupNorm in float64 numpy, PyTorch's definition: biased two-pass variance + eps."""
    b, h, w, c = x.shape
    xg = np.asarray(x, np.float64).reshape(b, h * w, groups, c // groups)
    mean = xg.mean(axis=(1, 3), keepdims=True)
    var = np.square(xg - mean).mean(axis=(1, 3), keepdims=True)
    y = ((xg - mean) / np.sqrt(var + eps)).reshape(x.shape)
    return y * np.asarray(scale, np.float64) + np.asarray(bias, np.float64)


def test_group_norm_is_the_two_pass_formula_when_the_mean_dwarfs_the_spread():
    """GroupNorm against float64 at |mean| = 50 >> std = 3, where flax's one-pass
    E[x^2] - E[x]^2 would lose digits (x^2 ~ 2500 has float32 ulp 2.4e-4, 3e-5 of var 9)."""
    x = jnp.asarray(3.0 * RNG.standard_normal((2, 4, 4, 16)) + 50.0, jnp.float32)
    norm = make_norm("group", 16, 4, 1e-6, jnp.float32, "n")
    params = norm.init(key(0), x)["params"]
    params = {k: v + jnp.asarray(RNG.standard_normal(16), jnp.float32) for k, v in params.items()}
    exact = _group_norm_float64(x, params["scale"], params["bias"], 4, 1e-6)
    # float32's x has ulp 3.8e-6 near 50: about 1.3e-6 of std 3 per value.
    np.testing.assert_allclose(norm.apply({"params": params}, x), exact, atol=2e-5)


def test_group_count_guard():
    assert group_count(256, 32) == 32  # the paper nets: 32 groups
    assert group_count(16, 32) == 4  # at least 4 channels per group
    assert group_count(36, 32) == 9 and group_count(30, 32) == 6  # always divides channels


def test_noise_embeddings():
    """Positional endpoint (DDPM++) vs not (ADM); Fourier frequencies frozen by the seed field."""
    x = jnp.array([0.0, 1.0])
    emb = lambda **kw: NoiseEmbedding(num_channels=8, **kw).apply({}, x)  # [2, 8]
    with_end, without = emb(kind="positional"), emb(kind="positional", positional_endpoint=False)
    np.testing.assert_allclose(with_end[1, :4], np.sin(10000.0 ** -(np.arange(4) / 3)), rtol=1e-6)
    np.testing.assert_allclose(without[1, :4], np.sin(10000.0 ** -(np.arange(4) / 4)), rtol=1e-6)
    np.testing.assert_allclose(with_end[0], [0, 0, 0, 0, 1, 1, 1, 1])  # (sin, cos)
    adm_order = emb(kind="positional", positional_endpoint=False, positional_cos_first=True)
    np.testing.assert_array_equal(adm_order, jnp.roll(without, 4, axis=1))  # (cos, sin)
    first = emb(kind="fourier", fourier_scale=0.02)
    np.testing.assert_array_equal(first, emb(kind="fourier", fourier_scale=0.02))
    assert not np.allclose(first, emb(kind="fourier", fourier_scale=0.02, fourier_seed=1))
    freqs = np.random.RandomState(0).randn(4) * 0.02
    np.testing.assert_allclose(first[1, :4], np.sin(2 * np.pi * freqs), rtol=1e-5)
    model = UNet(out_channels=1, embedding="fourier", **TINY)
    assert "map_noise" not in abstract_init(model, SHAPE)  # never a parameter


@pytest.mark.parametrize("name", ["song", "adm"])
def test_init_schemes(name):
    """Each role's initializer has the reference scale (EDM networks.py)."""
    s, fan_in, fan_out = INITS[name], 256, 512
    sample = lambda init: np.asarray(init(key(3), (fan_in, fan_out), jnp.float32))
    xavier = math.sqrt(2.0 / (fan_in + fan_out))  # std of Xavier-uniform
    torch_default = 1.0 / math.sqrt(3 * fan_in)  # std of U(+-1/sqrt(fan_in))
    expected = {
        "song": {
            "default": xavier,
            "zero": xavier * SONG_ZERO_GAIN,
            "attn": xavier * SONG_ATTN_GAIN,
        },
        "adm": {"default": torch_default, "zero": 0.0, "attn": torch_default},
    }[name]
    for role, std in expected.items():
        np.testing.assert_allclose(sample(s.kernel(role)).std(), std, rtol=0.02, atol=1e-30)
    bias = np.asarray(s.bias("default", fan_in)(key(4), (4096,), jnp.float32))
    np.testing.assert_allclose(bias.std(), torch_default if name == "adm" else 0.0, rtol=0.05)
    assert np.abs(bias).max() <= 1 / math.sqrt(fan_in)
    np.testing.assert_array_equal(s.bias("zero", fan_in)(key(4), (8,), jnp.float32), 0.0)
    label = sample(s.label_kernel).std()
    np.testing.assert_allclose(label, 1.0 if name == "adm" else xavier, rtol=0.02)
    assert s.label_bias == (name == "song")


def test_fresh_adm_network():
    """A freshly initialized ADM outputs exactly zero, and each of its equal-width blocks is the
    identity: the layers that close a residual branch are exactly zero (EDM init_zero)."""
    model = adm_unet(out_channels=1, num_classes=3, **TINY)
    paths = leaf_paths(abstract_init(model, SHAPE, LABELS))
    closing = [p for p in paths if "conv1" in p or "proj" in p or "out_conv" in p]
    assert len(closing) == 2 * (10 + 4 + 1)  # 10 blocks, 4 attentions, the output conv
    checked = closing + ["['enc_8x8_block0']['conv0']['bias']", "['map_label']['kernel']"]

    def init(k):  # only the checked leaves are returned: the other draws are compiled away
        params = model.init(k, X, C_NOISE, LABELS, train=False)["params"]
        leaves = jax.tree_util.tree_leaves(params)
        return {p: v for p, v in zip(paths, leaves, strict=True) if p in checked}

    values = jax.jit(init)(key(0))
    assert not any(np.any(values[p]) for p in closing)
    conv0_bias = values["['enc_8x8_block0']['conv0']['bias']"]  # fan-in 16 * 3 * 3: bound 1/12
    assert 0 < np.abs(conv0_bias).max() <= 1 / 12
    assert 0.5 < float(values["['map_label']['kernel']"].std()) < 2.0  # N(0, 1) class table
    assert not [p for p in paths if "map_label" in p and "bias" in p]


# ----------------------------------------------------------------------------------------------
# Tiny networks: shapes and parameters (eval_shape only).


@pytest.mark.parametrize(
    "build,size,ch,embedding,norm,classes,dtype",
    [
        (UNet, 8, 1, "positional", "group", 0, jnp.float32),
        (UNet, 8, 3, "fourier", "nsln", 10, jnp.float32),
        (UNet, 16, 3, "positional", "nsln", 0, jnp.bfloat16),
        (adm_unet, 16, 1, "fourier", "group", 5, jnp.float32),
        (adm_unet, 8, 4, "positional", "nsln", 7, jnp.bfloat16),
    ],
)
def test_output_shape_and_params(build, size, ch, embedding, norm, classes, dtype):
    model = build(
        out_channels=ch, embedding=embedding, norm=norm, num_classes=classes, dtype=dtype, **TINY
    )
    shape = (2, size, size, ch)
    labels = jnp.array([0, classes - 1]) if classes else None
    params = abstract_init(model, shape, labels)
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    out = jax.eval_shape(
        lambda p, x: model.apply({"params": p}, x, C_NOISE, labels, train=False), params, x
    )
    assert out.shape == shape and out.dtype == jnp.float32
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params))
    paths = leaf_paths(params)
    assert any("scale" in p for p in paths) == (norm == "group")  # nsln replaces every norm
    assert any("map_label" in p for p in paths) == (classes > 0)
    if norm == "nsln":  # the output norm's bias covers the whole (H, W, C) feature map
        assert params["out_norm"]["bias"].shape == (size, size, TINY["channels"])


def test_structure_options():
    """NCSN++'s input branch and wide noise embedding; ADM's unprojected resampling skips,
    scale/shift, heads, attention in every decoder block and class table after the mapping."""
    song = abstract_init(UNet(1, **NCSNPP, **TINY), SHAPE)
    assert song["enc_4x4_aux_residual"]["kernel"].shape == (3, 3, 1, 16)  # from the image
    assert song["enc_4x4_down"]["skip"]["kernel"].shape == (1, 1, 16, 16)  # resample_proj
    assert song["map_layer0"]["kernel"].shape == (32, 64)  # noise embedding 2 * channels
    assert song["enc_4x4_block0"]["affine"]["kernel"].shape == (64, 32)  # added to features
    assert "attn" in song["dec_4x4_block1"] and "attn" not in song["dec_4x4_block0"]

    adm = abstract_init(adm_unet(out_channels=1, num_classes=3, **TINY), SHAPE, LABELS)
    assert "skip" not in adm["enc_4x4_down"] and "skip" not in adm["dec_8x8_up"]
    assert adm["enc_4x4_block0"]["affine"]["kernel"].shape == (64, 2 * 32)  # scale and shift
    assert "attn" in adm["dec_4x4_block0"] and "attn" in adm["dec_4x4_block1"]
    assert adm["map_label"]["kernel"].shape == (3, 64)  # into the emb_mult * channels width
    assert adm["map_layer0"]["kernel"].shape == (16, 64)


@pytest.mark.parametrize(
    "field,value",
    [("norm", "batch"), ("encoder_type", "skip"), ("mapping", "x"), ("init_scheme", "y")],
)
def test_unet_rejects_unknown_options(field, value):
    with pytest.raises(ValueError, match=f"model.{field} '{value}'"):
        UNet(1, **{field: value})


# ----------------------------------------------------------------------------------------------
# Tiny networks: numerics (one compiled apply per fixture, plus one bfloat16 apply each).


def test_labels_and_noise_labels_change_output(song):
    model, params, apply = song
    v = {"params": params}
    out = apply(v, X, C_NOISE_FOURIER, LABELS)
    assert out.shape == SHAPE and out.dtype == jnp.float32
    per_sample = lambda y: np.asarray(relative_change(y, out))
    moved = per_sample(apply(v, X, C_NOISE_FOURIER, jnp.array([1, 2])))
    assert moved[0] > 1e-2 and moved[1] == 0.0  # only the sample whose label changed
    moved = per_sample(apply(v, X, jnp.array([-0.1, 0.0]), LABELS))
    assert moved[0] == 0.0 and moved[1] > 1e-2  # only the sample whose noise label changed
    aux = {
        **params,
        "enc_4x4_aux_residual": jax.tree.map(jnp.zeros_like, params["enc_4x4_aux_residual"]),
    }
    assert per_sample(apply({"params": aux}, X, C_NOISE_FOURIER, LABELS)).min() > 1e-3
    with pytest.raises(ValueError, match="class_labels"):
        jax.eval_shape(lambda p: model.apply({"params": p}, X, C_NOISE, None, train=False), params)
    scalar = jax.eval_shape(
        lambda p: model.apply({"params": p}, X, 1.0, LABELS, train=False), params
    )
    assert scalar.shape == SHAPE  # a scalar noise label is broadcast over the batch


def test_unconditional_net_ignores_labels(song):
    """Callers may always pass the batch labels: an unconditional net traces to the same program."""
    params = {k: v for k, v in song[1].items() if k != "map_label"}
    model = UNet(out_channels=1, **NCSNPP, **TINY)
    program = lambda labels: str(
        jax.make_jaxpr(lambda p: model.apply({"params": p}, X, C_NOISE, labels, train=False))(
            params
        )
    )
    assert program(LABELS) == program(None)


@pytest.mark.slow
def test_adm_dropout_and_labels(adm):
    model, params, train = adm
    v = {"params": params}
    run = lambda k, labels=LABELS: train(v, X, C_NOISE, labels, rngs={"dropout": k})
    first = run(key(10))
    assert first.shape == SHAPE and first.dtype == jnp.float32
    np.testing.assert_array_equal(first, run(key(10)))  # deterministic under a fixed key
    assert np.all(relative_change(run(key(11)), first) > 1e-2)
    moved = np.asarray(relative_change(run(key(10), jnp.array([1, 2])), first))
    assert moved[0] > 1e-2 and moved[1] == 0.0  # the class label conditions ADM, per sample
    # train=False needs no dropout key and is the very program of the dropout-free net.
    program = lambda m: str(
        jax.make_jaxpr(lambda p: m.apply({"params": p}, X, C_NOISE, LABELS, train=False))(params)
    )
    assert program(model) == program(model.clone(dropout=0.0))


def test_dropout_max_resolution(adm):
    """Only blocks whose output height is <= dropout_max_resolution draw dropout masks."""
    model, params, _ = adm

    def masks(m):
        fn = lambda p: m.apply(
            {"params": p}, X, C_NOISE, LABELS, train=True, rngs={"dropout": key(0)}
        )
        return count_primitive(jax.make_jaxpr(fn)(params).jaxpr, "random_bits")

    everywhere = masks(model)
    assert everywhere == 10  # every residual block of the tiny net
    assert masks(model.clone(dropout_max_resolution=4)) == 6  # the 4x4 blocks: 2 enc + 4 dec
    assert masks(model.clone(dropout_max_resolution=8)) == everywhere


@pytest.mark.slow
def test_bfloat16_close_to_float32(song):
    """bfloat16 compute with float32 parameters (one net: a bfloat16 compile is the slowest)."""
    model, params, apply = song
    v = {"params": params}
    ref = apply(v, X, C_NOISE_FOURIER, LABELS)
    low = jit_apply(model.clone(dtype=jnp.bfloat16))(v, X, C_NOISE_FOURIER, LABELS)
    assert low.dtype == jnp.float32
    rel = float(jnp.linalg.norm(low - ref) / jnp.linalg.norm(ref))
    assert 0.0 < rel < 5e-2


# ----------------------------------------------------------------------------------------------
# Builder and tables.


def test_build_model_from_config():
    config = base_config()
    model = build_model(config)
    assert isinstance(model, UNet) and model.mapping == "song"
    assert (model.out_channels, model.num_classes, model.channels) == (1, 10, 32)
    assert model.channel_mult == (1, 2) and model.dtype == jnp.float32
    assert (model.encoder_type, model.resample_filter, model.noise_mult) == ("standard", (1, 1), 1)
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
    config.model.name = "adm"
    adm = build_model(config)
    assert (adm.mapping, adm.init_scheme, adm.skip_scale, adm.head_channels) == (
        "adm",
        "adm",
        1.0,
        64,
    )


@pytest.mark.parametrize(
    "field,value,valid",
    [
        ("name", "resnet", ["adm", "unet"]),
        ("norm", "batch", ["group", "nsln"]),
        ("dtype", "float16", ["bfloat16", "float32"]),
        ("embedding", "learned", ["fourier", "positional"]),
        ("encoder_type", "skip", ["residual", "standard"]),
    ],
)
def test_build_model_rejects_unknown_values(field, value, valid):
    config = base_config()
    config.model[field] = value
    with pytest.raises(ValueError, match=value) as info:
        build_model(config)
    assert all(repr(v) in str(info.value) for v in valid)


def test_param_table_and_count(song):
    params = song[1]
    n = count_params(params)
    assert n == sum(p.size for p in jax.tree_util.tree_leaves(params)) > 0
    table = param_table(params)
    lines = table.splitlines()
    assert lines[-1] == f"parameters: {n}"
    assert len({len(line) for line in lines[:-1]}) == 1  # aligned rows
    assert {line.split()[0] for line in lines[1:-1]} == set(params)
    assert sum(int(line.split()[1]) for line in lines[1:-1]) == n
    assert param_table({"params": params}) == table
