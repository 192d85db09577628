"""TrigFlow diffusion (cm/methods/trigflow_diffusion.py, docs/methods.md section 9): the velocity
target by hand, the loss against a float64 replay and against EDM's loss through the edm form,
the Heun sampler's denoiser by hand; sCT's starting points: the warning when it starts from
nothing, the sources it accepts, and the configs' variants (the table entry's training and
sampling run in tests/test_method_contract.py)."""

import json
import math
import shutil

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_config

from cm import experiment, precond, train
from cm.methods import augment, edm, sct, trigflow
from cm.methods import trigflow_diffusion as tfd
from configs import cifar10_edm, cifar10_sct, cifar10_trigflow

SD = 0.5


class _LinearNet:
    """A stand-in network with flax's apply signature: net(x, c) = a x + b c (per sample), plus
    0.2 times the sum of the augmentation labels when it gets them."""

    def apply(self, variables, x, c_noise, labels, train=False, rngs=None, augment_labels=None):
        p = variables["params"]
        out = p["a"] * x + p["b"] * c_noise[:, None, None, None]
        if augment_labels is not None:
            out = out + 0.2 * jnp.sum(augment_labels, axis=1)[:, None, None, None]
        return out


PARAMS = {"a": jnp.float32(0.7), "b": jnp.float32(-0.3)}


def _batch(b=6):
    x = jax.random.uniform(jax.random.key(1), (b, 4, 4, 3), minval=-1, maxval=1)
    return {"image": x, "label": jnp.zeros((b,), jnp.int32)}


def test_velocity_target_by_hand():
    # x0 = 1, z = 2: v = cos t * 2 - sin t * 1.
    # t = 0: 2;  t = pi/2: -1;  t = pi/3: 0.5 * 2 - 0.8660254 = 0.1339746.
    x0 = jnp.ones((3, 1, 1, 1))
    z = 2.0 * jnp.ones((3, 1, 1, 1))
    t = jnp.array([0.0, math.pi / 2, math.pi / 3])
    v = tfd.velocity_target(x0, z, t)[:, 0, 0, 0]
    np.testing.assert_allclose(v, [2.0, -1.0, 0.1339746], rtol=1e-6, atol=1e-7)


def test_loss_matches_a_float64_replay():
    """F = a x_t + b t (the trigflow form of _LinearNet reads x_t / sd and t): the loss is the
    batch mean of mean((sd F - v_t)^2) with t, z replayed from the key split."""
    batch, rng = _batch(), jax.random.key(5)
    F = trigflow.make_flow(_LinearNet(), "trigflow", SD, 1.0, "log_sigma_over_4")
    loss, metrics = tfd.trigflow_diffusion_loss(
        F, PARAMS, batch, rng, 0, p_mean=-1.2, p_std=1.2, sigma_data=SD
    )
    k_time, k_noise, _ = jax.random.split(rng, 3)
    tau = -1.2 + 1.2 * np.asarray(jax.random.normal(k_time, (6,)), np.float64)
    t = np.arctan(np.exp(tau) / SD)[:, None, None, None]
    z = SD * np.asarray(jax.random.normal(k_noise, (6, 4, 4, 3)), np.float64)
    x0 = np.asarray(batch["image"], np.float64)
    x_t = np.cos(t) * x0 + np.sin(t) * z
    flow = 0.7 * x_t / SD - 0.3 * t
    expected = np.mean((SD * flow - (np.cos(t) * z - np.sin(t) * x0)) ** 2)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["t_mean"]), t.mean(), rtol=1e-5)


def test_edm_form_loss_is_sd_squared_times_edms_loss():
    """Through the edm form the same key gives the same sigma, noise and augmentation (flips,
    whose labels reach the network) as EDM's loss, and sd F - v_t = -(D - x0) /
    sin t with EDM's weight 1 / (sd sin t)^2: the TrigFlow loss is sd^2 = 0.25 times EDM's."""
    batch, rng = _batch(), jax.random.key(6)
    net = _LinearNet()
    D = precond.make_denoiser(net, "edm", "log_sigma_over_4", SD, 0.002)
    F = trigflow.make_flow(net, "edm", SD, 1.0, "log_sigma_over_4")
    losses = []
    for settings in (None, augment.Settings(p=1.0, xflip=1e8)):
        law = dict(p_mean=-1.2, p_std=1.2, sigma_data=SD, augment_settings=settings)
        edm_loss, _ = edm.edm_loss(D, PARAMS, batch, rng, 0, **law)
        tf_loss, _ = tfd.trigflow_diffusion_loss(F, PARAMS, batch, rng, 0, **law)
        assert float(edm_loss) > 0.1
        np.testing.assert_allclose(float(tf_loss), SD**2 * float(edm_loss), rtol=2e-5)
        losses.append(float(tf_loss))
    assert abs(losses[1] - losses[0]) > 1e-3 * losses[0]  # the augmentation took effect


def test_the_sampler_denoiser_by_hand_and_equal_to_edms_in_the_edm_form():
    """D(x, sigma) = f(cos t x, t): with F = 0, f = cos t x_t, so D = cos^2 t x =
    sd^2 / (sigma^2 + sd^2) x: 0.5 x at sigma = 0.5 and 0.25 / 6400.25 x at sigma = 80. In the
    edm form it is EDM's own denoiser of the same network."""
    zero = lambda params, x_t, t, *args: jnp.zeros_like(x_t)  # noqa: E731
    D = tfd.sigma_denoiser(trigflow.consistency_fn(zero, SD), SD)
    x = jnp.full((2, 1, 1, 1), 2.0)
    out = D({}, x, jnp.array([0.5, 80.0]))[:, 0, 0, 0]
    # float32 cos(arctan(160)) = 0.00625 loses ~2e-5 of its digits to the cancellation near pi/2.
    np.testing.assert_allclose(out, [1.0, 2.0 * 0.25 / 6400.25], rtol=1e-4)

    label = "log_sigma_over_4"  # (250 ln sigma would amplify float32's rounding of sd tan t)
    c = tiny_config(method__name="trigflow", method__trig_form="edm", method__noise_label=label)
    net = _LinearNet()
    sample = tfd.parameterization(c, net).sample
    edm_D = precond.make_denoiser(net, "edm", c.method.noise_label, SD, c.method.sigma_min)
    x = jax.random.normal(jax.random.key(2), (3, 4, 4, 1))
    sigma = jnp.array([0.01, 1.0, 80.0])
    np.testing.assert_allclose(sample(PARAMS, x, sigma), edm_D(PARAMS, x, sigma), rtol=1e-4)


