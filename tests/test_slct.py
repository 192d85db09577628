"""sLCT (docs/methods.md section 3): Cauchy distance, adaptive c(N), low-noise diffusion loss, OT
coupling and their wiring into the iCT objective, the training loop and the configs."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cm import keys, methods, schedules
from cm.data import coupling
from cm.methods import ict, losses
from tests.helpers import tiny_config

SD, SMIN, SMAX, RHO = 0.5, 0.002, 80.0, 7.0


# ---------------------------------------------------------------- Cauchy distance, c(N)


def test_cauchy_is_log1p_of_mean_square_over_2c2():
    a = np.arange(24, dtype=np.float32).reshape(2, 2, 3, 2) / 10
    b = np.zeros_like(a)
    c = 0.3
    # Sample 0: elements 0.0 .. 1.1, mean of squares = sum(k^2, k<12) / 100 / 12.
    mean_sq0 = sum(k * k for k in range(12)) / 100 / 12
    mean_sq1 = sum(k * k for k in range(12, 24)) / 100 / 12
    want = [math.log(1 + mean_sq0 / (2 * c * c)), math.log(1 + mean_sq1 / (2 * c * c))]
    np.testing.assert_allclose(losses.cauchy(a, b, c), want, rtol=1e-6)
    assert losses.get_distance("cauchy") is losses.cauchy


def test_pseudo_huber_lct_is_on_the_mean_over_elements():
    # sqrt(mean((a - b)^2) + c^2) - c, as the sLCT authors' code runs iLCT. Sample 0: diffs
    # (3, 4, 0, 0) -> mean of squares 25 / 4 = 6.25, c = 2: sqrt(6.25 + 4) - 2 = 1.2015621.
    # Sample 1: diffs all 1 -> mean 1: sqrt(1 + 4) - 2 = 0.2360680.
    a = np.array([[3.0, 4.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]], np.float32).reshape(2, 2, 2, 1)
    b = np.zeros_like(a)
    want = [math.sqrt(10.25) - 2.0, math.sqrt(5.0) - 2.0]
    np.testing.assert_allclose(losses.pseudo_huber_lct(a, b, 2.0), want, rtol=1e-6)
    # iCT's form sums instead: sqrt(25 + 4) - 2 for sample 0, a different number.
    assert abs(float(losses.pseudo_huber(a, b, 2.0)[0]) - want[0]) > 1.0
    assert losses.get_distance("pseudo_huber_lct") is losses.pseudo_huber_lct


@pytest.mark.parametrize(
    "n, c",
    [(11, 0.03456), (21, 0.013635), (41, 0.006144), (81, 0.002769), (161, 0.001248)]
    + [(321, 0.000562), (641, 0.000253)],
)
def test_adaptive_c_matches_the_section_3_table(n, c):
    first = losses.huber_c(4 * 32 * 32, 0.00054)  # 0.03456 for 4x32x32
    got = schedules.slct_cauchy_c(n, 10, first, -1.15, -0.85)
    np.testing.assert_allclose(float(got), c, atol=5e-7)  # the table has 6 decimals


def test_adaptive_c_follows_the_curriculum_inside_jit():
    c_of_step = jax.jit(
        lambda k: schedules.slct_cauchy_c(
            schedules.ict_num_scales(k, 700, 10, 640), 10, 0.5, -1.15, -0.85
        )
    )
    # K' = floor(700 / (log2 64 + 1)) = 100: N = 11 until step 99, then 21, ..., 641 from 600.
    np.testing.assert_allclose(float(c_of_step(99)), 0.5)
    np.testing.assert_allclose(float(c_of_step(100)), math.exp(-1.15 * math.log(20) - 0.85), 1e-6)
    np.testing.assert_allclose(float(c_of_step(650)), math.exp(-1.15 * math.log(640) - 0.85), 1e-6)


# ---------------------------------------------------------------- low-noise diffusion term


@pytest.mark.parametrize("n", [21, 41, 161, 641])
def test_low_noise_mask_selects_sigmas_up_to_0_170(n):
    sigmas = np.asarray(schedules.karras_sigmas(n, SMIN, SMAX, RHO, n))  # [N]
    mask = np.asarray(schedules.low_noise_mask(jnp.arange(n), n, 0.25))
    assert mask[: (n - 1) // 4 + 1].all() and not mask[(n - 1) // 4 + 1 :].any()
    np.testing.assert_allclose(sigmas[mask].max(), 0.1698, atol=5e-4)


def test_low_noise_mask_first_stage_takes_the_lowest_quarter_of_11():
    mask = np.asarray(schedules.low_noise_mask(jnp.arange(11), 11, 0.25))
    np.testing.assert_array_equal(np.flatnonzero(mask), [0, 1, 2])  # 2 <= 0.25 * 10 < 3


def test_diffusion_loss_averages_edm_weighted_mse_over_selected_only():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 2, 2, 1)).astype(np.float32)
    f = rng.standard_normal((4, 2, 2, 1)).astype(np.float32)
    sigma = np.array([0.01, 0.1, 1.0, 10.0], np.float32)
    selected = np.array([True, False, True, False])
    mse = ((f - x) ** 2).mean(axis=(1, 2, 3))
    w = 1 / sigma.astype(np.float64) ** 2 + 1 / SD**2
    want = (w[0] * mse[0] + w[2] * mse[2]) / 2  # mean over the 2 selected, not over 4
    got = ict.low_noise_diffusion_loss(f, x, sigma, selected, SD)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_diffusion_loss_is_zero_with_finite_gradient_when_nothing_is_selected():
    x = jnp.ones((3, 2, 2, 1))
    sigma = jnp.array([0.5, 1.0, 2.0])

    def loss(f):
        return ict.low_noise_diffusion_loss(f, x, sigma, jnp.zeros(3, bool), SD)

    assert float(loss(jnp.zeros_like(x))) == 0.0
    assert np.isfinite(np.asarray(jax.grad(loss)(jnp.zeros_like(x)))).all()


# ---------------------------------------------------------------- the objective, end to end


def _toy_denoise(calls):
    """f = c_skip x + c_out * w * x with a scalar parameter w; records every call's input."""

    def denoise(params, x, sigma, labels, train, rng):
        del labels, train, rng
        calls.append(x)
        s = sigma[:, None, None, None]
        c_skip = SD**2 / ((s - SMIN) ** 2 + SD**2)
        c_out = SD * (s - SMIN) / jnp.sqrt(s**2 + SD**2)
        return c_skip * x + c_out * params["w"] * x

    return denoise


