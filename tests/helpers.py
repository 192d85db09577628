"""Shared pieces of the tests: a tiny config and the command line of a fresh launch.py process."""

import os
import sys

from benchmarks import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**overrides):
    """The demo config shrunk to a net that compiles and steps in seconds (tiny.TINY_NETWORK)."""
    from configs.demo import get_config

    c = tiny.with_overrides(get_config(), tiny.TINY_NETWORK)
    c.training.batch_size = 8
    c.training.num_steps = 4
    c.training.log_every = 1
    c.training.checkpoint_every = 2
    c.training.snapshot_every = 0  # each snapshot is an Orbax save: on where a test reads them
    c.training.sample_every = 0
    c.training.grid_samples = 8
    c.sampling.num_samples = 8
    c.sampling.batch_size = 8
    for dotted, value in overrides.items():
        section, field = dotted.split("__")
        c[section][field] = value
    return c


def launch_cmd(workdir, *args, config="configs/demo.py"):
    """argv of launch.py on the tiny demo config, for running in a fresh process."""
    tiny_flags = [
        *tiny.as_flags(tiny.TINY_NETWORK),
        "--config.training.batch_size=8",
        "--config.training.log_every=1",
        "--config.training.sample_every=0",
    ]
    return [
        sys.executable,
        os.path.join(ROOT, "launch.py"),
        f"--config={config}",
        f"--workdir={workdir}",
        *tiny_flags,
        *args,
    ]


def subprocess_env(devices: int = 1):
    env = dict(os.environ)
    # the test run's XLA flags (tests/conftest.py: the fast-compiling backend), and `devices`
    env["XLA_FLAGS"] = (
        f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = ROOT
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return env


def edm_source(workdir: str, step: int = 3, seed: int = 3):
    """A tiny EDM run's workdir without training it: random parameters (every EMA the same) saved
    as the checkpoint at `step` with its config.json, as the method.init_from of the methods
    that start from a diffusion model. Returns the first EMA (numpy)."""
    import jax
    import numpy as np

    from cm import experiment, state
    from cm.workdir import run_record
    from cm.workdir.checkpoint import Checkpointer

    c = tiny_config(method__name="edm")
    exp = experiment.build(c)
    rng = np.random.default_rng(seed)
    shapes = experiment.param_shapes(exp, c)  # no network compile
    params = jax.tree.map(lambda s: (0.1 * rng.normal(size=s.shape)).astype(s.dtype), shapes)
    st = state.create(params, exp.tx, state.num_emas(c.training), len(c.training.power_ema_stds))
    st = st.replace(step=st.step + step)
    ckpt = Checkpointer(workdir, 1)
    ckpt.save(step, st)
    ckpt.close()
    run_record.record_start(workdir, c.to_dict(), 0)
    return jax.device_get(st.ema[0])
