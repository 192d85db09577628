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
    c.training.snapshot_every = 1
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
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = ROOT
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return env