class _StartedError(Exception):
    """Raised in place of the first step after training's start checks (the test stops there)."""


def _start(c, workdir, caplog, monkeypatch) -> str:
    """The warnings logged by train.train_and_evaluate's checks of a new run, stopped where it
    reads the frozen weights (the next thing it does), before anything is compiled or written."""

    def started(*args, **kwargs):
        raise _StartedError

    monkeypatch.setattr(experiment, "frozen_weights", started)
    caplog.clear()
    with caplog.at_level("WARNING"), pytest.raises(_StartedError):
        train.train_and_evaluate(c, workdir)
    return caplog.text


@pytest.fixture(scope="module")
def edm_run(tmp_path_factory):
    """A tiny EDM run's workdir (random parameters), relabelled as other methods' runs below."""
    workdir = str(tmp_path_factory.mktemp("edm_source"))
    helpers.edm_source(workdir)
    return workdir


def _relabelled(edm_run, tmp_path, name) -> str:
    """A copy of edm_run whose config.json records method.name = `name`."""
    copy = str(tmp_path / name)
    shutil.copytree(edm_run, copy)
    path = f"{copy}/config.json"
    with open(path) as f:
        record = json.load(f)
    record["method"]["name"] = name
    with open(path, "w") as f:
        json.dump(record, f)
    return copy


def test_sct_warns_when_it_starts_from_nothing(edm_run, tmp_path, caplog, monkeypatch):
    """One warning line (not an error) for sCT from random parameters; none from a TrigFlow
    diffusion run, nor for the other methods."""
    text = _start(tiny_config(method__name="sct"), str(tmp_path / "a"), caplog, monkeypatch)
    assert text.count(sct.SCT_SCRATCH_WARNING) == 1 and "\n" not in sct.SCT_SCRATCH_WARNING
    source = _relabelled(edm_run, tmp_path, "trigflow")
    c = tiny_config(method__name="sct", method__init_from=source)
    assert sct.SCT_SCRATCH_WARNING not in _start(c, str(tmp_path / "b"), caplog, monkeypatch)
    c = tiny_config(method__name="trigflow")
    assert sct.SCT_SCRATCH_WARNING not in _start(c, str(tmp_path / "c"), caplog, monkeypatch)


def test_sct_accepts_trigflow_edm_and_sct_sources_only(edm_run, tmp_path):
    for name in ("trigflow", "edm", "sct", "ict"):
        c = tiny_config(method__name="sct", method__init_from=_relabelled(edm_run, tmp_path, name))
        if name == "ict":
            with pytest.raises(ValueError, match=r"holds a 'ict' run, but method.name='sct'"):
                experiment.check_init_from(experiment.build(c), c)
        else:
            experiment.check_init_from(experiment.build(c), c)


def _network(c) -> dict:
    """What shapes the parameters and how the network reads its time: model, image and label
    fields, and the TrigFlow form."""
    m = c.method
    data = (c.data.image_size, c.data.channels, c.data.num_classes)
    form = (m.trig_form, m.trig_time_scale, m.noise_label, m.sigma_data)
    return {**c.model.to_dict(), "dropout": None, "data": data, "form": form}


def test_sct_variants_name_their_starting_points():
    scratch, tf_run = cifar10_sct.get_config(), cifar10_trigflow.get_config()
    from_tf, from_edm = cifar10_sct.get_config("trigflow"), cifar10_sct.get_config("edm")
    # :trigflow reads exactly the network a cifar10_trigflow run trains.
    assert _network(from_tf) == _network(tf_run) and tf_run.method.name == "trigflow"
    assert (from_tf.model.augment_dim, tf_run.augment.p, from_tf.augment.p) == (9, 0.12, 0.0)
    assert (from_tf.method.trig_form, from_tf.method.scm_p_std) == ("trigflow", 1.4)
    # :edm reads EDM's DDPM++ import through the edm form, FastGen's P_std 1.8.
    edm_model = {**cifar10_edm.get_config().model.to_dict(), "dropout": scratch.model.dropout}
    assert from_edm.model.to_dict() == edm_model
    assert from_edm.method.trig_form == "edm" and from_edm.method.scm_p_std == 1.8
    assert (
        from_edm.method.noise_label
        == "log_sigma_over_4"
        == cifar10_edm.get_config().method.noise_label
    )
    # The default is sCT from scratch: sCM's trigflow form at P_std 1.4, no source.
    assert (scratch.method.trig_form, scratch.method.scm_p_std) == ("trigflow", 1.4)
    assert scratch.model.augment_dim == 0
    for c in (scratch, from_tf, from_edm):
        assert c.method.name == "sct" and c.method.init_from == ""
    # The TrigFlow diffusion run: EDM's CIFAR-10 law, EDM's Heun sampler with 18 steps.
    assert (tf_run.method.p_mean, tf_run.method.p_std, tf_run.sampling.heun_steps) == (
        -1.2,
        1.2,
        18,
    )
