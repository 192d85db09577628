"""The method table (cm/methods/table.py): ict and edm as before (parameterization, samplers, train
state layout), dispatch through the table, auxiliary parameters trained beside the network."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_config

from cm import config_checks, experiment, methods, power_ema, precond, state, train
from cm.methods import spec
from cm.methods.spec import Denoisers, Method, precond_pair, stateless


class _Affine:
    """A stand-in network F(x, c_noise) = 3 x + c_noise."""

    def apply(self, variables, x, c_noise, labels, train, rngs):
        return 3.0 * x + c_noise[:, None, None, None]


@pytest.mark.parametrize(
    "name,train_kind,sample_kind",
    [("ict", "consistency", "consistency"), ("edm", "edm", "edm"), ("ect", "edm", "consistency")],
)
def test_parameterization_of_each_method(name, train_kind, sample_kind):
    """ict and edm keep their one preconditioning (the old PRECONDITIONING table); ECT trains
    EDM's denoiser and samples the consistency function; every teacher is EDM's denoiser."""
    c = tiny_config(method__name=name)
    d = methods.get(name).parameterization(c, _Affine())
    x = jax.random.normal(jax.random.key(0), (3, 2, 2, 1))
    sigma = jnp.asarray([0.002, 0.5, 20.0], jnp.float32)
    m = c.method

    def ref(kind):
        f = precond.make_denoiser(_Affine(), kind, m.noise_label, m.sigma_data, m.sigma_min)
        return f({}, x, sigma)

    np.testing.assert_array_equal(d.train({}, x, sigma), ref(train_kind))
    np.testing.assert_array_equal(d.sample({}, x, sigma), ref(sample_kind))
    np.testing.assert_array_equal(d.teacher({}, x, sigma), ref("edm"))


def test_samplers_of_each_method():
    c = tiny_config()
    for name in ("ict", "ect", "cd"):
        c.method.name = name
        assert methods.get(name).sampler is spec.CONSISTENCY_SAMPLERS
        assert methods.sampler_specs(c) == {"1step": (), "2step": (0.821,)}
    c.method.name = "edm"
    assert methods.get("edm").sampler is spec.HEUN_SAMPLERS
    assert methods.sampler_specs(c) == {"heun18": ()}


def test_levels_are_checked_for_every_consistency_method_and_not_for_edm():
    for name, checked in (("ict", True), ("ect", True), ("cd", True), ("edm", False)):
        c = tiny_config(method__name=name)
        c.sampling.consistency_levels = ((), (90.0,))
        if checked:
            with pytest.raises(ValueError, match=r"^sampling.consistency_levels="):
                config_checks.check(c, "sample")
        else:
            config_checks.check(c, "sample")


def test_unknown_method_is_one_sentence():
    with pytest.raises(ValueError, match=r"^Unknown method.name 'ctm'; valid: \['cd', 'ect',"):
        methods.get("ctm")
    with pytest.raises(ValueError, match=r"method.name 'ctm'"):
        config_checks.check(tiny_config(method__name="ctm"), "summary")


@pytest.mark.parametrize("name", ["ict", "edm", "ect"])
def test_train_state_layout_is_unchanged(name):
    """Methods without auxiliary parameters or extra state keep TrainState, leaf for leaf as
    state.create builds it (so checkpoints written before the table restore)."""
    c = tiny_config(method__name=name)
    exp = experiment.build(c)
    abstract = experiment.abstract_state(exp, c)
    assert type(abstract) is state.TrainState
    params = experiment.param_shapes(exp, c)
    before = jax.eval_shape(lambda p: state.create(p, exp.tx, 1, 2), params)
    assert jax.tree.structure(abstract) == jax.tree.structure(before)


def test_cd_state_carries_the_teacher():
    c = tiny_config(method__name="cd", method__cd_target_ema=0.5)
    exp = experiment.build(c)
    abstract = experiment.abstract_state(exp, c)
    assert type(abstract) is state.MethodTrainState and abstract.aux == ()
    shapes = lambda t: [(x.shape, x.dtype) for x in jax.tree.leaves(t)]  # noqa: E731
    assert shapes(abstract.extra["teacher"]) == shapes(abstract.params)
    assert shapes(abstract.extra["target"]) == shapes(abstract.params)
    assert exp.update_extra is not None


def _toy_loss(params, batch, rng, step, aux=(), extra=()):
    """(w - 1)^2 + (v - 2)^2: the network's w and an auxiliary v, both trained."""
    loss = jnp.square(params["w"] - 1.0) + jnp.square(aux["v"] - 2.0)
    return loss, {"loss": loss}


def test_auxiliary_parameters_are_trained_beside_the_network(monkeypatch):
    """init_aux's tree is in the state with its own optimizer state; the step updates it with
    the same optimizer from its gradient, and no EMA or power EMA holds it."""
    toy = Method(
        objective=lambda config, d: _toy_loss,
        parameterization=precond_pair("consistency", "consistency"),
        sampler=spec.CONSISTENCY_SAMPLERS,
        init_aux=lambda config, rng: {"v": jnp.float32(0.5)},
    )
    monkeypatch.setitem(methods.METHODS, "toy", toy)
    c = tiny_config(method__name="toy")
    c.training.power_ema_stds = (0.1,)
    exp = experiment.Experiment(
        method=toy,
        model=None,
        denoise=None,
        loss_fn=methods.objective(c, Denoisers(None, None, None)),
        tx=state.make_optimizer(c.optim),
        mesh=experiment.make_mesh(),
        power_ema_gammas=(power_ema.std_to_gamma(0.1),),
    )
    start = experiment.fresh_state(exp, c, {"w": jnp.float32(3.0)})
    assert isinstance(start, state.MethodTrainState) and start.extra == ()
    assert float(start.aux["v"]) == 0.5 and jax.tree.leaves(start.aux_opt_state)
    step_fn = train.make_train_step(exp, tuple(c.training.ema_rates), c.seed)
    batch = {"image": np.zeros((8, 1), np.float32)}
    new, _ = step_fn(jax.device_put(start, exp.replicated), train.global_batch(batch, exp))
    # The same optimizer on each part: d/dv (v - 2)^2 = -3 at v = 0.5; d/dw = 4 at w = 3.
    for grad, value, key, tree in ((-3.0, 0.5, "v", new.aux), (4.0, 3.0, "w", new.params)):
        updates, _ = exp.tx.update({key: jnp.float32(grad)}, exp.tx.init({key: value}))
        np.testing.assert_allclose(tree[key], value + updates[key], rtol=1e-6)
    assert float(new.aux["v"]) > 0.5 and int(new.step) == 1
    assert all(set(e) == {"w"} for e in (*new.ema, *new.power_ema))


def test_make_objective_keeps_its_single_denoiser_form():
    """methods.make_objective(config, denoise) (tests and tools use it) goes through the
    table and accepts the table's aux / extra keywords."""

    c = tiny_config(method__name="edm")
    zero = lambda params, x, sigma, labels, train, rng, augment_labels=None: jnp.zeros_like(x)
    loss_fn = methods.make_objective(c, zero)
    batch = {"image": jnp.ones((2, 8, 8, 1)), "label": jnp.zeros((2,), jnp.int32)}
    a, _ = loss_fn({}, batch, jax.random.key(0), 0)
    b, _ = loss_fn({}, batch, jax.random.key(0), 0, aux=(), extra=())
    assert float(a) == float(b) and math.isfinite(float(a))
    assert stateless(lambda *args: (1.0, {}))({}, None, None, 0, aux=(), extra=()) == (1.0, {})
