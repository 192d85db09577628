"""SIGTERM (a preemption notice) and SIGINT during training: the step in flight is finished and
checkpointed, the lock released, and the run says where to resume (cm/workdir/preemption.py).
The two-process test is also the check that two jax.distributed processes (2 CPU devices each)
train as one process with 4 devices.

One process stopped by SIGTERM mid-run: tests/test_checkpoint.py::
test_a_stopped_run_with_damaged_checkpoints_resumes_and_saves_them_again (one training for it
and for the damaged-checkpoint resume)."""

import os
import signal
import socket
import subprocess
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from helpers import launch_cmd, subprocess_env, tiny_config

from cm import experiment, train
from cm.workdir import preemption
from cm.workdir.checkpoint import Checkpointer


def signal_at(monkeypatch, calls: int, signum):
    """The training step sends `signum` to this process on its `calls`-th call (a signal that
    lands while step `calls` is in flight)."""
    make_step = train.make_train_step
    count = []

    def make(*args, **kwargs):
        step_fn = make_step(*args, **kwargs)

        def step(*a):
            count.append(1)
            if len(count) == calls:
                os.kill(os.getpid(), signum)
            return step_fn(*a)

        return step

    monkeypatch.setattr(train, "make_train_step", make)


def verified_step(workdir) -> int:
    """The step a read-only restore takes: the newest checkpoint, read back equal to its digest
    (a mismatch would fall back to an older one)."""
    c = tiny_config()
    ckpt = Checkpointer(str(workdir), read_only=True)
    ckpt.restore(experiment.abstract_state(experiment.build(c), c))
    return ckpt.restored_step


def test_sigint_stops_at_the_next_check_and_a_second_one_acts_as_before():
    """Ctrl-C: reached() turns True at the next step (a Python flag: no device sync), the exit
    code is 130; a second Ctrl-C goes to the handler that was there before (here a recorder;
    by default KeyboardInterrupt: an immediate stop), which is also back after the watch."""
    received = []
    guard = lambda signum, frame: received.append(signum)  # noqa: E731
    before = signal.signal(signal.SIGINT, guard)
    try:
        with preemption.watching() as watch:
            assert not watch.reached(1)
            os.kill(os.getpid(), signal.SIGINT)
            assert watch.reached(2) and watch.signal == signal.SIGINT and received == []
            os.kill(os.getpid(), signal.SIGINT)
            assert received == [signal.SIGINT]
        stop = watch.stopped(2, "W/checkpoints/2")
        assert stop.exit_code == 130
        assert str(stop).startswith("SIGINT stopped training after step 2; its checkpoint is W/")
        assert signal.getsignal(signal.SIGINT) is guard
    finally:
        signal.signal(signal.SIGINT, before)


_LONG = 100_000  # training.num_steps of a run that is stopped long before its end


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_agree_on_the_step_to_stop_at_and_match_one_process(tmp_path):
    """SIGTERM to process 1 only (a preempted host): JAX's preemption service has both
    processes stop after the same step, both save it (one checkpoint, its digest matching),
    release the lock, print where to resume and exit with 143. The parameters they saved are
    those of one process with 4 devices trained for as many steps."""
    workdir = tmp_path / "w"
    address = f"localhost:{_free_port()}"
    logs = [tmp_path / f"process{p}.log" for p in range(2)]
    procs = []
    for p in range(2):
        with open(logs[p], "w") as log:  # the child keeps its own copy
            cmd = launch_cmd(
                workdir,
                f"--config.training.num_steps={_LONG}",
                "--config.training.checkpoint_every=2",
                "--config.training.snapshot_every=0",
                f"--coordinator_address={address}",
                "--num_processes=2",
                f"--process_id={p}",
            )
            procs.append(subprocess.Popen(cmd, env=subprocess_env(devices=2), stdout=log,
                                          stderr=subprocess.STDOUT))  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while not (workdir / "checkpoints" / "2").is_dir():  # committed: training is under way
            assert all(p.poll() is None for p in procs), logs[0].read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.2)
        procs[1].send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    outputs = [log.read_text() for log in logs]
    assert codes == [143, 143], [out[-3000:] for out in outputs]
    lines = [[x for x in out.splitlines() if x.startswith("stopped: ")] for out in outputs]
    assert len(lines[0]) == len(lines[1]) == 1 and lines[0] == lines[1], lines
    step = int(lines[0][0].split("after step ")[1].split(";")[0])
    assert step >= 2 and f"its checkpoint is {workdir / 'checkpoints' / str(step)}:" in lines[0][0]
    assert "rerun the same command" in lines[0][0] and "Traceback" not in outputs[0]
    assert verified_step(workdir) == step and not (workdir / "lock.json").exists()
    assert "process 1 of 2, 2 local devices of 4" in outputs[1]
    c = tiny_config()  # the config of launch_cmd's flags, in this process on its 4 devices
    c.training.num_steps, c.training.steps_per_run = _LONG, step  # the same schedules
    c.training.checkpoint_every = 100
    one = train.train_and_evaluate(c, str(tmp_path / "one"))
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), one
    )
    two = ocp.StandardCheckpointer().restore(
        str(workdir / "checkpoints" / str(step) / "default"), target
    )
    assert int(two.step) == int(one.step) == step
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(two.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-7)
