"""TrigFlow and the sCT / sCD losses (docs/methods.md section 9): the formulas against float64
numpy recomputations on stand-in networks, the JVP against finite differences, stop-gradients,
shared dropout, the EDM conversion, the samplers, one compile across the tangent warm-up."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_config

from cm import config_checks, precond
from cm.methods import sct, trigflow
from cm.methods.spec import Denoisers
from cm.models import build_model
from cm.models.unet import UNet

SD = 0.5
KW = dict(sigma_data=SD, p_mean=-1.0, p_std=1.4, warmup_steps=10_000, tangent_c=0.1)


def _batch(b=6, dtype=jnp.float32):
    x = jax.random.uniform(jax.random.key(1), (b, 4, 4, 3), minval=-1, maxval=1)
    return {"image": x.astype(dtype), "label": jnp.zeros((b,), jnp.int32)}


def _replay(rng, b, shape):
    """t and z as scm_loss draws them for rng, in float64."""
    k_time, k_noise, _ = jax.random.split(rng, 3)
    tau = -1.0 + 1.4 * np.asarray(jax.random.normal(k_time, (b,)), np.float64)
    t = np.arctan(np.exp(tau) / SD)
    z = SD * np.asarray(jax.random.normal(k_noise, shape), np.float64)
    return t, z


def _linear_flow(params, x_t, t, labels=None, train=False, dropout_rng=None, augment_labels=None):
    """F = a x_t + b t: dF/dt along (dx/dt, 1) is a dx/dt + b exactly."""
    return params["a"] * x_t + params["b"] * t[:, None, None, None]


def _weighting(channels=8, scale=1.0):
    """TimeWeighting of t with random (not zero) linear weights, and its float64 numpy twin."""
    module = sct.TimeWeighting(channels, scale)
    params = sct.init_weighting(module, jax.random.key(0))
    k1, k2 = jax.random.split(jax.random.key(9))
    params = {
        "linear": {
            "kernel": 0.3 * jax.random.normal(k1, (channels, 1)),
            "bias": 0.2 * jax.random.normal(k2, (1,)),
        }
    }
    freqs = np.random.RandomState(0).randn(channels // 2) * scale  # embeddings.fourier_embedding

    def numpy_w(t):
        arg = t[:, None] * 2 * np.pi * freqs[None, :]
        feats = np.concatenate([np.sin(arg), np.cos(arg)], axis=1)
        kernel = np.asarray(params["linear"]["kernel"], np.float64)
        return (feats @ kernel)[:, 0] + float(params["linear"]["bias"][0])

    return sct.make_weighting(module, lambda t: t), params, numpy_w


def test_trig_time_law_and_warmup():
    key = jax.random.key(4)
    t = sct.trig_time_law(key, 1000, -1.0, 1.4, SD)
    tau = -1.0 + 1.4 * np.asarray(jax.random.normal(key, (1000,)), np.float64)
    np.testing.assert_allclose(t, np.arctan(np.exp(tau) / SD), rtol=1e-6)
    assert float(t.min()) > 0 and float(t.max()) < math.pi / 2
    # Median of t is arctan(e^-1 / 0.5) = arctan(0.7358) = 0.6340.
    assert abs(float(np.median(t)) - 0.6340) < 0.05
    r = [float(sct.tangent_warmup(s, 10_000)) for s in (0, 2500, 10_000, 50_000)]
    assert r == [0.0, 0.25, 1.0, 1.0]
    assert float(sct.tangent_warmup(7, 0)) == 1.0


@pytest.mark.parametrize("prior", [True, False])
@pytest.mark.parametrize("distill", [False, True])
def test_loss_value_and_gradient_match_numpy_for_a_linear_network(prior, distill):
    """Linear F = a x + b t: the loss is prior e^w ||g||^2 / D - w (F_theta - F- = 0) with g from
    the closed-form tangent, and its gradient is mean prior e^w / D (-2 g . dF/dtheta): no
    gradient through F- or g. sCD takes dx/dt = sd F_teacher with F_teacher = c x_t."""
    params = {"a": jnp.float32(0.7), "b": jnp.float32(-0.4)}
    weighting, wparams, numpy_w = _weighting()
    batch, rng, step = _batch(), jax.random.key(7), 3000
    teacher_calls = []

    def teacher(p, x_t, t, labels, train, dropout_rng):
        teacher_calls.append((p, train, dropout_rng))
        return p["c"] * x_t

    extra = dict(teacher=teacher, teacher_params={"c": jnp.float32(1.3)}) if distill else {}

    def loss_fn(p, wp):
        return sct.scm_loss(
            _linear_flow, weighting, p, wp, batch, rng, step, prior_weighting=prior, **KW, **extra
        )

    (loss, metrics), (grads, wgrads) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
        params, wparams
    )
    if distill:
        (p, train, key), *_ = teacher_calls
        assert float(p["c"]) == np.float32(1.3) and train is False and key is None

    x0 = np.asarray(batch["image"], np.float64)
    t, z = _replay(rng, 6, x0.shape)
    c, s = np.cos(t)[:, None, None, None], np.sin(t)[:, None, None, None]
    x_t = c * x0 + s * z
    dxdt = SD * 1.3 * x_t if distill else c * z - s * x0
    a, b, r = 0.7, -0.4, 0.3  # r = 3000 / 10000
    F = a * x_t + b * t[:, None, None, None]
    dF = a * dxdt + b * np.ones_like(x_t)  # dF/dt
    g = -(c**2) * (SD * F - dxdt) - r * c * s * (x_t + SD * dF)
    norm = np.sqrt(np.sum(g**2, axis=(1, 2, 3)))
    g = g / (norm + 0.1)[:, None, None, None]
    d = x0[0].size
    w = numpy_w(t)
    pw = 1 / (SD * np.tan(t)) if prior else np.ones_like(t)
    sq = np.sum(g**2, axis=(1, 2, 3))
    np.testing.assert_allclose(loss, np.mean(pw * np.exp(w) * sq / d - w), rtol=2e-5)
    np.testing.assert_allclose(metrics["tangent_norm"], np.mean(norm), rtol=2e-5)
    assert float(metrics["tangent_warmup"]) == np.float32(0.3)

    coef = pw * np.exp(w) / d  # [B]
    grad_a = np.mean(coef * -2 * np.sum(g * x_t, axis=(1, 2, 3)))
    grad_b = np.mean(coef * -2 * np.sum(g, axis=(1, 2, 3)) * t)
    np.testing.assert_allclose(grads["a"], grad_a, rtol=1e-4)
    np.testing.assert_allclose(grads["b"], grad_b, rtol=1e-4)
    # d loss / d w_i = (prior e^w ||g||^2 / D - 1) / B flows into the weighting's bias.
    np.testing.assert_allclose(
        wgrads["linear"]["bias"][0], np.mean(pw * np.exp(w) * sq / d - 1), rtol=1e-4
    )


def test_point_mass_data_gives_a_zero_tangent():
    """For data at one point x*, the exact consistency function is f = x*, i.e.
    F* = (cos t x_t - x*) / (sd sin t); then g = cos t df/dt = 0 and the loss is 0 (w = 0)."""
    with jax.enable_x64(True):
        b = 5
        point = jax.random.uniform(jax.random.key(2), (1, 4, 4, 3), jnp.float64, -1, 1)
        batch = {"image": jnp.repeat(point, b, axis=0)}

        def exact(p, x_t, t, labels=None, train=False, dropout_rng=None, augment_labels=None):
            cos, sin = jnp.cos(t)[:, None, None, None], jnp.sin(t)[:, None, None, None]
            return (cos * x_t - p) / (SD * sin)

        module = sct.TimeWeighting(8)
        weighting = sct.make_weighting(module, lambda t: t)
        wparams = sct.init_weighting(module, jax.random.key(0))
        loss, metrics = sct.scm_loss(
            exact, weighting, point, wparams, batch, jax.random.key(3), 20_000,
            prior_weighting=True, **KW,
        )  # fmt: skip
        assert float(metrics["tangent_norm"]) < 1e-9 and abs(float(loss)) < 1e-12


def test_jvp_tangent_equals_central_difference_float64():
    """cos t sin t dF/dt from one jax.jvp equals the central difference of F along
    cos t sin t (dx/dt, 1), for a nonlinear F of x and t."""
    with jax.enable_x64(True):
        k1, k2, k3, k4 = jax.random.split(jax.random.key(5), 4)
        x_t = jax.random.normal(k1, (3, 4, 4, 2), jnp.float64)
        dxdt = jax.random.normal(k2, (3, 4, 4, 2), jnp.float64)
        t = jax.random.uniform(k3, (3,), jnp.float64, 0.1, 1.5)
        mix = jax.random.normal(k4, (2, 2), jnp.float64)

        def flow(x, s):
            s4 = s[:, None, None, None]
            return jnp.tanh((x @ mix) * jnp.cos(2 * s4) + s4**2) * jnp.exp(-s4)

        value, tangent = sct.jvp_tangent(flow, x_t, t, dxdt)
        cs = jnp.cos(t) * jnp.sin(t)
        h = 1e-5
        step = lambda sign: flow(x_t + sign * h * cs[:, None, None, None] * dxdt, t + sign * h * cs)
        fd = (step(1) - step(-1)) / (2 * h)
        np.testing.assert_allclose(value, flow(x_t, t), rtol=1e-12)
        np.testing.assert_allclose(tangent, fd, rtol=1e-7, atol=1e-9)
        assert float(jnp.abs(tangent).max()) > 0.1


def test_dropout_key_shared_by_jvp_and_forward_pass():
    calls = []

    def spy(params, x_t, t, labels, train, dropout_rng, augment_labels=None):
        calls.append((train, np.asarray(jax.random.key_data(dropout_rng))))
        return params["a"] * x_t

    weighting, wparams, _ = _weighting()
    sct.scm_loss(
        spy, weighting, {"a": 0.5}, wparams, _batch(), jax.random.key(3), 0,
        prior_weighting=True, **KW,
    )  # fmt: skip
    assert len(calls) == 2 and calls[0][0] and calls[1][0]  # the JVP, then F_theta; training
    assert np.array_equal(calls[0][1], calls[1][1])


def test_fresh_jvp_dropout_draws_its_own_mask_and_keeps_the_forward_key():
    """method.scm_jvp_dropout = fresh (FastGen's separate pass): the JVP gets fold_in(key, 1),
    F_theta keeps the key that "shared" gives both."""
    keys = {}
    for mode in ("shared", "fresh"):
        calls = []

        def spy(params, x_t, t, labels, train, dropout_rng, augment_labels=None, calls=calls):
            calls.append(np.asarray(jax.random.key_data(dropout_rng)))
            return params["a"] * x_t

        weighting, wparams, _ = _weighting()
        sct.scm_loss(
            spy, weighting, {"a": 0.5}, wparams, _batch(), jax.random.key(3), 0,
            prior_weighting=True, jvp_dropout=mode, **KW,
        )  # fmt: skip
        keys[mode] = calls  # [JVP, F_theta]
    _, _, k_dropout = jax.random.split(jax.random.key(3), 3)
    fresh = np.asarray(jax.random.key_data(jax.random.fold_in(k_dropout, sct.FRESH_JVP_TAG)))
    assert np.array_equal(keys["fresh"][1], keys["shared"][1])  # F_theta: the step's key
    assert np.array_equal(keys["fresh"][0], fresh) and not np.array_equal(fresh, keys["fresh"][1])
    with pytest.raises(ValueError, match="scm_jvp_dropout"):
        sct.scm_loss(
            spy, weighting, {"a": 0.5}, wparams, _batch(), jax.random.key(3), 0,
            prior_weighting=True, jvp_dropout="new", **KW,
        )  # fmt: skip


def test_edm2_weighting_head_by_hand():
    """EDM2's head: sqrt(2) cos(2 pi (f c + phi)) features (numpy's seeded draws) through a
    unit-norm bias-free weight w / (1e-4 + ||w|| / sqrt(n)) / sqrt(n)."""
    # w = (3, 4), n = 2: ||w|| = 5, w / (1e-4 + 5 / sqrt 2) / sqrt 2 = w / (5 + 1.41421e-4);
    # features (1, 2): (3 + 8) / 5.000141421 = 2.1999378.
    out = sct.edm2_linear(jnp.array([[1.0, 2.0]]), jnp.array([3.0, 4.0]))
    np.testing.assert_allclose(out, [2.1999378], rtol=1e-6)
    labels = jnp.array([0.0, 0.3, 1.2])
    draw = np.random.RandomState(5)
    f, phi = draw.randn(6) * 2.0, draw.rand(6)
    expected = np.sqrt(2) * np.cos(2 * np.pi * (np.asarray(labels)[:, None] * f + phi))
    got = sct.edm2_fourier(labels, 6, 2.0, 5)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    module = sct.TimeWeighting(6, 2.0, 5, head="edm2")
    params = sct.init_weighting(module, jax.random.key(0))
    assert set(params) == {"weight"} and params["weight"].shape == (6,)
    w = sct.make_weighting(module, lambda t: t)(params, labels)
    np.testing.assert_allclose(w, sct.edm2_linear(got, params["weight"]), rtol=1e-6)
    assert float(jnp.abs(w).max()) > 0  # EDM2 draws its weight: w is not 0 at the start


def test_network_weighting_head_reads_the_networks_own_embedding():
    """FastGen's head: a Dense on the network's map_noise features of the time label (the
    U-Net's NoiseEmbedding output, captured from a forward pass), N(0, 1 / fan_in) weights and
    zero bias; refused where the network keeps its Fourier frequencies as parameters."""
    c = tiny_config(method__name="sct", method__scm_weighting_head="network")
    module = sct._weighting_module(c)
    params = sct.init_weighting(module, jax.random.key(0))
    width = c.model.noise_mult * c.model.channels
    assert params["linear"]["kernel"].shape == (width, 1)
    np.testing.assert_array_equal(params["linear"]["bias"], 0.0)
    assert 0 < float(jnp.std(params["linear"]["kernel"])) < 3 / math.sqrt(width)
    t = jnp.array([0.2, 1.3])
    model = build_model(c)
    x = jnp.zeros((2, c.data.image_size, c.data.image_size, c.data.channels))
    y = jnp.zeros((2,), jnp.int32)
    # map_noise reads no parameter: zeros of the network's shapes, one jitted forward pass.
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(1), x, t, y, train=False))
    zeros = jax.tree.map(lambda v: jnp.zeros(v.shape, v.dtype), shapes)
    forward = lambda v: model.apply(
        v, x, t, y, train=False, capture_intermediates=True, mutable=["intermediates"]
    )[1]["intermediates"]["map_noise"]["__call__"][0]  # fmt: skip
    feats = jax.jit(forward)(zeros)  # [2, width]
    w = sct.make_weighting(module, lambda s: s)(params, t)
    np.testing.assert_allclose(w, feats @ params["linear"]["kernel"][:, 0], rtol=1e-5)
    c.model.fourier_param = True
    with pytest.raises(ValueError, match=r"^method\.scm_weighting_head='network' is invalid"):
        config_checks.check(c, "summary")
    c.method.scm_weighting_head = "linear"
    with pytest.raises(ValueError, match=r"^method\.scm_weighting_head='linear' is invalid"):
        config_checks.check(c, "summary")
    c.method.scm_weighting_head, c.method.scm_jvp_dropout = "sincos", "never"
    with pytest.raises(ValueError, match=r"^method\.scm_jvp_dropout='never' is invalid"):
        config_checks.check(c, "summary")


@pytest.mark.parametrize(
    "head,jvp_dropout", [("sincos", "shared"), ("edm2", "fresh"), ("network", "fresh")]
)
def test_production_objective_with_each_head_and_mask(head, jvp_dropout):
    """sct's table objective and init_aux on a linear flow: each w(t) head trains (a gradient
    reaches its parameters), each mask setting runs; the sincos head starts at w = 0."""
    c = tiny_config(method__name="sct")
    c.method.scm_weighting_head, c.method.scm_jvp_dropout = head, jvp_dropout
    aux = sct.init_aux(c, jax.random.key(0))
    loss_fn = sct.objective(c, Denoisers(train=_linear_flow, sample=None, teacher=None), False)
    params = {"a": jnp.float32(0.7), "b": jnp.float32(-0.4)}
    grad_fn = jax.grad(lambda p, a: loss_fn(p, _batch(), jax.random.key(2), 50, a)[0], (0, 1))
    (loss, metrics) = loss_fn(params, _batch(), jax.random.key(2), 50, aux)
    grads, aux_grads = grad_fn(params, aux)
    assert np.isfinite(float(loss)) and float(jnp.abs(grads["a"])) > 0
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(aux_grads))
    assert (float(metrics["weighting_mean"]) == 0.0) == (head == "sincos")


def _tiny_net(dropout=0.0):
    """A one-level U-Net with attention."""
    return UNet(
        out_channels=3,
        channels=8,
        channel_mult=(1,),
        num_blocks=1,
        attn_resolutions=(8,),
        num_groups=4,
        dropout=dropout,
    )


@functools.cache
def _tiny_params():
    """_tiny_net's parameters with random weights everywhere (the fresh output conv is zero,
    which would hide the network); built once (dropout adds no parameters)."""
    x = jnp.zeros((2, 8, 8, 3))
    params = _tiny_net().init(jax.random.key(0), x, jnp.zeros((2,)), train=False)["params"]
    noise = np.random.RandomState(1)
    return jax.tree.map(lambda v: v + 0.2 * noise.standard_normal(v.shape), params)


def _tiny_unet(dropout=0.0):
    return _tiny_net(dropout), _tiny_params()


@pytest.mark.slow
def test_unet_jvp_with_dropout_equals_finite_difference_with_the_same_mask():
    """Through the real U-Net (dropout 0.5, attention, GroupNorm), the JVP of F at a fixed
    dropout key matches the central difference of F at the same key: the mask is held fixed
    (another key gives another tangent)."""
    net, params = _tiny_unet(dropout=0.5)
    F = trigflow.make_flow(net, "trigflow", SD, 1.0, "log_sigma_over_4")
    k1, k2 = jax.random.split(jax.random.key(2))
    x_t = jax.random.normal(k1, (2, 8, 8, 3))
    dxdt = jax.random.normal(k2, (2, 8, 8, 3))
    t = jnp.array([0.4, 1.2])
    h = 1e-2

    @jax.jit
    def tangents():
        flow = lambda x, s, key: F(params, x, s, None, True, jax.random.key(key))
        _, tangent = sct.jvp_tangent(lambda x, s: flow(x, s, 11), x_t, t, dxdt)
        _, other = sct.jvp_tangent(lambda x, s: flow(x, s, 12), x_t, t, dxdt)
        cs = jnp.cos(t) * jnp.sin(t)
        step = cs[:, None, None, None] * dxdt
        at = lambda sign: flow(x_t + sign * h * step, t + sign * h * cs, 11)
        return tangent, other, (at(1.0) - at(-1.0)) / (2 * h)

    tangent, other, fd = tangents()
    rel = lambda a, b: float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))
    assert rel(fd, tangent) < 1e-2 and rel(other, tangent) > 0.1


@pytest.mark.slow
def test_edm_form_reproduces_the_edm_denoiser_and_boundary():
    """The edm form's x0 prediction cos t x_t - sin t sd F equals EDM's D(x_t / cos t, sd tan t),
    and F equals the paper's (cos t x_t - D) / (sd sin t); f(x, 0) = x in both forms."""
    net, params = _tiny_unet()
    D = precond.make_denoiser(net, "edm", "log_sigma_over_4", SD, 0.002)
    x_t = jax.random.normal(jax.random.key(3), (2, 8, 8, 3))
    t = jnp.array([0.3, 1.2])
    F = trigflow.make_flow(net, "edm", SD, 1.0, "log_sigma_over_4")
    f = trigflow.consistency_fn(F, SD)
    c, s = jnp.cos(t)[:, None, None, None], jnp.sin(t)[:, None, None, None]
    d = D(params, x_t / c, SD * jnp.tan(t))
    np.testing.assert_allclose(f(params, x_t, t), d, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(F(params, x_t, t), (c * x_t - d) / (SD * s), rtol=1e-3, atol=1e-3)
    assert float(jnp.abs(F(params, x_t, t)).mean()) > 0.1
    for form in trigflow.TRIG_FORMS:
        fn = trigflow.consistency_fn(trigflow.make_flow(net, form, SD, 1.0, "log_sigma_over_4"), SD)
        np.testing.assert_array_equal(fn(params, x_t, jnp.zeros((2,))), x_t)


def test_trigflow_form_feeds_scaled_time_and_scaled_input():
    seen = []

    class Spy:
        def apply(self, variables, x, c_noise, labels, train, rngs):
            seen.append((np.asarray(x), np.asarray(c_noise)))
            return jnp.ones_like(x)

    x_t = jnp.full((2, 2, 2, 1), 3.0)
    t = jnp.array([0.25, 1.0])
    out = trigflow.make_flow(Spy(), "trigflow", SD, 1000.0, "log_sigma_over_4")({}, x_t, t)
    np.testing.assert_allclose(seen[0][0], 6.0)  # x_t / sd
    np.testing.assert_allclose(seen[0][1], [250.0, 1000.0])  # time_scale * t
    np.testing.assert_array_equal(out, 1.0)
    out = trigflow.make_flow(Spy(), "edm", SD, 1.0, "log_sigma_over_4")({}, x_t, t)
    np.testing.assert_allclose(seen[1][1], np.log(SD * np.tan([0.25, 1.0])) / 4, rtol=1e-6)
    np.testing.assert_array_equal(out, -1.0)  # F = -net in the edm form


def test_samplers_with_a_zero_flow():
    """F = 0 makes f = cos t x_t: 1 step gives cos(t_max) sd z0; 2 steps re-noise at 1.1."""
    zero = lambda params, x_t, t, labels=None, *a: jnp.zeros_like(x_t)
    f = trigflow.consistency_fn(zero, SD)
    tmax = trigflow.t_max(80.0, SD)
    assert abs(tmax - math.atan(160.0)) < 1e-12 and abs(tmax - 1.5645) < 1e-4
    shape, rng = (3, 4, 4, 1), jax.random.key(8)
    one = trigflow.trigflow_sample(
        f, {}, rng, None, shape, sigma_data=SD, start_time=tmax, mid_times=()
    )
    (k0,) = jax.random.split(rng, 1)
    z0 = SD * np.asarray(jax.random.normal(k0, shape), np.float64)
    np.testing.assert_allclose(one, np.cos(tmax) * z0, rtol=1e-5, atol=1e-7)
    two = trigflow.trigflow_sample(
        f, {}, rng, None, shape, sigma_data=SD, start_time=tmax, mid_times=(1.1,)
    )
    k0, k1 = jax.random.split(rng, 2)
    z0 = SD * np.asarray(jax.random.normal(k0, shape), np.float64)
    z1 = SD * np.asarray(jax.random.normal(k1, shape), np.float64)
    x1 = np.cos(tmax) * z0
    np.testing.assert_allclose(two, np.cos(1.1) * (np.cos(1.1) * x1 + np.sin(1.1) * z1), rtol=1e-5)


def test_loss_compiles_once_across_warmup():
    traces = []
    weighting, wparams, _ = _weighting()

    @jax.jit
    def step_loss(p, wp, step):
        traces.append(1)
        return sct.scm_loss(
            _linear_flow, weighting, p, wp, _batch(), jax.random.key(1), step,
            prior_weighting=True, **KW,
        )  # fmt: skip

    params = {"a": jnp.float32(0.7), "b": jnp.float32(0.1)}
    rs = [
        float(step_loss(params, wparams, jnp.int32(s))[1]["tangent_warmup"])
        for s in (0, 5000, 10_000, 40_000)
    ]
    assert rs == [0.0, 0.5, 1.0, 1.0] and len(traces) == 1


def test_weighting_starts_at_zero_and_forms_are_checked():
    module = sct.TimeWeighting(16)
    w = sct.make_weighting(module, lambda t: t)(
        sct.init_weighting(module, jax.random.key(0)), jnp.array([0.1, 1.0])
    )
    np.testing.assert_array_equal(w, 0.0)
    with pytest.raises(ValueError, match="trig_form"):
        trigflow.make_flow(None, "vp", SD, 1.0, "log_sigma_over_4")


def test_cifar10_sct_and_scd_open_settings():
    """FastGen's CIFAR-10 sCM recipe (docs/methods.md section 9, "sCT and sCD: open
    settings"): RAdam 1e-4, betas (0.9, 0.99), eps 1e-8, constant rate, batch 512; sCT 350k
    steps with dropout 0.2, sCD 500k with dropout 0; cm's w(t) head, one dropout mask, no clip."""
    from configs import cifar10_scd, cifar10_sct

    for config, steps, dropout in (
        (cifar10_sct.get_config(), 350_000, 0.2),
        (cifar10_scd.get_config(), 500_000, 0.0),
    ):
        o, m = config.optim, config.method
        assert (o.name, o.learning_rate, o.b1, o.b2, o.eps) == ("radam", 1e-4, 0.9, 0.99, 1e-8)
        assert (o.weight_decay, o.warmup_steps, o.grad_clip) == (0.0, 0, 0.0)
        assert (config.training.batch_size, config.training.num_steps) == (512, steps)
        assert config.model.dropout == dropout
        assert (m.scm_weighting_head, m.scm_jvp_dropout, m.scm_clip_denoised) == (
            "sincos",
            "shared",
            False,
        )
