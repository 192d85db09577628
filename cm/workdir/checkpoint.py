"""Orbax checkpoints in the workdir: full train state for resume, and a dense parameter stream.

workdir/checkpoints/<step>   full state (step, params, optimizer, EMAs), the last few kept
workdir/digests/<step>.json  content digest of that state, written once its save has committed
workdir/snapshots/<step>     parameters only ({"params", "ema"}), every one kept, for averaging

Restoring takes the newest checkpoint whose digest matches what is read back; a checkpoint that
is incomplete, unreadable or altered on disk is skipped for the one before it, and the reason is
logged. A checkpoint without a digest (its save committed, then the process died before the
digest was written) is used only when no sealed checkpoint exists.
"""

import hashlib

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from cm.io import fileio


def state_digest(tree) -> str:
    """sha256 over every leaf's path, dtype, shape and bytes, in tree order."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        array = np.asarray(jax.device_get(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{array.dtype}|{array.shape}|".encode())
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


class NoCheckpointError(FileNotFoundError):
    """The workdir holds no full checkpoint."""


class Checkpointer:
    """Saves and restores the train state and the parameter stream of one workdir.

    read_only=True creates nothing: it refuses a workdir without checkpoints (NoCheckpointError)
    and never writes; the modes that only read a run (sample, eval) use it.
    """

    def __init__(self, workdir: str, keep: int = 1, read_only: bool = False):
        self.workdir = str(workdir)
        root = fileio.local_absolute(workdir)
        self._digests = root / "digests"
        if read_only and not fileio.listdir(root / "checkpoints"):
            raise NoCheckpointError(
                f"No checkpoint in {root / 'checkpoints'}; train first with the same --config "
                "and --workdir and --mode=train."
            )
        self._state = ocp.CheckpointManager(
            root / "checkpoints",
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only),
        )
        self._snapshots = ocp.CheckpointManager(
            root / "snapshots",
            options=ocp.CheckpointManagerOptions(max_to_keep=None, create=not read_only),
        )
        self._unsealed: dict[int, str] = {}  # step -> digest, written once the save commits
        self.restored_step = None  # the step `restore` used (after any fallback)

    def latest_step(self):
        """Step of the newest full checkpoint, or None."""
        return self._state.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._state.all_steps())

    def _saved_digest(self, step: int):
        p = self._digests / f"{step}.json"
        return fileio.read_json(p)["sha256"] if fileio.exists(p) else None

    def restore(self, abstract_state):
        """The newest readable, verified state with the structure, dtypes and shardings of
        `abstract_state`; falls back to older checkpoints and logs why."""
        steps = self.all_steps()[::-1]
        sealed = [s for s in steps if self._saved_digest(s) is not None]
        # Unsealed checkpoints only as a last resort.
        candidates = sealed + [s for s in steps if s not in sealed]
        problems = []
        for step in candidates:
            try:
                restored = self._state.restore(step, args=ocp.args.StandardRestore(abstract_state))
            except Exception as e:  # noqa: BLE001 - any read failure means: try the previous one
                problems.append(f"step {step}: unreadable ({_first_line(e)})")
                continue
            expected = self._saved_digest(step)
            if expected is not None and state_digest(restored) != expected:
                problems.append(f"step {step}: its content differs from its digest (altered)")
                continue
            if expected is None:
                problems.append(f"step {step}: no digest (its save was not sealed)")
            if problems:
                logging.warning(
                    "Restored step %d of %s; skipped or unverified: %s.",
                    step,
                    self.workdir,
                    "; ".join(problems),
                )
            self.restored_step = step
            return restored
        raise ValueError(
            f"No checkpoint in {self.workdir} could be restored ({'; '.join(problems)}); if the "
            "config changed, rerun with the run's config.json, else use a new --workdir."
        )

    def save(self, step: int, state):
        """Saves asynchronously. The digest is computed now (the buffers are donated next step)
        and written once the save has committed: by `seal` when no save is in flight, or here,
        since Orbax starts a save only after the previous one has committed."""
        digest = state_digest(state)
        committed = self._unsealed
        self._state.save(step, args=ocp.args.StandardSave(state))
        self._write_digests(committed)
        self._unsealed = {step: digest}
        self.seal()

    def seal(self):
        """Writes the digests of committed saves (cheap when there is nothing to do)."""
        if self._unsealed and not self._state.is_saving_in_progress():
            self._state.check_for_errors()
            self._write_digests(self._unsealed)
            self._unsealed = {}

    def _write_digests(self, digests: dict):
        """digests/<step>.json for the given steps; drops those of checkpoints Orbax deleted."""
        if not digests or jax.process_index() != 0:
            return
        kept = set(self._state.all_steps())
        for step, digest in digests.items():
            if step in kept:
                fileio.write_json_atomic(self._digests / f"{step}.json", {"sha256": digest})
        for name in fileio.listdir(self._digests):
            if name.endswith(".json") and int(name.split(".")[0]) not in kept:
                fileio.remove(self._digests / name)

    def save_snapshot(self, step: int, params, ema, power_ema=()):
        """{"params", "ema"} and, when power EMAs are tracked, "power_ema" (one per std)."""
        tree = {"params": params, "ema": ema}
        if power_ema:
            tree["power_ema"] = power_ema
        self._snapshots.save(step, args=ocp.args.StandardSave(tree))

    def wait(self):
        """Blocks until asynchronous saves are on disk, then seals them."""
        self._state.wait_until_finished()
        self._snapshots.wait_until_finished()
        self.seal()

    def close(self):
        self.wait()
        self._state.close()
        self._snapshots.close()


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]
