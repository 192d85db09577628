"""The training spine: outputs, data parallelism, exact resume, NaN guard, config checks, modes."""

import copy
import os
import shutil
import subprocess

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from helpers import launch_cmd, subprocess_env, tiny_config

from cm import experiment, modes, power_ema, train
from cm import state as state_lib
from cm.data import batches, sources
from cm.models import count_params


def _ls(path):
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def _saved_params(workdir, step):
    path = os.path.join(os.path.abspath(workdir), "checkpoints", str(step), "default")
    return ocp.StandardCheckpointer().restore(path)["params"]


@pytest.mark.slow
def test_train_writes_checkpoints_snapshots_grids_and_logs(tmp_path, caplog):
    caplog.set_level("INFO")  # the training line: images/s, elapsed, ETA (cm/io/progress.py)
    c = tiny_config()
    c.training.snapshot_every = 1
    c.training.sample_every = 2
    c.training.power_ema_stds = (0.10,)
    state = train.train_and_evaluate(c, str(tmp_path))
    assert int(state.step) == 4
    assert _ls(tmp_path / "checkpoints") == ["2", "4"]
    assert _ls(tmp_path / "snapshots") == ["1", "2", "3", "4"]
    snaps = [
        ocp.StandardCheckpointer().restore(str(tmp_path / "snapshots" / str(k) / "default"))
        for k in (1, 2)
    ]
    assert set(snaps[1]) == {"params", "ema", "power_ema"} and len(snaps[1]["ema"]) == 1
    # The power EMA starts at the parameters of step 1 (t = 1, beta = 0), then at t = 2
    # mixes in (1 - beta_2) of step 2's parameters (cm/power_ema.py).
    w = float(power_ema.one_minus_beta(2, power_ema.std_to_gamma(0.10)))
    jax.tree.map(np.testing.assert_array_equal, snaps[0]["power_ema"][0], snaps[0]["params"])
    jax.tree.map(
        lambda e, a, b: np.testing.assert_allclose(e, (1 - w) * a + w * b, rtol=1e-5, atol=1e-7),
        snaps[1]["power_ema"][0],
        snaps[0]["params"],
        snaps[1]["params"],
    )
    assert "step00000004_1step.png" in _ls(tmp_path / "samples")
    assert "step00000004_2step.png" in _ls(tmp_path / "samples")
    assert any(f.startswith("events.out.tfevents") for f in _ls(tmp_path))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert [line.split(":")[0] for line in lines] == [
        f"step {k}/4 ({25 * k}%)" for k in range(1, 5)
    ]
    assert all(" images/s, elapsed " in line and ", ETA " in line for line in lines)
    assert lines[-1].endswith("ETA 0:00:00")
    gaps = [
        np.abs(e - p).max()
        for e, p in zip(*map(jax.tree.leaves, (state.ema[0], state.params)), strict=True)
    ]
    assert max(gaps) > 0  # the EMA lags the online parameters


def test_ema_update_by_hand():
    emas = state_lib.update_emas(({"w": np.array(2.0)},), {"w": np.array(4.0)}, (0.75,))
    np.testing.assert_allclose(emas[0]["w"], 0.75 * 2 + 0.25 * 4)


def _run_steps(config, devices, steps):
    exp = experiment.build(config, devices)
    step_fn = train.make_train_step(exp, tuple(config.training.ema_rates), config.seed)
    state = experiment.init_state(exp, config)
    source = sources.load_source(config.data)
    losses, scales = [], []
    for k in range(steps):
        local = batches.batch_at(source, k, config.training.batch_size, config.seed, True)
        state, metrics = step_fn(state, train.global_batch(local, exp))
        losses.append(float(metrics["loss"]))
        scales.append(int(metrics["num_scales"]))
    # The curriculum moved through several N (4 steps in all: a new stage every step), yet the
    # step compiled once.
    assert scales == [11, 21, 41][:steps] and step_fn._cache_size() == 1
    return jax.device_get(state.params), losses