def _slct_loss(calls, **switches):
    kw = dict(
        total_steps=700, s0=10, s1=640, sigma_min=SMIN, sigma_max=SMAX, rho=RHO,
        p_mean=-1.1, p_std=2.0, distance=losses.cauchy, c_factor=0.00054, adaptive_c=True,
        diffusion_weight=5.0, diffusion_quantile=0.25, sigma_data=SD, noise_from_batch=True,
    )  # fmt: skip
    kw.update(switches)
    return lambda p, b, r, s: ict.ict_loss(_toy_denoise(calls), p, b, r, s, **kw)


def _batch(b=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (b, 4, 4, 1)).astype(np.float32)
    return {"image": x, "noise": rng.standard_normal(x.shape).astype(np.float32)}


def test_slct_loss_matches_an_independent_computation_and_uses_two_network_calls():
    calls, batch, params, step, rng = [], _batch(), {"w": jnp.float32(0.3)}, 150, jax.random.key(3)
    loss, metrics = _slct_loss(calls)(params, batch, rng, step)
    assert len(calls) == 2  # student and teacher only: the diffusion term adds no network call

    # The same draws, then every formula again in float64 numpy.
    x, z = batch["image"].astype(np.float64), batch["noise"].astype(np.float64)
    n = 21  # step 150 of 700 with s1 = 640: second stage
    sig = np.asarray(schedules.karras_sigmas(n, SMIN, SMAX, RHO, 641), np.float64)
    logits = schedules.lognormal_index_logits(jnp.asarray(sig, jnp.float32), n, -1.1, 2.0)
    i = np.asarray(jax.random.categorical(jax.random.split(rng, 3)[0], logits, shape=(16,)))
    lo, hi = sig[i][:, None, None, None], sig[i + 1][:, None, None, None]

    def f(xn, s):
        c_skip = SD**2 / ((s - SMIN) ** 2 + SD**2)
        return c_skip * xn + SD * (s - SMIN) / np.sqrt(s**2 + SD**2) * 0.3 * xn

    student, teacher = f(x + hi * z, hi), f(x + lo * z, lo)
    c = math.exp(-1.15 * math.log(20) - 0.85)
    dist = np.log1p(((student - teacher) ** 2).mean(axis=(1, 2, 3)) / (2 * c * c))
    ct = np.mean(dist / (sig[i + 1] - sig[i]))
    sel = (i + 1) <= 5  # sigma_{i+1} in the lowest quarter of 21 levels
    assert sel.any() and not sel.all()
    w = 1 / sig[i + 1] ** 2 + 1 / SD**2
    diff = np.sum((w * ((student - x) ** 2).mean(axis=(1, 2, 3)))[sel]) / sel.sum()
    np.testing.assert_allclose(float(metrics["ct_loss"]), ct, rtol=2e-5)
    np.testing.assert_allclose(float(metrics["diffusion_loss"]), diff, rtol=2e-5)
    np.testing.assert_allclose(float(loss), ct + 5 * diff, rtol=2e-5)
    np.testing.assert_allclose(float(metrics["c"]), c, rtol=1e-6)


