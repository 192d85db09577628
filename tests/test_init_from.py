"""method.init_from (cm/workdir/init_from.py): a run starts from another run's network; CD's teacher
lives in the checkpointed state, so resuming needs no source; --mode=summary for ect and cd."""

import json
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from helpers import tiny_config

from cm import experiment, modes, state, train
from cm.workdir import run_record
from cm.workdir.checkpoint import Checkpointer


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def _equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(_leaves(a), _leaves(b), strict=True))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A tiny EDM run's workdir with a step-3 checkpoint (random parameters) whose two EMAs
    differ from its online parameters, and its config.json: what --mode=import or an EDM run
    leaves."""
    workdir = str(tmp_path_factory.mktemp("edm_source"))
    c = tiny_config(method__name="edm")
    c.training.ema_rates = (0.999, 0.9999)  # two EMAs: the first one is read
    exp = experiment.build(c)
    rng = np.random.default_rng(7)
    shapes = experiment.param_shapes(exp, c)  # no network compile
    params = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype), shapes)
    st = state.create(params, exp.tx, state.num_emas(c.training), len(c.training.power_ema_stds))
    emas = tuple(jax.tree.map(lambda p, k=k: p + k, st.params) for k in (1.0, 2.0))
    st = st.replace(step=st.step + 3, ema=emas)
    ckpt = Checkpointer(workdir, 1)
    ckpt.save(3, st)
    ckpt.close()
    run_record.record_start(workdir, c.to_dict(), 0)
    return workdir, jax.device_get(st.params), jax.device_get(st.ema[0])


def _state_from(source_dir, **overrides):
    c = tiny_config(method__init_from=source_dir, **overrides)
    exp = experiment.build(c)
    return experiment.init_state(exp, c), c


@pytest.mark.parametrize("name", ["ect", "cd"])
def test_init_from_fills_params_every_ema_and_the_teacher(source, name):
    workdir, params, ema = source
    st, _ = _state_from(workdir, method__name=name)
    assert int(st.step) == 0 and _equal(st.params, ema)  # init_params = "ema" by default
    assert all(_equal(e, ema) for e in (*st.ema, *st.power_ema)) and len(st.power_ema) == 2
    if name == "cd":
        assert _equal(st.extra["teacher"], ema)


def test_init_params_online_and_a_checkpoint_folder(source):
    workdir, params, _ = source
    step_dir = os.path.join(workdir, "checkpoints", "3")
    st, _ = _state_from(step_dir, method__name="ect", method__init_params="params")
    assert _equal(st.params, params) and _equal(st.ema[0], params)


@pytest.mark.parametrize(
    "overrides,error,message",
    [
        ({"method__init_from": "/nowhere/edm"}, FileNotFoundError, "holds no cm checkpoint"),
        ({"model__channels": 16}, ValueError, "does not match this config's"),
        ({"method__noise_label": "log_sigma_over_4"}, ValueError, "noise_label='250_log_sigma'"),
        ({"method__init_params": "last"}, ValueError, "method.init_params='last' is invalid"),
    ],
)
def test_bad_sources_are_one_sentence(source, overrides, error, message):
    c = tiny_config(method__name="ect", method__init_from=source[0])
    for dotted, value in overrides.items():
        section, field = dotted.split("__")
        c[section][field] = value
    with pytest.raises(error) as info:
        experiment.check_init_from(experiment.build(c), c)
    text = str(info.value)
    assert message in text and text.count(". ") == 0 and text.endswith("."), text


def test_distillation_refuses_a_source_that_is_not_a_diffusion_model(source, tmp_path):
    """A recorded method other than edm (here the same checkpoint relabelled ict) is refused."""
    copy = str(tmp_path / "ict_run")
    shutil.copytree(source[0], copy)
    path = tmp_path / "ict_run" / "config.json"
    record = json.loads(path.read_text())
    record["method"]["name"] = "ict"
    path.write_text(json.dumps(record))
    c = tiny_config(method__name="cd", method__init_from=copy)
    with pytest.raises(ValueError, match=r"holds a 'ict' run, but method.name='cd' starts from"):
        experiment.check_init_from(experiment.build(c), c)


def test_a_bad_source_stops_training_before_anything_is_written(tmp_path):
    c = tiny_config(method__name="ect", method__init_from=str(tmp_path / "missing"))
    workdir = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="holds no cm checkpoint"):
        train.train_and_evaluate(c, str(workdir))
    assert not workdir.exists()


def _saved(workdir, step):
    path = os.path.join(workdir, "checkpoints", str(step), "default")
    return ocp.StandardCheckpointer().restore(path)


@pytest.mark.slow
def test_cd_resumes_exactly_without_its_source(source, tmp_path):
    """CD 2 steps straight == its step-1 checkpoint resumed to step 2 after the source was
    deleted: the teacher comes from the run's own checkpoint. Sampling reads it like any run."""
    teacher = str(tmp_path / "teacher")
    shutil.copytree(source[0], teacher)
    c = tiny_config(method__name="cd", method__init_from=teacher, method__cd_target_ema=0.5)
    c.training.num_steps = 2
    c.training.checkpoint_every = 1
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train.train_and_evaluate(c, str(straight))
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "2")
    os.remove(resumed / "digests" / "2.json")
    shutil.rmtree(teacher)
    train.train_and_evaluate(c, str(resumed))
    a, b = _saved(straight, 2), _saved(resumed, 2)
    assert _equal(a, b)
    assert _equal(a["extra"]["teacher"], source[2]) and not _equal(a["params"], source[2])
    assert set(modes.sample(c, str(resumed))) == {"1step", "2step"}