@pytest.mark.slow
def test_four_devices_equal_one_device():
    assert jax.device_count() == 4
    c = tiny_config()
    c.model.dropout = 0.2  # dropout masks must not depend on the sharding either
    one, loss_one = _run_steps(c, jax.devices()[:1], 3)
    four, loss_four = _run_steps(c, jax.devices(), 3)
    np.testing.assert_allclose(loss_one, loss_four, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(four), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_resume_in_fresh_process_is_exact(tmp_path):
    """4 steps straight (in this process, on its 4 devices) == 2 steps in a fresh process on 4
    devices, then the same command again."""
    steps = ["--config.training.num_steps=4", "--config.training.checkpoint_every=100"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    c = tiny_config()  # the config of launch_cmd's flags
    c.training.num_steps, c.training.checkpoint_every = 4, 100
    train.train_and_evaluate(c, str(straight))
    env = subprocess_env(devices=4)
    first = launch_cmd(resumed, *steps, "--config.training.steps_per_run=2")
    subprocess.run(first, env=env, check=True, capture_output=True)
    assert _ls(resumed / "checkpoints") == ["2"]
    subprocess.run(launch_cmd(resumed, *steps), env=env, check=True, capture_output=True)
    assert _ls(resumed / "checkpoints") == ["2", "4"]
    a, b = _saved_params(straight, 4), _saved_params(resumed, 4)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def two_step_run(tmp_path_factory):
    """A 2-step tiny run with a snapshot every step, trained once per test process; each test
    takes a copy of the config and the workdir."""
    c = tiny_config()
    c.training.snapshot_every = 1  # the NaN test reads the snapshot of step 3
    c.training.num_steps = 2
    workdir = tmp_path_factory.mktemp("two_step_run")
    train.train_and_evaluate(c, str(workdir))
    return c, workdir


def _copy_of(run, tmp_path):
    c, workdir = run
    shutil.copytree(workdir, tmp_path / "w")
    return copy.deepcopy(c), tmp_path / "w"


@pytest.mark.slow
def test_nan_guard_stops_and_keeps_last_good_checkpoint(two_step_run, tmp_path):
    c, tmp_path = _copy_of(two_step_run, tmp_path)  # snapshots: step 3's checks the NaN params
    before = _saved_params(tmp_path, 2)
    c.training.num_steps = 4
    c.optim.learning_rate = float("nan")
    with pytest.raises(FloatingPointError, match=r"at step 3.*last good checkpoint \(step 2\)"):
        train.train_and_evaluate(c, str(tmp_path))
    assert _ls(tmp_path / "checkpoints") == ["2"]
    after = _saved_params(tmp_path, 2)
    for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_incompatible_config_is_refused_and_workdir_kept(two_step_run, tmp_path):
    c, tmp_path = _copy_of(two_step_run, tmp_path)
    files = sorted(str(p) for p in tmp_path.rglob("*"))
    c.model.channels = 16
    with pytest.raises(ValueError, match=r"\(model\.channels: 8 there, 16 now\); .*back"):
        train.train_and_evaluate(c, str(tmp_path))
    assert sorted(str(p) for p in tmp_path.rglob("*")) == files


@pytest.mark.slow
def test_sample_mode_writes_uint8_npz_and_grid(two_step_run, tmp_path):
    c, tmp_path = _copy_of(two_step_run, tmp_path)
    c.sampling.params = "online"
    out = modes.sample(c, str(tmp_path))
    assert set(out) == {"1step", "2step"}
    saved = np.load(tmp_path / "samples" / "2step_step00000002.npz")
    assert saved["images"].shape == (8, 8, 8, 1) and saved["images"].dtype == np.uint8
    assert saved["labels"].shape == (8,)
    assert os.path.exists(tmp_path / "samples" / "1step_step00000002.png")
    # Each of the 4 devices draws with its own key: no two device shards are equal.
    shards = saved["images"].reshape(4, 2, -1)
    assert all(not np.array_equal(shards[i], shards[j]) for i in range(4) for j in range(i))


def test_summary_mode_ends_with_parameter_count(capsys):
    c = tiny_config()
    table = modes.summary(c, "unused")
    exp = experiment.build(c)
    n = count_params(experiment.param_shapes(exp, c))
    assert table.splitlines()[-1] == f"parameters: {n}"
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"parameters: {n}"
