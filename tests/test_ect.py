"""ECT (docs/methods.md section 8): r(t, stage), the 1/(t - r) weight, the shared noise and
dropout, the teacher without gradient, the train/sample parameterization, one compile."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_config

from cm import config_checks, experiment, methods, state, train
from cm.methods import ect, losses
from cm.methods.spec import Denoisers
from configs import cifar10_ect

ECT = dict(
    p_mean=-1.1,
    p_std=2.0,
    q=2.0,
    k=8.0,
    b=1.0,
    double_steps=25_000,
    distance=losses.l2_norm,
    c_factor=0.0,
)


def _batch(b=6):
    x = jax.random.uniform(jax.random.key(1), (b, 4, 4, 3), minval=-1, maxval=1)
    return {"image": x, "label": jnp.zeros((b,), jnp.int32)}


def _r64(t, stage, q=2.0, k=8.0, b=1.0):
    """ECT's mapping in float64 numpy: max(0, t (1 - q^-(stage+1) (1 + k sigmoid(-b t))))."""
    adjustment = 1.0 + k / (1.0 + np.exp(b * t))
    return np.maximum(t * (1.0 - q ** -(stage + 1.0) * adjustment), 0.0)


def _replay(rng, step, shape, double_steps=25_000):
    """t, r (float64) and eps that ect_loss draws for rng at `step`."""
    k_t, k_noise, _ = jax.random.split(rng, 3)
    t = np.exp(-1.1 + 2.0 * np.asarray(jax.random.normal(k_t, (shape[0],)), np.float64))
    return t, _r64(t, step // double_steps), np.asarray(jax.random.normal(k_noise, shape))


@pytest.mark.parametrize(
    "t,stage,expected",
    [
        # sigmoid(-1) = 1 / (1 + e) = 0.2689414; 1 + 8 * 0.2689414 = 3.1515313.
        (1.0, 0, 0.0),  # 1 - 3.1515313 / 2 = -0.5757656 < 0: r = 0 (the data is the target)
        (1.0, 1, 0.2121172),  # 1 - 3.1515313 / 4 = 0.2121172
        (1.0, 3, 0.8030293),  # 1 - 3.1515313 / 16 = 0.8030293
        # sigmoid(-10) = 4.539787e-5: 1 + 8 * 4.539787e-5 = 1.0003632; 10 (1 - 1.0003632 / 2)
        (10.0, 0, 4.9981841),
        # sigmoid(-0.1) = 0.4750208: 1 + 3.8001664 = 4.8001664; 0.1 (1 - 4.8001664 / 8)
        (0.1, 2, 0.0399979),
    ],
)
def test_r_of_t_and_stage_by_hand(t, stage, expected):
    r = ect.ect_r(jnp.asarray([t], jnp.float32), jnp.int32(stage), 2.0, 8.0, 1.0)
    np.testing.assert_allclose(r, [expected], rtol=1e-5, atol=1e-7)


def test_stage_doubles_every_interval():
    """CIFAR-10: 3.2 Mimg / batch 128 = 25,000 steps per stage."""
    steps = jnp.asarray([0, 24_999, 25_000, 49_999, 50_000, 199_999])
    np.testing.assert_array_equal(ect.ect_stage(steps, 25_000), [0, 0, 1, 1, 2, 7])


def test_l2_loss_of_identity_network_is_the_noise_norm():
    """D(x, s) = x: student - teacher = (t - r) eps (r > 0) and t eps - 0 (r = 0, target y),
    so the L2 norm over the sample is (t - r) ||eps|| and the 1/(t - r) weight leaves ||eps||:
    loss = mean_b ||eps_b||, whatever t and r."""
    identity = lambda params, x, sigma, labels, train, rng: x
    batch, rng = _batch(), jax.random.key(7)
    loss, metrics = ect.ect_loss(identity, {}, batch, rng, 30_000, **ECT)
    _, _, eps = _replay(rng, 30_000, batch["image"].shape)
    expected = np.mean(np.linalg.norm(eps.reshape(6, -1).astype(np.float64), axis=1))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    assert int(metrics["stage"]) == 1


def test_pseudo_huber_loss_weighted_by_one_over_t_minus_r():
    """loss = mean_b (sqrt((t - r)^2 ||eps||^2 + c^2) - c) / (t - r), c = 0.5 sqrt(48)."""
    identity = lambda params, x, sigma, labels, train, rng: x
    batch, rng, step = _batch(), jax.random.key(8), 30_000  # stage 1
    kw = ECT | dict(distance=losses.pseudo_huber, c_factor=0.5)
    loss, _ = ect.ect_loss(identity, {}, batch, rng, step, **kw)
    t, r, eps = _replay(rng, step, batch["image"].shape)
    sq = np.sum(eps.reshape(6, -1).astype(np.float64) ** 2, axis=1)
    c = 0.5 * math.sqrt(48)
    expected = np.mean((np.sqrt((t - r) ** 2 * sq + c**2) - c) / (t - r))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    assert 0 < np.mean(r == 0) < 1  # both branches occur in this batch


def test_student_and_teacher_share_noise_and_dropout_key_and_r_zero_targets_the_data():
    """Calls: student (y + t eps, t), teacher (y + r eps, r), one eps, one dropout key, both in
    training mode. Where r = 0 the teacher's output (NaN here: ln 0 labels) is replaced by y."""
    calls = []

    def spy(params, x, sigma, labels, train, rng):
        calls.append((np.asarray(x), np.asarray(sigma), jax.random.key_data(rng), train))
        return jnp.where((sigma == 0)[:, None, None, None], jnp.nan, 2.0 * x)

    batch, rng = _batch(), jax.random.key(3)
    loss, _ = ect.ect_loss(spy, {}, batch, rng, 25_000, **ECT)
    (x_s, t_s, key_s, train_s), (x_t, r_t, key_t, train_t) = calls
    t, r, eps = _replay(rng, 25_000, batch["image"].shape)
    y = np.asarray(batch["image"])
    np.testing.assert_allclose(t_s, t, rtol=1e-5)
    np.testing.assert_allclose(r_t, r, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(x_s, y + t[:, None, None, None] * eps, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(x_t, y + r_t[:, None, None, None] * eps, rtol=1e-5, atol=1e-5)
    assert np.array_equal(key_s, key_t) and train_s and train_t
    # The expected loss: target 2 (y + r eps) where r > 0, y where r = 0 (no NaN survives).
    target = np.where((r > 0)[:, None, None, None], 2.0 * x_t, y)
    dist = np.linalg.norm((2.0 * x_s - target).reshape(6, -1).astype(np.float64), axis=1)
    assert 0 < np.mean(r == 0) < 1
    np.testing.assert_allclose(loss, np.mean(dist / (t - r)), rtol=1e-4)


def test_no_gradient_flows_through_the_teacher():
    """grad of the ECT loss == grad of the same loss with the teacher output a constant, and !=
    the gradient when the teacher is differentiated too (linear network p x (1 + 0.1 s))."""

    def net(p, x, sigma, labels, train, rng):
        return p["w"] * x * (1 + 0.1 * sigma[:, None, None, None])

    w, batch, rng, step = {"w": jnp.array(1.3)}, _batch(), jax.random.key(5), 80_000
    loss_of = lambda p: ect.ect_loss(net, p, batch, rng, step, **ECT)[0]
    t, r, eps = _replay(rng, step, batch["image"].shape)
    assert np.all(r > 0)  # stage 3: every level pairs with a teacher level here
    y, t32, r32 = batch["image"], jnp.asarray(t, jnp.float32), jnp.asarray(r, jnp.float32)
    x_t, x_r = y + t32[:, None, None, None] * eps, y + r32[:, None, None, None] * eps
    teacher = net(w, x_r, r32, None, True, None)

    def student_only(p):
        return jnp.mean(losses.l2_norm(net(p, x_t, t32, None, True, None), teacher) / (t32 - r32))

    def both(p):
        d = losses.l2_norm(net(p, x_t, t32, None, True, None), net(p, x_r, r32, None, True, None))
        return jnp.mean(d / (t32 - r32))

    grad = jax.grad(loss_of)(w)["w"]
    np.testing.assert_allclose(grad, jax.grad(student_only)(w)["w"], rtol=1e-4)
    assert abs(float(jax.grad(both)(w)["w"]) - float(grad)) > 1e-3


class _Affine:
    """A stand-in network F(x, c_noise) = 3 x + c_noise."""

    def apply(self, variables, x, c_noise, labels, train, rngs):
        return 3.0 * x + c_noise[:, None, None, None]


def test_edm_denoiser_in_training_boundary_form_at_sampling():
    """train: EDM's c_skip = sd^2 / (s^2 + sd^2), c_out = s sd / sqrt(s^2 + sd^2); sample: CM's
    form with sigma_min = 0.003, identity at s = sigma_min; c_in and c_noise = ln(s)/4 in both."""
    c = cifar10_ect.get_config()
    d = methods.get("ect").parameterization(c, _Affine())
    x, s = jnp.ones((1, 2, 2, 1)), 0.5
    c_in, label = 1 / math.sqrt(0.5), math.log(0.5) / 4
    # EDM at s = 0.5: c_skip = 0.25 / 0.5 = 0.5, c_out = 0.25 / sqrt(0.5)
    edm = 0.5 + 0.25 / math.sqrt(0.5) * (3 * c_in + label)
    np.testing.assert_allclose(d.train({}, x, jnp.array([s])), edm, rtol=1e-6)
    # CM at s = 0.5, smin = 0.003: c_skip = 0.25 / (0.497^2 + 0.25), c_out = 0.5 * 0.497 / sqrt(0.5)
    cm_form = 0.25 / (0.497**2 + 0.25) + 0.5 * 0.497 / math.sqrt(0.5) * (3 * c_in + label)
    np.testing.assert_allclose(d.sample({}, x, jnp.array([s])), cm_form, rtol=1e-6)
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 1))
    assert jnp.array_equal(d.sample({}, x, jnp.full((2,), 0.003, jnp.float32)), x)


def test_cifar10_ect_config_is_the_authors_recipe():
    c = cifar10_ect.get_config()
    m, t = c.method, c.training
    assert (m.name, m.p_mean, m.p_std, m.ect_q, m.ect_k, m.ect_b) == ("ect", -1.1, 2.0, 2, 8, 1)
    assert (m.distance, m.noise_label, m.sigma_min) == ("l2_norm", "log_sigma_over_4", 0.003)
    assert not m.ect_clip_denoised  # generator_fn re-noises the raw estimate
    assert m.ect_double_images // t.batch_size == 25_000  # 250 ticks x 12.8 kimg / 128
    assert (t.batch_size, t.num_steps, t.ema_rates) == (128, 200_000, (0.9999,))  # 25.6 Mimg
    assert (c.optim.name, c.optim.learning_rate, c.model.dropout) == ("radam", 1e-4, 0.2)
    assert c.augment.p == 0 and not c.data.random_flip and c.model.augment_dim == 9
    assert c.sampling.consistency_levels == ((), (0.821,))
    config_checks.check(c, "train")


@pytest.mark.parametrize(
    "variant,steps,images",
    [
        ("", 200_000, 25_600_000),  # run_ecm.sh: --duration=25.6 Mimg, a stage every 3.2 Mimg
        ("400k", 400_000, 51_200_000),  # README's 400k row; 6.4 Mimg a stage (our inference)
    ],
)
def test_cifar10_ect_variants_total_images_and_stages(variant, steps, images):
    """Both runs have 8 stages (stage 0 to 7 at the last step) at batch 128."""
    c = cifar10_ect.get_config(variant)
    batch = c.training.batch_size
    assert (batch, c.training.num_steps, c.training.num_steps * batch) == (128, steps, images)
    double_steps = c.method.ect_double_images // batch  # the objective's stage interval
    assert double_steps * batch == c.method.ect_double_images  # a whole number of steps
    assert int(ect.ect_stage(c.training.num_steps - 1, double_steps)) + 1 == 8
    assert int(ect.ect_stage(double_steps, double_steps)) == 1  # the first doubling
    config_checks.check(c, "train")


def test_stage_interval_must_be_whole_steps():
    c = tiny_config(method__name="ect")
    c.method.ect_double_images = 12  # batch 8
    with pytest.raises(ValueError, match=r"^method.ect_double_images=12 is invalid: .*multiple"):
        config_checks.check(c, "train")


def test_jitted_step_compiles_once_across_stages():
    """The stage comes from the traced step: 3 steps in 3 stages, one compilation."""
    c = tiny_config(method__name="ect")
    c.method.ect_double_images = c.training.batch_size  # a new stage every step
    net = lambda p, x, sigma, labels, train, rng: p["w"] * x
    exp = experiment.Experiment(
        method=ect.METHOD,
        model=None,
        denoise=net,
        loss_fn=ect.objective(c, Denoisers(train=net, sample=net, teacher=None)),
        tx=state.make_optimizer(c.optim),
        mesh=experiment.make_mesh(),
    )
    step_fn = train.make_train_step(exp, (0.999,), c.seed)
    train_state = jax.device_put(state.create({"w": jnp.float32(1.0)}, exp.tx, 1), exp.replicated)
    batch = {"image": np.zeros((8, 8, 8, 1), np.float32), "label": np.zeros((8,), np.int32)}
    stages = []
    for _ in range(3):
        train_state, metrics = step_fn(train_state, train.global_batch(batch, exp))
        stages.append(int(metrics["stage"]))
    assert stages == [0, 1, 2] and step_fn._cache_size() == 1
