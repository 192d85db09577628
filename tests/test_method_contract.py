"""The contract every entry of the method table keeps, run over the table itself (not a hand
list), so that a method added later is tested by adding its line: on a tiny config it passes the
config checks, trains two steps through the production loop (log_every = 1, so the loop's NaN
guard sees a finite loss at each step), saves a checkpoint that restores bitwise, draws samples
with each of its samplers through --mode=sample, and prints --mode=summary.

A method that needs a trained diffusion model (Method.requires_init_from or init_sources) starts
from a tiny EDM run trained here; CONFIG_NEEDS lists the fields a method's own checks require of
the tiny demo config.
"""

import helpers
import jax
import numpy as np
import pytest
from helpers import tiny_config

from cm import config_checks, experiment, modes, state
from cm.methods import METHODS
from cm.workdir.checkpoint import Checkpointer

# Fields a method's checks require beyond the tiny demo config (every other method: none).
CONFIG_NEEDS = {"scd": {"method__trig_form": "edm"}}
STEPS = 2


def _config(name: str, **overrides):
    c = tiny_config(method__name=name, **CONFIG_NEEDS.get(name, {}), **overrides)
    c.training.num_steps = STEPS
    c.training.checkpoint_every = STEPS
    c.training.snapshot_every = 0
    c.sampling.num_samples = 4
    c.sampling.batch_size = 4
    c.sampling.heun_steps = 2  # EDM's Heun sampler: two steps compile faster than 18
    return c


@pytest.fixture(scope="module")
def edm_run(tmp_path_factory):
    """A tiny EDM run's workdir (random parameters): the source of the methods that start from
    a diffusion model."""
    workdir = str(tmp_path_factory.mktemp("edm_source"))
    helpers.edm_source(workdir)
    return workdir


def test_config_needs_name_methods_of_the_table():
    assert set(CONFIG_NEEDS) <= set(METHODS)


@pytest.mark.slow  # about 10-20 s per method: two compiled steps, the samplers, a restore
@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_contract(name, tmp_path, request):
    entry = METHODS[name]
    overrides = {}
    if entry.requires_init_from or entry.init_sources:
        overrides["method__init_from"] = request.getfixturevalue("edm_run")
    c = _config(name, **overrides)
    for mode in ("train", "sample", "summary"):
        config_checks.check(c, mode)
    workdir = str(tmp_path / name)

    assert c.training.log_every == 1  # the loop's NaN guard checks every step's loss
    trained = modes.run("train", c, workdir)
    assert int(trained.step) == STEPS
    exp = experiment.build(c)
    ckpt = Checkpointer(workdir, read_only=True)
    restored = ckpt.restore(experiment.abstract_state(exp, c))
    ckpt.close()
    assert ckpt.restored_step == STEPS
    assert jax.tree.structure(restored) == jax.tree.structure(trained)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(trained), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert type(restored) is (
        state.TrainState if not (entry.init_aux or entry.init_extra) else state.MethodTrainState
    )

    written = modes.run("sample", c, workdir)
    assert set(written) == set(entry.sampler.names(c)) and written
    for pics, labels in written.values():
        assert pics.shape == (4, c.data.image_size, c.data.image_size, c.data.channels)
        assert pics.dtype == np.uint8 and labels.shape == (4,)

    table = modes.run("summary", c, workdir)
    assert table.splitlines()[-1].startswith("parameters: ")