def test_batch_noise_is_used_at_both_levels():
    calls, batch = [], _batch()
    _, metrics = _slct_loss(calls)({"w": jnp.float32(0.3)}, batch, jax.random.key(3), 150)
    student_in, teacher_in = (np.asarray(c) for c in calls)
    # Both inputs are x + sigma * noise with the batch's noise: the same direction per sample.
    ds, dt = student_in - batch["image"], teacher_in - batch["image"]
    z = batch["noise"].reshape(16, -1)
    for d in (ds, dt):
        ratio = d.reshape(16, -1) / z  # [B, d]: one sigma per row
        np.testing.assert_allclose(ratio, ratio[:, :1] * np.ones_like(ratio), rtol=2e-3)
    assert np.all(np.abs(ds).reshape(16, -1).sum(1) > np.abs(dt).reshape(16, -1).sum(1))


def test_ot_objective_without_coupled_noise_raises_one_sentence():
    batch = {"image": _batch()["image"]}
    with pytest.raises(ValueError, match="ot_coupling"):
        _slct_loss([])({"w": jnp.float32(0.3)}, batch, jax.random.key(0), 0)


def test_switches_off_is_plain_ict_loss():
    batch, params, rng = _batch(), {"w": jnp.float32(0.3)}, jax.random.key(1)
    off = dict(distance=losses.pseudo_huber, adaptive_c=False, diffusion_weight=0.0)
    loss, m = _slct_loss([], noise_from_batch=False, **off)(params, batch, rng, 150)
    assert "diffusion_loss" not in m
    np.testing.assert_allclose(float(m["c"]), 0.00054 * 4)  # 0.00054 sqrt(16)
    plain = dict(total_steps=700, s0=10, s1=640, sigma_min=SMIN, sigma_max=SMAX, rho=RHO)
    plain |= dict(p_mean=-1.1, p_std=2.0, distance=losses.pseudo_huber, c_factor=0.00054)
    want, _ = ict.ict_loss(_toy_denoise([]), params, batch, rng, 150, **plain)
    assert float(loss) == float(want)


# ---------------------------------------------------------------- OT assignment


@pytest.mark.parametrize("b, seed", [(2, 0), (4, 1), (5, 2), (6, 3), (6, 4)])
def test_ot_permutation_is_optimal_against_brute_force(b, seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (b, 3, 3, 2)).astype(np.float32)
    z = rng.standard_normal(x.shape).astype(np.float32)
    perm = coupling.ot_permutation(x, z)
    assert sorted(perm.tolist()) == list(range(b))  # a permutation of the noise batch

    def cost(p):
        return sum(float(np.sum((x[i] - z[p[i]]) ** 2, dtype=np.float64)) for i in range(b))

    best = min(cost(p) for p in itertools.permutations(range(b)))
    np.testing.assert_allclose(cost(perm), best, rtol=1e-9)
    assert cost(perm) <= cost(range(b)) + 1e-9


