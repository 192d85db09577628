"""Shared pieces of the tests: a tiny config and the command line of a fresh launch.py process."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**overrides):
    """The demo config shrunk to a net that compiles and steps in seconds."""
    from configs.demo import get_config

    c = get_config()
    c.model.channels = 8
    c.model.channel_mult = (1, 2)
    c.model.num_blocks = 1
    c.model.num_groups = 4
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
        "--config.model.channels=8",
        "--config.model.channel_mult=(1,2)",
        "--config.model.num_blocks=1",
        "--config.model.num_groups=4",
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
