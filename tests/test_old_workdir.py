"""A run trained before the package layout (cm/methods, cm/io, cm/workdir, cm/data) resumes after
it with the same command, and continues exactly as a run of today's code.

tests/data/workdirs_277dbf0.tar.gz holds two workdirs written by commit 277dbf0, the last commit
of the flat layout: from its checkout, for name in ("ict", "sct"), tests/helpers.tiny_config(
method__name=name) with model.channel_mult = (1,), training.num_steps = 2, checkpoint_every =
2, snapshot_every = 0, power_ema_stds = (), trained by cm.modes.run("train", config, workdir)
on 4 CPU devices with XLA_FLAGS=--xla_backend_optimization_level=0 (as tests/conftest.py sets
both); the TensorBoard event files were removed (0.6 MB in all). ict has the plain TrainState,
sct the MethodTrainState with sCM's weighting as auxiliary parameters.
"""

import pathlib
import tarfile

import jax
import numpy as np
import pytest
from helpers import tiny_config

from cm import modes

FIXTURE = pathlib.Path(__file__).parent / "data" / "workdirs_277dbf0.tar.gz"


def _config(name: str, num_steps: int):
    c = tiny_config(method__name=name)
    c.training.num_steps = num_steps
    c.training.checkpoint_every = 2
    c.training.snapshot_every = 0
    c.training.power_ema_stds = ()
    c.model.channel_mult = (1,)
    return c


@pytest.fixture(scope="module")
def old_workdirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("old")
    with tarfile.open(FIXTURE) as archive:
        archive.extractall(root, filter="data")
    return root


@pytest.mark.slow  # two training runs of the tiny network: about 20 s
@pytest.mark.parametrize("name", ["ict", "sct"])
def test_old_workdir_resumes_and_continues_as_todays_run(old_workdirs, tmp_path, name):
    resumed = modes.run("train", _config(name, 3), str(old_workdirs / name))
    assert int(resumed.step) == 3
    fresh = modes.run("train", _config(name, 3), str(tmp_path / "fresh"))
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(fresh), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
