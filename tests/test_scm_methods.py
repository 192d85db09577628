"""sct, scd and meanflow on the method table (cm/methods/sct.py, cm/methods/meanflow.py):
--mode=summary on the demo config, their config checks and samplers, the production jitted
step (one compile across the tangent warm-up, w(t) trained, sCD's teacher frozen)
and the 4-device step equal to 1 device."""

import helpers
import jax
import numpy as np
import pytest
from helpers import tiny_config

from cm import config_checks, experiment, train, train_step
from cm.data import batches, sources
from cm.methods import sct
from configs import cifar10_meanflow
from configs.demo import get_config as demo_config


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def _equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(_leaves(a), _leaves(b), strict=True))


@pytest.fixture(scope="module")
def edm_source(tmp_path_factory):
    """A tiny EDM run's workdir (random parameters, step 3), as sCD's method.init_from; returns
    (workdir, its first EMA)."""
    workdir = str(tmp_path_factory.mktemp("edm_source"))
    return workdir, helpers.edm_source(workdir)


def test_only_meanflow_networks_read_a_second_time_label():
    """The table entry's second_noise_label reaches the network: on the demo config MeanFlow's
    mapping layer reads twice the embedding width (--mode=summary of every method is
    tests/test_method_contract.py's)."""
    width = {}
    for name in ("sct", "meanflow", "ict"):
        c = demo_config()
        c.method.name = name
        exp = experiment.build(c)
        assert exp.model.second_noise_label == (name == "meanflow")
        width[name] = experiment.param_shapes(exp, c)["map_layer0"]["kernel"].shape[0]
    assert width["meanflow"] == 2 * width["sct"] == 2 * width["ict"]


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"method__name": "scd"}, r"method\.trig_form='trigflow' is invalid.*edm"),
        ({"method__name": "sct", "method__scm_tangent_norm": "max"}, r"scm_tangent_norm"),
        ({"method__name": "sct", "sampling__trigflow_mid_times": ((1.6,),)}, r"trigflow_mid"),
        ({"method__name": "meanflow", "sampling__meanflow_times": ((1.0, 0.5),)}, r"meanflow_t"),
        ({"method__name": "meanflow", "method__mf_equal_fraction": 1.5}, r"mf_equal_fraction"),
    ],
)
def test_bad_fields_are_one_sentence(overrides, match):
    with pytest.raises(ValueError, match=match):
        config_checks.check(tiny_config(**overrides), "summary")


@pytest.mark.parametrize(
    "form, noise_label, time_scale, expected",
    [
        # edm form: the label's slope per unit ln sigma (d ln sigma / dt = 1 / (cos t sin t)):
        # 250 ln sigma -> 250; ln(sigma) / 4 -> 0.25.
        ("edm", "250_log_sigma", 1.0, 250.0),
        ("edm", "log_sigma_over_4", 1.0, 0.25),
        # trigflow form, c = s t: s cos t sin t peaks at t = pi / 4 with s / 2 (the 64-point
        # grid misses pi / 4 by at most 0.012, so cos t sin t >= 0.5 - 0.0002 there).
        ("trigflow", "250_log_sigma", 1.0, 0.5),
        ("trigflow", "250_log_sigma", 1000.0, 500.0),
    ],
)
def test_label_time_tangent_by_hand(form, noise_label, time_scale, expected):
    c = tiny_config(method__name="sct", method__trig_form=form, method__noise_label=noise_label)
    c.method.trig_time_scale = time_scale
    assert sct.label_time_tangent(c) == pytest.approx(expected, rel=5e-4)


def test_a_label_with_a_steep_time_tangent_is_warned_about(caplog):
    """sCD through the demo's 250 ln(sigma) label diverged on the digits (BENCHMARKS.md): the
    checks say so; EDM's own ln(sigma) / 4 passes silently."""
    c = tiny_config(method__name="sct", method__trig_form="edm")
    c.method.noise_label = "250_log_sigma"
    with caplog.at_level("WARNING"):
        config_checks.check(c, "summary")
    assert "500x sCM's c_noise(t) = t" in caplog.text
    caplog.clear()
    c.method.noise_label = "log_sigma_over_4"
    with caplog.at_level("WARNING"):
        config_checks.check(c, "summary")
    assert "c_noise(t) = t" not in caplog.text


