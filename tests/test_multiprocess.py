"""Two local jax.distributed processes (2 CPU devices each) == one process with 4 devices."""

import socket
import subprocess

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from helpers import launch_cmd, subprocess_env, tiny_config

from cm import train

pytestmark = pytest.mark.slow  # trains or launches processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _failure_excerpt(out: str) -> str:
    """The lines that say why a process died: around a native abort's "Fatal Python error" (its
    Python stack comes before the long list of extension modules), else the end."""
    start = out.find("Fatal Python error")
    if start < 0:
        return out[-3000:]
    return out[max(0, start - 3000) : start + 3000]


def test_two_processes_match_one_process_with_four_devices(tmp_path):
    steps = ["--config.training.num_steps=3", "--config.training.checkpoint_every=100"]
    address = f"localhost:{_free_port()}"
    procs = [
        subprocess.Popen(
            launch_cmd(
                tmp_path / "two",
                *steps,
                f"--coordinator_address={address}",
                "--num_processes=2",
                f"--process_id={p}",
            ),
            env=subprocess_env(devices=2),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for p in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, _failure_excerpt(out)
    assert "process 1 of 2, 2 local devices of 4" in outputs[1]

    assert jax.device_count() == 4
    c = tiny_config()
    c.training.num_steps = 3
    c.training.snapshot_every = 0
    one = train.train_and_evaluate(c, str(tmp_path / "one"))
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), one
    )
    path = tmp_path / "two" / "checkpoints" / "3" / "default"
    two = ocp.StandardCheckpointer().restore(str(path), target)
    assert int(two.step) == 3
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(two.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-7)