def test_couple_batch_is_per_group_and_a_function_of_seed_step_group():
    x = np.random.default_rng(0).uniform(-1, 1, (12, 2, 2, 1)).astype(np.float32)
    noise = coupling.couple_batch(x, step=7, seed=0, group_size=4, first_group=2)
    assert noise.shape == x.shape and noise.dtype == np.float32
    for k in range(3):
        rows = slice(4 * k, 4 * k + 4)
        z = coupling.group_noise(0, 7, 2 + k, (4, 2, 2, 1))
        # Each group's noise is its own draw, permuted to the optimal pairing with its rows.
        np.testing.assert_array_equal(noise[rows], z[coupling.ot_permutation(x[rows], z)])
    again = coupling.couple_batch(x, 7, 0, 4, 2)
    np.testing.assert_array_equal(noise, again)
    assert not np.array_equal(noise, coupling.couple_batch(x, 8, 0, 4, 2))
    with pytest.raises(ValueError, match="ot_group_size=5 does not divide the 12 rows"):
        coupling.couple_batch(x, 7, 0, 5, 0)


def test_groups_must_tile_each_process_rows():
    assert coupling.check_groups(256, 128) == 2
    assert coupling.check_groups(256, 64, process_count=2) == 2
    with pytest.raises(ValueError, match=r"ot_group_size=128 .* 64 rows .* 4 process"):
        coupling.check_groups(256, 128, process_count=4)  # a group would span two processes
    c = tiny_config(method__ot_coupling=True)  # batch 8 < the default group of 128
    with pytest.raises(ValueError, match="--config.method.ot_group_size"):
        methods.make_objective(c, _toy_denoise([]))