def _run(config, devices, steps):
    """`steps` production steps (train_step.make_train_step) on the digits; returns the final
    state on the host, the losses, the compile count and the step-0 state."""
    exp = experiment.build(config, devices)
    step_fn = train_step.make_train_step(exp, tuple(config.training.ema_rates), config.seed)
    st = experiment.init_state(exp, config)
    first = jax.device_get(st)
    source = sources.load_source(config.data)
    losses = []
    for k in range(steps):
        local = batches.batch_at(source, k, config.training.batch_size, config.seed, False)
        st, metrics = step_fn(st, train.global_batch(local, exp))
        losses.append(float(metrics["loss"]))
    return jax.device_get(st), losses, step_fn._cache_size(), first


@pytest.mark.slow  # the sCD step with its teacher: about 20 s on 2 busy cores
def test_scd_trains_student_and_weighting_but_not_the_teacher(edm_source):
    c = tiny_config(
        method__name="scd",
        method__trig_form="edm",
        method__init_from=edm_source[0],
        method__scm_tangent_warmup_steps=2,
    )
    final, losses, compiles, first = _run(c, jax.devices()[:1], 3)
    assert compiles == 1 and np.isfinite(losses).all()
    assert _equal(first.extra["teacher"], edm_source[1])  # the student starts as the teacher
    assert _equal(final.extra["teacher"], edm_source[1])  # ... which never moves
    assert _equal(first.params, edm_source[1]) and not _equal(final.params, edm_source[1])
    assert not _equal(final.aux, first.aux)


@pytest.mark.slow  # two JVP step compiles (1 and 4 devices): about 50 s on 2 busy cores
@pytest.mark.parametrize("name", ["sct", "meanflow"])
def test_one_compile_across_warmup_and_four_devices_equal_one_device(name):
    """Steps 0 and 1 straddle the end of the tangent warm-up (r = 0, then 1) in one compiled
    step; sCT's w(t) is trained; MeanFlow runs its CIFAR-10 recipe's augmentation (6 labels,
    drawn on the global batch) and trains the label layer; 4 devices give the 1-device losses
    and parameters."""
    assert jax.device_count() == 4
    c = tiny_config(method__name=name, method__scm_tangent_warmup_steps=1)
    c.model.dropout = 0.1  # one dropout mask per sample whatever the sharding
    c.model.channel_mult = (1,)  # one resolution: the JVP step's compile dominates this test
    if name == "meanflow":
        c.augment = cifar10_meanflow.get_config().augment
        c.augment.p = 0.5  # draw often in a batch of 8
        c.model.augment_dim = 6
        c.optim.name = "adam"  # the recipe's; RAdam's first SGD-like steps move the label layer
        # (behind the 1e-5 output layer) by less than float32 resolves
    one, loss_one, compiles, first = _run(c, jax.devices()[:1], 2)
    four, loss_four, _, _ = _run(c, jax.devices(), 2)
    assert compiles == 1 and int(one.step) == 2 and np.isfinite(loss_one).all()
    assert not _equal(one.params, first.params)
    if name == "sct":
        assert not _equal(one.aux, first.aux) and not jax.tree.leaves(one.extra)
    else:
        assert not _equal(one.params["map_augment"], first.params["map_augment"])
    np.testing.assert_allclose(loss_one, loss_four, rtol=1e-5)
    trained = lambda s: (s.params, getattr(s, "aux", ()))  # noqa: E731
    for a, b in zip(_leaves(trained(one)), _leaves(trained(four)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["cifar10_sct", "cifar10_scd", "cifar10_meanflow"])
def test_paper_configs_pass_the_checks(name):
    import importlib

    c = importlib.import_module(f"configs.{name}").get_config()
    config_checks.check(c, "summary")
    assert c.method.name == name.split("_")[1]


def test_tangent_norms_of_the_paper_and_fastgen():
    from cm.methods import sct

    g = np.ones((1, 2, 2, 1), np.float32)  # D = 4: ||g||_2 = 2, rms = 2 / sqrt(4) = 1
    l2, n2 = sct.normalize_tangent(g, 0.1, "l2")
    rms, nr = sct.normalize_tangent(g, 0.1, "rms")
    np.testing.assert_allclose(n2, [2.0])
    np.testing.assert_allclose(nr, [1.0])
    np.testing.assert_allclose(l2, g / 2.1, rtol=1e-6)
    np.testing.assert_allclose(rms, g / 1.1, rtol=1e-6)


def test_sampler_specs_are_the_config_levels():
    from cm import methods

    c = tiny_config(method__name="sct")
    assert methods.get("sct").sampler.name == methods.get("scd").sampler.name == "trigflow"
    assert methods.sampler_specs(c) == {"1step": (), "2step": (1.1,)}
    c.method.name = "meanflow"
    assert methods.get("meanflow").sampler.name == "meanflow"
    assert methods.sampler_specs(c) == {"1step": (1.0, 0.0), "2step": (1.0, 0.5, 0.0)}
