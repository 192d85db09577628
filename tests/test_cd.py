"""CD (docs/methods.md section 8): the teacher's Heun step, the pair of levels, shared dropout,
no gradient through teacher or target, the target EMA, and the step with extra state."""

import importlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_config

from cm import config_checks, experiment, schedules, state, train
from cm.methods import cd, losses
from cm.methods.spec import Denoisers
from configs import cifar10_cd

SD = 0.5
CD = dict(
    num_scales=18,
    sigma_min=0.002,
    sigma_max=80.0,
    rho=7.0,
    distance=losses.get_distance("l2_norm", tiny_config(method__name="cd")),  # fn(a, b, c, extra)
    c_factor=0.0,
    target_ema=0.0,
)


def gaussian_teacher(params, x, sigma, labels, train, rng):
    """The exact denoiser of N(0, sd^2) data, scaled by params["a"]: a sd^2 / (s^2 + sd^2) x."""
    s = sigma[:, None, None, None]
    return params["a"] * SD**2 / (s**2 + SD**2) * x


def _batch(b=6):
    x = jax.random.uniform(jax.random.key(1), (b, 4, 4, 3), minval=-1, maxval=1)
    return {"image": x, "label": jnp.zeros((b,), jnp.int32)}


def _replay(rng, shape, n=18):
    """t_lo, t_hi (float64) and z that cd_loss draws for rng."""
    sigmas = np.asarray(schedules.karras_sigmas(n, 0.002, 80.0, 7.0, n), np.float64)
    k_index, k_noise, _ = jax.random.split(rng, 3)
    i = np.asarray(jax.random.randint(k_index, (shape[0],), 0, n - 1))
    return sigmas[i], sigmas[i + 1], np.asarray(jax.random.normal(k_noise, shape), np.float64)


def _heun64(x, t, t_next, a=1.0):
    """Heun in float64 for D = a sd^2 / (s^2 + sd^2) x: d(s) = (x - D) / s."""

    def d(x, s):
        return (x - a * SD**2 / (s**2 + SD**2) * x) / s

    t, t_next = t[:, None, None, None], t_next[:, None, None, None]
    d1 = d(x, t)
    x_euler = x + (t_next - t) * d1
    return x + (t_next - t) * 0.5 * (d1 + d(x_euler, t_next))


def test_heun_step_by_hand():
    """x = 1 from t = 2 to 1 with the Gaussian denoiser (sd = 0.5):
    D(2) = 0.25 / 4.25 = 0.0588235 -> d = (1 - 0.0588235) / 2 = 0.4705882;
    Euler: 1 - 0.4705882 = 0.5294118; D(1) factor 0.25 / 1.25 = 0.2 -> d' = 0.5294118 * 0.8 =
    0.4235294; Heun: 1 - (0.4705882 + 0.4235294) / 2 = 0.5529412 (the exact PF-ODE solution,
    x ~ sqrt(s^2 + sd^2), is sqrt(1.25 / 4.25) = 0.5423261)."""
    x = jnp.ones((1, 1, 1, 1))
    out = cd.heun_step(gaussian_teacher, {"a": 1.0}, x, jnp.array([2.0]), jnp.array([1.0]), None)
    np.testing.assert_allclose(out, 0.5529412, rtol=1e-6)


def test_heun_step_against_float64_on_a_batch():
    x = np.asarray(jax.random.normal(jax.random.key(2), (5, 2, 2, 1)), np.float64)
    t = np.array([80.0, 10.0, 1.0, 0.1, 0.01])
    t_next = np.array([50.0, 5.0, 0.5, 0.05, 0.002])
    out = cd.heun_step(
        gaussian_teacher,
        {"a": 0.9},
        jnp.asarray(x, jnp.float32),
        jnp.asarray(t, jnp.float32),
        jnp.asarray(t_next, jnp.float32),
        None,
    )
    np.testing.assert_allclose(out, _heun64(x, t, t_next, a=0.9), rtol=2e-5, atol=1e-6)


