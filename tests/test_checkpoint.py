"""The workdir's integrity: checkpoint digests and fallback, the run's record, the lock."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import launch_cmd, subprocess_env, tiny_config
from test_preemption import signal_at, verified_step

from cm import modes, train
from cm import state as state_lib
from cm.io import fileio
from cm.workdir import preemption, run_record
from cm.workdir.checkpoint import Checkpointer, NoCheckpointError, state_digest
from cm.workdir.lock import WorkdirLock


def _state(offset: float, power: int = 0):
    return state_lib.create({"w": jnp.arange(64.0) + offset}, optax.adam(1e-3), 1, power)


def _abstract(train_state):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), train_state)


def _two_checkpoints(workdir):
    ckpt = Checkpointer(str(workdir), 3)
    ckpt.save(1, _state(1.0))
    ckpt.save(2, _state(2.0))
    ckpt.close()


def _files(root, step):
    return sorted(p for p in (root / "checkpoints" / str(step)).rglob("*") if p.is_file())


@pytest.mark.parametrize("power", [0, 2])
def test_state_round_trips_with_its_digest(tmp_path, power):
    ckpt = Checkpointer(str(tmp_path), 1)
    saved = _state(0.5, power)
    ckpt.save(3, saved)
    ckpt.close()
    assert fileio.read_json(tmp_path / "digests" / "3.json")["sha256"] == state_digest(saved)
    restored = Checkpointer(str(tmp_path), 1).restore(_abstract(saved))
    assert len(restored.power_ema) == power
    jax.tree.map(np.testing.assert_array_equal, restored, saved)


def test_digest_changes_with_one_element():
    a = _state(0.0)
    b = a.replace(params={"w": a.params["w"].at[5].add(1e-6)})
    assert state_digest(a) != state_digest(b)
    assert state_digest(a) == state_digest(_state(0.0))


def test_digests_of_deleted_checkpoints_are_dropped(tmp_path):
    ckpt = Checkpointer(str(tmp_path), 2)
    for step in (1, 2, 3):
        ckpt.save(step, _state(step))
    ckpt.close()
    assert fileio.listdir(tmp_path / "digests") == ["2.json", "3.json"]


def _truncate(root, step):
    """Cuts every data file of the step to half its size (layout-independent, like a copy or
    an upload that stopped midway)."""
    for path in (p for p in _files(root, step) if "/d/" in str(p)):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_bytes(root, step):
    """Flips one byte in every 16 of every data file of the step, so that whatever the layout
    of the files, stored values (or the structures that locate them) change."""
    for path in (p for p in _files(root, step) if "/d/" in str(p)):
        data = bytearray(path.read_bytes())
        for i in range(0, len(data), 16):
            data[i] ^= 0xFF
        path.write_bytes(bytes(data))


# The three kinds of damage to a checkpoint's files (the audit's), then a digest that lies.
ON_DISK = {
    "truncated data files": _truncate,
    "flipped bytes in the data files": _flip_bytes,
    "missing _METADATA": lambda root, step: (
        root / f"checkpoints/{step}/default/_METADATA"
    ).unlink(),
}
DAMAGE = {
    **ON_DISK,
    "content differs from its digest": lambda root, step: fileio.write_json_atomic(
        root / "digests" / f"{step}.json", {"sha256": "0" * 64}
    ),
}


def _set_aside(root) -> list[str]:
    return fileio.listdir(root / "set_aside")


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path, damage, caplog):
    _two_checkpoints(tmp_path)
    DAMAGE[damage](tmp_path, 2)
    old_digest = fileio.read_json(tmp_path / "digests" / "2.json")["sha256"]
    reader = Checkpointer(str(tmp_path), read_only=True)  # sample / eval: nothing moves
    reader.restore(_abstract(_state(0.0)))
    assert reader.restored_step == 1 and not (tmp_path / "set_aside").exists()
    ckpt = Checkpointer(str(tmp_path), 3)  # a training start
    restored = ckpt.restore(_abstract(_state(0.0)))
    assert ckpt.restored_step == 1
    jax.tree.map(np.testing.assert_array_equal, restored, _state(1.0))
    assert "Restored step 1" in caplog.text and "step 2:" in caplog.text
    # Moved aside (kept, with a record of why), named in the warning; step 2 can be saved again.
    (folder, record) = _set_aside(tmp_path)
    assert (
        record == f"{folder}.json" and f"step 2 -> {tmp_path / 'set_aside' / folder}" in caplog.text
    )
    assert fileio.read_json(tmp_path / "set_aside" / record)["sha256"] == old_digest
    assert (tmp_path / "set_aside" / folder / "default").is_dir()
    assert ckpt.all_steps() == [1] and not (tmp_path / "digests" / "2.json").exists()
    ckpt.save(2, _state(2.5))
    ckpt.close()
    again = Checkpointer(str(tmp_path), 3)
    jax.tree.map(np.testing.assert_array_equal, again.restore(_abstract(_state(0.0))), _state(2.5))
    assert again.restored_step == 2


@pytest.mark.slow
def test_a_stopped_run_with_damaged_checkpoints_resumes_and_saves_them_again(
    tmp_path, monkeypatch, caplog
):
    """One training, two faults (merged to pay for one run):

    1. SIGTERM during step 7 of 8 (one process; two: tests/test_preemption.py): a checkpoint at
       7 read back equal to its digest, the lock released, exit code 143, the resume command in
       the message, the handlers that were there before put back.
    2. The audit's serious case: the three kinds of damage on disk at once, one per newest
       step (7, 6, 4), then the same command (the same num_steps): it falls back to step 2,
       moves 4, 6 and 7 aside (kept with a record, named in the warning), trains steps 3-8 and
       saves 4, 6 and 8; 4 and 6 with their original digests (a resume is bitwise exact), and
       --mode=sample uses step 8, read back equal to its digest (no fallback warning).
    """
    caplog.set_level("INFO")
    received = []
    guard = lambda signum, frame: received.append(signum)  # noqa: E731 - without ours: caught
    before = {signum: signal.signal(signum, guard) for signum in preemption.SIGNALS}
    try:
        c = tiny_config(training__num_steps=8, training__keep_checkpoints=4)  # checkpoints 2..8
        signal_at(monkeypatch, 7, signal.SIGTERM)
        with pytest.raises(preemption.Stopped) as stop:
            train.train_and_evaluate(c, str(tmp_path))
        assert [signal.getsignal(s) for s in preemption.SIGNALS] == [guard, guard]
        assert received == []  # the signal went to training's handler
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
    assert str(stop.value) == (
        f"SIGTERM stopped training after step 7; its checkpoint is {tmp_path}/checkpoints/7: "
        "rerun the same command to resume from it."
    )
    assert stop.value.exit_code == 128 + signal.SIGTERM == 143
    assert verified_step(tmp_path) == 7 and not (tmp_path / "lock.json").exists()
    assert Checkpointer(str(tmp_path), 4).all_steps() == [2, 4, 6, 7]

    original = {s: fileio.read_json(tmp_path / f"digests/{s}.json") for s in (2, 4, 6)}
    for step, damage in zip((7, 6, 4), ON_DISK.values(), strict=True):
        damage(tmp_path, step)
    monkeypatch.undo()  # the training step without the signal
    caplog.clear()
    train.train_and_evaluate(c, str(tmp_path))
    assert "Resumed from step 2" in caplog.text
    moved = [n for n in _set_aside(tmp_path) if not n.endswith(".json")]
    assert sorted(int(n.split("_")[0]) for n in moved) == [4, 6, 7]
    for name in moved:  # each kept with its record, and named in the warning
        assert f"step {name.split('_')[0]} -> {tmp_path / 'set_aside' / name}" in caplog.text
        assert (tmp_path / "set_aside" / f"{name}.json").exists()
    assert Checkpointer(str(tmp_path), 4).all_steps() == [2, 4, 6, 8]
    assert {s: fileio.read_json(tmp_path / f"digests/{s}.json") for s in original} == original
    caplog.clear()
    c.sampling.consistency_levels = ((),)  # the 1-step sampler only
    modes.run("sample", c, str(tmp_path))
    assert "Restored step" not in caplog.text  # step 8 read back equal to its digest
    assert (tmp_path / "samples" / "1step_step00000008.npz").exists()


def test_unsealed_checkpoint_is_the_last_resort(tmp_path, caplog):
    _two_checkpoints(tmp_path)
    (tmp_path / "digests" / "2.json").unlink()  # no digest: an older version's kill window
    reader = Checkpointer(str(tmp_path), read_only=True)
    reader.restore(_abstract(_state(0.0)))
    assert reader.restored_step == 1
    (tmp_path / "digests" / "1.json").unlink()
    reader = Checkpointer(str(tmp_path), read_only=True)
    restored = reader.restore(_abstract(_state(0.0)))
    assert reader.restored_step == 2
    jax.tree.map(np.testing.assert_array_equal, restored, _state(2.0))
    # A training start that trusts a sealed step moves the newer unsealed one aside.
    fileio.write_json_atomic(tmp_path / "digests" / "1.json", {"sha256": state_digest(_state(1.0))})
    ckpt = Checkpointer(str(tmp_path), 3)
    ckpt.restore(_abstract(_state(0.0)))
    assert ckpt.restored_step == 1 and ckpt.all_steps() == [1]
    assert "step 2: no digest, unverified" in caplog.text and len(_set_aside(tmp_path)) == 2


def test_the_digest_is_on_disk_before_the_save_starts(tmp_path):
    """So a kill between a checkpoint's commit and the next save leaves it sealed: the
    digest file exists when Orbax is asked to save, and the step is listed only once it
    commits."""
    ckpt = Checkpointer(str(tmp_path), 3)
    orbax_save = ckpt._state.save
    seen = []

    def save(step, args):
        seen.append(fileio.read_json(tmp_path / "digests" / f"{step}.json")["sha256"])
        return orbax_save(step, args=args)

    ckpt._state.save = save
    ckpt.save(4, _state(4.0))
    ckpt.close()
    assert seen == [state_digest(_state(4.0))]
    fileio.write_json_atomic(tmp_path / "digests" / "9.json", {"sha256": "0" * 64})  # never saved
    ckpt = Checkpointer(str(tmp_path), 3)
    with pytest.raises(ValueError, match=r"Cannot save step 3 .* checkpoint 4 is not older"):
        ckpt.save(3, _state(3.0))  # Orbax would skip it without a word
    ckpt.save(5, _state(5.0))
    ckpt.close()
    assert fileio.listdir(tmp_path / "digests") == ["4.json", "5.json"]  # 9: no such step


def test_no_restorable_checkpoint_is_one_sentence(tmp_path):
    _two_checkpoints(tmp_path)
    for step in (1, 2):
        (tmp_path / f"checkpoints/{step}/default/_METADATA").unlink()
    with pytest.raises(ValueError, match=r"No checkpoint in .* could be restored \(step 2: "):
        Checkpointer(str(tmp_path), 3).restore(_abstract(_state(0.0)))


def test_read_only_modes_create_nothing(tmp_path):
    missing, empty = tmp_path / "missing", tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NoCheckpointError, match="No checkpoint in"):
        Checkpointer(str(missing), read_only=True)
    c = tiny_config()
    for mode in ("sample", "eval"):
        for workdir in (missing, empty):
            with pytest.raises(FileNotFoundError, match="train first"):
                modes.run(mode, c, str(workdir))
    assert not missing.exists() and list(empty.iterdir()) == []


@pytest.mark.slow
def test_config_json_is_written_once_and_later_starts_are_recorded(tmp_path):
    c = tiny_config()
    c.training.num_steps = 2
    train.train_and_evaluate(c, str(tmp_path))
    record = (tmp_path / "config.json").read_bytes()
    assert json.loads(record)["training"]["num_steps"] == 2
    c.training.num_steps = 4
    train.train_and_evaluate(c, str(tmp_path))
    assert (tmp_path / "config.json").read_bytes() == record
    (start,) = fileio.listdir(tmp_path / "starts")
    assert start.startswith("step00000002_")
    assert fileio.read_json(tmp_path / "starts" / start)["training"]["num_steps"] == 4
    c.sampling.num_samples = 4
    modes.run("sample", c, str(tmp_path))
    assert (tmp_path / "config.json").read_bytes() == record
    assert fileio.listdir(tmp_path / "starts") == [start]
    assert not (tmp_path / "lock.json").exists()  # released at the end of training


def test_unreadable_config_json_is_one_sentence(tmp_path):
    (tmp_path / "config.json").write_text("")
    with pytest.raises(ValueError, match=r"config.json is not valid JSON .*move it away"):
        run_record.check(str(tmp_path), tiny_config().to_dict())


@pytest.mark.slow
def test_nan_before_any_checkpoint_says_nothing_can_be_resumed(tmp_path):
    c = tiny_config()
    c.optim.learning_rate = float("nan")
    with pytest.raises(FloatingPointError, match="no checkpoint of this run is good yet"):
        train.train_and_evaluate(c, str(tmp_path))


def _lock_file(workdir, **fields):
    now = time.time()
    info = {"host": socket.gethostname(), "pid": os.getpid(), "started": now, "heartbeat": now}
    info["boot_id"] = WorkdirLock(str(workdir), 1, 1)._info["boot_id"]
    fileio.write_json_atomic(workdir / "lock.json", {**info, "token": "other", **fields})


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    return int(proc.stdout)


@pytest.mark.parametrize(
    "owner,taken",
    [
        ({}, False),  # this very process: alive
        ({"host": "elsewhere"}, False),  # another host with a fresh heartbeat
        ({"host": "elsewhere", "heartbeat": 0.0}, True),  # its heartbeat stopped long ago
        ({"pid": "DEAD"}, True),  # same host, the process is gone (kill -9)
        ({"boot_id": "rebooted"}, True),  # same host, rebooted since
    ],
)
def test_lock_refuses_a_live_owner_and_takes_over_a_stale_one(tmp_path, owner, taken):
    owner = {k: (_dead_pid() if v == "DEAD" else v) for k, v in owner.items()}
    _lock_file(tmp_path, **owner)
    lock = WorkdirLock(str(tmp_path), heartbeat_seconds=60, stale_seconds=300)
    if not taken:
        with pytest.raises(ValueError, match=r"is in use by process .* lock file"):
            lock.acquire()
        assert fileio.read_json(tmp_path / "lock.json")["token"] == "other"
        return
    lock.acquire()
    assert fileio.read_json(tmp_path / "lock.json")["token"] == lock._info["token"]
    lock.release()
    assert not (tmp_path / "lock.json").exists()


def test_lock_heartbeat_refreshes_the_file(tmp_path):
    lock = WorkdirLock(str(tmp_path), heartbeat_seconds=0.05, stale_seconds=1).acquire()
    first = fileio.read_json(tmp_path / "lock.json")["heartbeat"]
    time.sleep(0.3)
    assert fileio.read_json(tmp_path / "lock.json")["heartbeat"] > first
    lock.release()


def _error_lines(stderr: str) -> list[str]:
    """The `error:` lines of a launch.py run (the interpreter may print warnings after it)."""
    return [line for line in stderr.strip().splitlines() if line.startswith("error:")]


@pytest.mark.slow
def test_second_process_is_refused_and_a_killed_owner_is_taken_over(tmp_path):
    """Real processes: the second start on a busy workdir exits 2 at once with one sentence and
    touches nothing; after kill -9 of the owner the same command resumes from its checkpoint."""
    env = subprocess_env()
    workdir = tmp_path / "w"
    steps = ["--config.training.num_steps=100000", "--config.training.checkpoint_every=2"]
    owner = subprocess.Popen(launch_cmd(workdir, *steps), env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 600
        while not (workdir / "digests" / "2.json").exists():
            assert owner.poll() is None and time.time() < deadline
            time.sleep(0.5)
        before = fileio.read_bytes(workdir / "config.json")
        second = subprocess.run(launch_cmd(workdir, *steps), env=env, capture_output=True,
                                text=True, timeout=240)  # fmt: skip
        assert second.returncode == 2, second.stderr[-2000:]
        (last,) = _error_lines(second.stderr)
        assert last.startswith("error: The workdir") and f"process {owner.pid}" in last
        assert "Traceback" not in second.stderr
        assert fileio.read_bytes(workdir / "config.json") == before
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    saved = Checkpointer(str(workdir), 3).all_steps()
    # Wherever the kill landed (inside a save too), every committed step has its digest: it is
    # written before the save starts (cm/workdir/checkpoint.py), so the resume takes the newest.
    assert all((workdir / "digests" / f"{s}.json").exists() for s in saved)
    good = max(saved)
    target = max(saved) + 2
    again = launch_cmd(workdir, f"--config.training.num_steps={target}", steps[1])
    resumed = subprocess.run(again, env=env, capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Taking over the stale lock" in resumed.stderr
    assert f"Resumed from step {good}" in resumed.stderr
    assert target in Checkpointer(str(workdir), 3).all_steps()


@pytest.fixture
def small_disk(tmp_path):
    """A 300 kB tmpfs: a real full disk (needs root to mount, as on CI's machine). The tiny
    run's checkpoint and snapshot of step 2 fill it (about 170 + 90 kB), a later save fails."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mount)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_full_disk_is_one_line_and_the_same_command_resumes(small_disk):
    env = subprocess_env()
    cmd = launch_cmd(
        small_disk / "w",
        "--config.training.num_steps=8",
        "--config.training.checkpoint_every=2",
        "--config.training.snapshot_every=2",
    )
    full = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert full.returncode == 2, full.stderr[-3000:]
    assert "Traceback" not in full.stderr, full.stderr[-3000:]
    (last,) = _error_lines(full.stderr)
    assert last.startswith("error: the storage of") and "rerun the same command" in last
    subprocess.run(["mount", "-o", "remount,size=256m", str(small_disk)], check=True)
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert 8 in Checkpointer(str(small_disk / "w"), 3).all_steps()