def test_coupled_noise_is_the_same_on_1_or_4_devices_and_any_process_split():
    # Groups of 4 rows over a batch of 8: on 4 devices a group spans 2 device shards, on 1
    # device the device holds both groups; the noise must not notice.
    c = tiny_config(method__ot_coupling=True, method__ot_group_size=4)
    x = np.random.default_rng(3).uniform(-1, 1, (8, 8, 8, 1)).astype(np.float32)

    def noise(num_devices, process_index=0, process_count=1):
        rows = slice(process_index * 8 // process_count, (process_index + 1) * 8 // process_count)
        it = coupling.wrap_if_enabled(
            iter([{"image": x[rows]}]), c, num_devices, 5, process_index, process_count
        )
        out = next(it)["noise"]
        it.close()
        return out

    one = noise(1)
    np.testing.assert_array_equal(one, noise(4))
    halves = np.concatenate([noise(4, 0, 2), noise(4, 1, 2)])  # 2 processes of 2 devices
    np.testing.assert_array_equal(one, halves)
    z = coupling.group_noise(c.seed, 5, 1, (4, 8, 8, 1))  # the second group, at step 5
    np.testing.assert_array_equal(one[4:], z[coupling.ot_permutation(x[4:], z)])


def test_coupled_batches_resume_mid_stream_with_the_same_noise():
    def stream(start):
        return iter({"image": np.full((4, 2, 2, 1), k, np.float32)} for k in range(start, 10))

    full = coupling.CoupledBatches(stream(0), 0, seed=1, group_size=2, first_group=0, threads=2)
    first = [next(full) for _ in range(5)]
    full.close()
    resumed = coupling.CoupledBatches(stream(3), 3, seed=1, group_size=2, first_group=0)
    np.testing.assert_array_equal(next(resumed)["noise"], first[3]["noise"])
    resumed.close()


# ---------------------------------------------------------------- training loop and configs


@pytest.mark.slow
def test_ot_train_step_gives_the_same_numbers_on_1_and_4_devices():
    from cm import experiment, state, train

    c = tiny_config(
        method__distance="cauchy",
        method__adaptive_c=True,
        method__diffusion_weight=5.0,
        method__ot_coupling=True,
        method__ot_group_size=4,  # 2 groups; on 4 devices each spans 2 shards of 2 rows
        method__s1=640,
    )
    assert c.training.batch_size == 8 and len(jax.devices()) == 4
    denoise = _toy_denoise([])
    rng = np.random.default_rng(0)
    local = {
        "image": rng.uniform(-1, 1, (8, 8, 8, 1)).astype(np.float32),
        "label": np.arange(8, dtype=np.int32),
    }
    plain = iter([local])
    assert coupling.wrap_if_enabled(plain, tiny_config(), 4, 0) is plain  # OT off: untouched

    results = []
    for devices in (jax.devices()[:1], jax.devices()):
        exp = experiment.Experiment(
            method=methods.get(c.method.name),
            model=None,
            denoise=denoise,
            loss_fn=methods.make_objective(c, denoise),
            tx=state.make_optimizer(c.optim),
            mesh=experiment.make_mesh(devices),
        )
        batches = coupling.wrap_if_enabled(iter([local]), c, exp.mesh.size, start_step=0)
        batch = next(batches)
        batches.close()
        for k in range(2):  # each group of 4 rows is coupled with that group's own noise
            rows = batch["image"][4 * k : 4 * k + 4]
            z = coupling.group_noise(c.seed, 0, k, rows.shape)
            np.testing.assert_array_equal(
                batch["noise"][4 * k : 4 * k + 4], z[coupling.ot_permutation(rows, z)]
            )
        params = {"w": jnp.float32(0.3)}
        want, _ = exp.loss_fn(params, batch, keys.indexed(c.seed, "train", 0), 0)
        start = jax.device_put(state.create(params, exp.tx, 1), exp.replicated)  # donated
        step_fn = train.make_train_step(exp, (0.999,), c.seed)
        new, metrics = step_fn(start, train.global_batch(batch, exp))
        np.testing.assert_allclose(float(metrics["loss"]), float(want), rtol=1e-5)
        assert int(new.step) == 1 and float(new.params["w"]) != 0.3
        results.append((batch["noise"], float(metrics["loss"]), float(new.params["w"])))
    (noise1, loss1, w1), (noise4, loss4, w4) = results
    np.testing.assert_array_equal(noise1, noise4)
    np.testing.assert_allclose([loss4, w4], [loss1, w1], rtol=1e-6)


def test_celebahq256_slct_config_is_the_paper_recipe_and_ilct_the_baseline():
    from configs import celebahq256_slct

    c = celebahq256_slct.get_config()
    m = c.method
    assert (m.distance, m.adaptive_c, m.diffusion_weight, m.ot_coupling) == (
        "cauchy",
        True,
        5.0,
        True,
    )
    assert (m.s0, m.s1, m.diffusion_quantile, c.model.norm) == (10, 640, 0.25, "nsln")
    assert (c.optim.name, c.optim.learning_rate, c.optim.weight_decay) == ("radam", 1e-4, 1e-4)
    # Where paper and code differ, the authors' code: RAdam eps 1e-4, evaluation EMA 0.9999
    # first (sampling uses ema[0]) with the paper's 0.99993 beside it, sd-vae-ft-ema, OT
    # groups of 128.
    assert c.optim.eps == 1e-4 and m.ot_group_size == 128
    assert tuple(c.training.ema_rates) == (0.9999, 0.99993) and c.sampling.params == "ema"
    assert "/sd-vae-ft-ema/" in c.vae.weights_path
    assert (c.data.name, c.data.image_size, c.data.channels, c.model.name) == (
        "latents",
        32,
        4,
        "adm",
    )
    (one, two) = c.sampling.consistency_levels
    assert one == () and abs(two[0] - 0.369) < 1e-3  # index 440 of 641 from sigma_max
    b = celebahq256_slct.get_config("ilct")
    mb = b.method
    assert (mb.distance, mb.adaptive_c, mb.diffusion_weight, mb.ot_coupling) == (
        "pseudo_huber_lct", False, 0.0, False
    )  # fmt: skip
    assert (mb.s1, b.model.norm) == (1280, "group")
    with pytest.raises(ValueError, match="no variant 'slcd'.*celebahq256_slct.py:ilct"):
        celebahq256_slct.get_config("slcd")