def test_calls_levels_shared_dropout_and_loss_value():
    """Student f(x + t_hi z, t_hi) and target f(x_hat, t_lo) in training mode with one dropout
    key and the stop-gradient student's parameters (mu = 0); the teacher twice without dropout,
    at (x_hi, t_hi) and (Euler point, t_lo); adjacent levels of the 18-level grid. With f = the
    identity the loss is mean ||x_hi - heun(x_hi)||."""
    calls = []

    def student(params, x, sigma, labels, train, rng):
        calls.append(("f", np.asarray(x), np.asarray(sigma), jax.random.key_data(rng), train))
        return x * params["w"]

    def teacher(params, x, sigma, labels, train, rng):
        calls.append(("D", np.asarray(x), np.asarray(sigma), rng, train))
        return gaussian_teacher(params, x, sigma, labels, train, rng)

    batch, rng = _batch(), jax.random.key(4)
    params, extra = {"w": jnp.float32(1.0)}, {"teacher": {"a": jnp.float32(1.0)}}
    loss, _ = cd.cd_loss(student, teacher, params, batch, rng, 0, extra=extra, **CD)
    t_lo, t_hi, z = _replay(rng, batch["image"].shape)
    grid = np.asarray(schedules.karras_sigmas(18, 0.002, 80.0, 7.0, 18), np.float64)
    assert np.all(np.searchsorted(grid, t_hi) == np.searchsorted(grid, t_lo) + 1)
    x_hi = np.asarray(batch["image"], np.float64) + t_hi[:, None, None, None] * z
    x_lo = _heun64(x_hi, t_hi, t_lo)
    kinds = [c[0] for c in calls]
    assert kinds == ["f", "D", "D", "f"], kinds
    (_, xs, ss, ks, trs), (_, xd1, sd1, r1, tr1), (_, _, sd2, r2, tr2), (_, xt, st, kt, trt) = calls
    np.testing.assert_allclose(xs, x_hi, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ss, t_hi, rtol=1e-5)
    np.testing.assert_allclose(xd1, x_hi, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose([sd1, sd2], [t_hi, t_lo], rtol=1e-5)
    assert r1 is None and r2 is None and not tr1 and not tr2  # teacher: no dropout
    np.testing.assert_allclose(xt, x_lo, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(st, t_lo, rtol=1e-5)
    assert np.array_equal(ks, kt) and trs and trt
    expected = np.mean(np.linalg.norm((x_hi - x_lo).reshape(6, -1), axis=1))
    np.testing.assert_allclose(loss, expected, rtol=1e-4)


def _net(p, x, sigma, labels, train, rng):
    return p["w"] * x * (1 + 0.1 * sigma[:, None, None, None])


@pytest.mark.parametrize("mu", [0.0, 0.95])
def test_no_gradient_through_teacher_or_target(mu):
    """d loss / d params == the gradient with the target a constant; != when the target is
    differentiated too (mu = 0: it is the student's own parameters); and the loss has zero
    gradient with respect to the teacher and the target parameters (stop_gradient)."""
    batch, rng, w = _batch(), jax.random.key(6), {"w": jnp.float32(1.3)}
    extra = {"teacher": {"a": jnp.float32(0.9)}}
    if mu > 0:
        extra["target"] = {"w": jnp.float32(1.1)}
    kw = CD | dict(target_ema=mu)

    def loss_of(p, e):
        return cd.cd_loss(_net, gaussian_teacher, p, batch, rng, 0, extra=e, **kw)[0]

    grad = jax.grad(loss_of)(w, extra)["w"]
    t_lo, t_hi, z = _replay(rng, batch["image"].shape)
    x = np.asarray(batch["image"], np.float64)
    x_hi = jnp.asarray(x + t_hi[:, None, None, None] * z, jnp.float32)
    x_lo = jnp.asarray(_heun64(np.asarray(x_hi, np.float64), t_hi, t_lo, a=0.9), jnp.float32)
    hi, lo = jnp.asarray(t_hi, jnp.float32), jnp.asarray(t_lo, jnp.float32)
    target_params = extra.get("target", w)
    target = _net(target_params, x_lo, lo, None, True, None)
    frozen = lambda p: jnp.mean(losses.l2_norm(_net(p, x_hi, hi, None, True, None), target))
    np.testing.assert_allclose(grad, jax.grad(frozen)(w)["w"], rtol=1e-4)
    if mu == 0:
        both = lambda p: jnp.mean(
            losses.l2_norm(_net(p, x_hi, hi, None, True, None), _net(p, x_lo, lo, None, True, None))
        )
        assert abs(float(jax.grad(both)(w)["w"]) - float(grad)) > 1e-3
    extra_grad = jax.grad(loss_of, argnums=1)(w, extra)
    assert all(float(g) == 0.0 for g in jax.tree.leaves(extra_grad))


def test_target_ema_update_by_hand():
    """mu = 0.9: target 2, new params 4 -> 0.9 * 2 + 0.1 * 4 = 2.2; the teacher is kept.
    mu = 0: no target in the extra state and no update."""
    c = tiny_config(method__name="cd", method__cd_target_ema=0.9)
    params = {"w": jnp.float32(2.0)}
    extra = cd.init_extra(c, params)
    assert set(extra) == {"teacher", "target"}
    out = cd.update_extra(c)(extra, {"w": jnp.float32(4.0)}, 0)
    np.testing.assert_allclose(out["target"]["w"], 2.2, rtol=1e-6)
    assert float(out["teacher"]["w"]) == 2.0
    c.method.cd_target_ema = 0.0
    assert set(cd.init_extra(c, params)) == {"teacher"} and cd.update_extra(c) is None


def test_step_keeps_the_teacher_and_moves_the_target():
    """One jitted step on a MethodTrainState: params move, the teacher stays bitwise, the
    target follows mu target + (1 - mu) new params, the EMA follows its own rate."""
    c = tiny_config(method__name="cd", method__cd_target_ema=0.5)
    exp = experiment.Experiment(
        method=cd.METHOD,
        model=None,
        denoise=_net,
        loss_fn=cd.objective(c, Denoisers(_net, _net, gaussian_teacher)),
        tx=state.make_optimizer(c.optim),
        mesh=experiment.make_mesh(),
        update_extra=cd.update_extra(c),
    )
    params = {"w": jnp.float32(1.3)}
    extra = {"teacher": {"a": jnp.float32(0.9)}, "target": {"w": jnp.float32(1.0)}}
    start = state.create(params, exp.tx, 1, extra=extra)
    assert isinstance(start, state.MethodTrainState)
    step_fn = train.make_train_step(exp, (0.75,), c.seed)
    batch = {
        "image": np.asarray(_batch(8)["image"]),
        "label": np.zeros((8,), np.int32),
    }
    new, metrics = step_fn(jax.device_put(start, exp.replicated), train.global_batch(batch, exp))
    w = float(new.params["w"])
    assert w != 1.3 and math.isfinite(float(metrics["loss"]))
    assert float(new.extra["teacher"]["a"]) == np.float32(0.9)
    np.testing.assert_allclose(float(new.extra["target"]["w"]), 0.5 * 1.0 + 0.5 * w, rtol=1e-6)
    np.testing.assert_allclose(float(new.ema[0]["w"]), 0.75 * 1.3 + 0.25 * w, rtol=1e-6)


def test_training_needs_a_teacher_and_checks_its_fields():
    c = tiny_config(method__name="cd")
    with pytest.raises(ValueError, match=r"^method.init_from='' is invalid: .*EDM run"):
        config_checks.check(c, "train")
    config_checks.check(c, "summary")  # the network alone needs no teacher
    c.method.init_from = "/somewhere"
    c.method.cd_target_ema = 1.0
    with pytest.raises(ValueError, match=r"^method.cd_target_ema=1.0 is invalid"):
        config_checks.check(c, "train")
    c.method.cd_target_ema = 0.0
    c.method.cd_num_scales = 1
    with pytest.raises(ValueError, match=r"^method.cd_num_scales=1 is invalid"):
        config_checks.check(c, "train")


def test_cifar10_cd_config_is_cms_recipe():
    c = cifar10_cd.get_config()
    m, t, o = c.method, c.training, c.optim
    assert (m.name, m.cd_num_scales, m.cd_target_ema, m.sigma_min, m.rho) == ("cd", 18, 0, 0.002, 7)
    assert (t.batch_size, t.num_steps, t.ema_rates) == (512, 800_000, (0.9999,))
    assert (o.name, o.learning_rate, o.warmup_steps, o.grad_clip) == ("radam", 4e-4, 0, 0)
    assert c.model.dropout == 0.0 and m.noise_label == "log_sigma_over_4"
    assert m.cd_clip_denoised  # the notebook clips each x0 estimate before re-noising
    c.method.init_from = "/teacher"
    config_checks.check(c, "train")


# The two-step level of each CD config: CM's notebook samples its CIFAR-10 CD model with
# ts = [0, 11, 17] on the N = 18 grid counted down from sigma_max (jcm's t_i = (smax^(1/7) +
# i / 17 (smin^(1/7) - smax^(1/7)))^7): t_11 = 0.5853481, not iCT's 0.821.
CD_TWO_STEP_LEVELS = {"cifar10_cd": 0.5853481}


@pytest.mark.parametrize("name", sorted(CD_TWO_STEP_LEVELS))
def test_two_step_level_of_each_cd_config(name):
    c = importlib.import_module(f"configs.{name}").get_config()
    assert c.method.name == "cd"
    assert c.sampling.consistency_levels == ((), (CD_TWO_STEP_LEVELS[name],))
    # By hand: 80^(1/7) = 1.8701223, 0.002^(1/7) = 0.4115597; 1.8701223 + 11/17 (0.4115597 -
    # 1.8701223) = 0.9263465; 0.9263465^7 = 0.5853481. On cm's increasing grid it is index 6.
    n = c.method.cd_num_scales
    grid = schedules.karras_sigmas(n, c.method.sigma_min, c.method.sigma_max, c.method.rho, n)
    np.testing.assert_allclose(float(grid[n - 1 - 11]), 0.5853481, rtol=1e-6)
