"""Orbax checkpoints in the workdir: full train state for resume, and a dense parameter stream.

workdir/checkpoints/<step>   full state (step, params, optimizer, EMAs), the last few kept
workdir/digests/<step>.json  content digest of that state, written before its save starts
workdir/snapshots/<step>     parameters only ({"params", "ema"}), every one kept, for averaging
workdir/set_aside/<step>_<utc>/ (and .json)  a checkpoint a training start could not use, kept

The digest is written before Orbax starts the save, so a checkpoint is listed (once Orbax has
committed it: a rename into place, or a commit marker on an object store) only with its digest
on disk: a kill at any moment leaves no committed checkpoint without its digest. A digest
whose save never committed names no listed step and is ignored, then rewritten when that step
is saved again.

Restoring takes the newest checkpoint whose digest matches what is read back; a checkpoint that
is incomplete, unreadable or altered on disk is skipped for the one before it, and the reason is
logged. A checkpoint without a digest (written by an older version of `cm`, which wrote digests
after the commit) is used only when no sealed checkpoint exists. A training start moves every
checkpoint newer than the one it restored to set_aside/, named in the warning, never deleted:
Orbax saves no step at or below its newest listed one, so a damaged step left in place would
never be saved again (the resumed run would end with its final state nowhere on disk).
"""

import datetime
import hashlib

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import multihost as ocp_multihost

from cm.io import fileio

SET_ASIDE = "set_aside"  # workdir folder of the checkpoints a training start could not use


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
        self._root = root
        self._digests = root / "digests"
        self._read_only = read_only
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
        self.restored_step = None  # the step `restore` used (after any fallback)
        self.set_aside: list[str] = []  # where `restore` moved the checkpoints it skipped

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
            restored, problem = self._read(step, abstract_state)
            if problem:
                problems.append(problem)
            if restored is not None:
                self._accept(step, steps, problems)
                return restored
        raise ValueError(
            f"No checkpoint in {self.workdir} could be restored ({'; '.join(problems)}); if the "
            "config changed, rerun with the run's config.json, else use a new --workdir."
        )

    def _read(self, step: int, abstract_state):
        """(state or None when unusable, the problem or None) of one checkpoint."""
        try:
            restored = self._state.restore(step, args=ocp.args.StandardRestore(abstract_state))
        except Exception as e:  # noqa: BLE001 - any read failure means: try the previous one
            return None, f"step {step}: unreadable ({orbax_cause(e)})"
        expected = self._saved_digest(step)
        if expected is None:
            return restored, f"step {step}: no digest (its save was not sealed)"
        if state_digest(restored) != expected:
            return None, f"step {step}: its content differs from its digest (altered)"
        return restored, None

    def _accept(self, step: int, steps: list[int], problems: list[str]):
        """Records `step` as the one restored and logs what was skipped; a training start
        also moves every newer checkpoint aside (see the module docstring)."""
        newer = [s for s in steps if s > step]
        for s in newer:  # unsealed ones, not tried while a sealed one restores
            if not any(p.startswith(f"step {s}:") for p in problems):
                problems.append(f"step {s}: no digest, unverified (a sealed step is preferred)")
        moved = ""
        if newer and not self._read_only:
            self._set_aside(newer, problems)
            moved = f" Moved aside (kept, to be saved again): {'; '.join(self.set_aside)}."
        if problems:
            logging.warning(
                "Restored step %d of %s; skipped or unverified: %s.%s",
                step,
                self.workdir,
                "; ".join(problems),
                moved,
            )
        self.restored_step = step

    def _set_aside(self, steps: list[int], problems: list[str]):
        """Moves checkpoints/<step> of each of `steps` to set_aside/<step>_<utc>/ with a record
        set_aside/<step>_<utc>.json (the reason, the digest it had), and drops its digest, so
        that the resumed run saves those steps again. Never deletes a checkpoint."""
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        aside = self._root / SET_ASIDE
        for step in steps:
            target = aside / f"{step}_{stamp}"
            self.set_aside.append(f"step {step} -> {target}")
            if jax.process_index() != 0:
                continue
            reason = next((p for p in problems if p.startswith(f"step {step}:")), "")
            record = {"step": step, "reason": reason, "sha256": self._saved_digest(step)}
            # The record first: on an object store it is what makes the folder exist.
            fileio.write_json_atomic(f"{target}.json", record)
            fileio.move(self._root / "checkpoints" / str(step), target)
            fileio.remove(self._digests / f"{step}.json")
        if jax.process_count() > 1:
            ocp_multihost.sync_global_processes("cm.checkpoint.set_aside")
        self._state.reload()

    def save(self, step: int, state):
        """Saves asynchronously. The digest is computed now (the buffers are donated next step)
        and written before the save starts, so the save commits with its digest on disk."""
        latest = self.latest_step()
        if latest is not None and step <= latest:
            # Orbax would skip the save without a word (its newest step is not older).
            raise ValueError(
                f"Cannot save step {step} in {self.workdir}: checkpoint {latest} is not older; "
                "move the newer checkpoints out of checkpoints/ or use a new --workdir."
            )
        if jax.process_index() == 0:
            fileio.write_json_atomic(
                self._digests / f"{step}.json", {"sha256": state_digest(state)}
            )
        self._state.save(step, args=ocp.args.StandardSave(state))
        self._drop_digests(keep={step})

    def _drop_digests(self, keep: set):
        """Removes the digests of steps that have no folder on disk (Orbax deleted it, or the
        save never committed) and are not in `keep` (a save in flight). The folders, not
        Orbax's step list: that list drops a step when a save starts, its folder goes only
        once that save commits, and a kill in between leaves the folder listed at the next
        start."""
        if jax.process_index() != 0:
            return
        folders = fileio.listdir(self._root / "checkpoints")
        kept = {int(name) for name in folders if name.isdigit()} | keep
        for name in fileio.listdir(self._digests):
            stem = name.removesuffix(".json")
            if name.endswith(".json") and stem.isdigit() and int(stem) not in kept:
                fileio.remove(self._digests / name)

    def save_snapshot(self, step: int, params, ema, power_ema=()):
        """{"params", "ema"} and, when power EMAs are tracked, "power_ema" (one per std)."""
        tree = {"params": params, "ema": ema}
        if power_ema:
            tree["power_ema"] = power_ema
        self._snapshots.save(step, args=ocp.args.StandardSave(tree))

    def wait(self):
        """Blocks until asynchronous saves are on disk (and Orbax's deletions of old ones)."""
        self._state.wait_until_finished()
        self._snapshots.wait_until_finished()
        self._state.check_for_errors()
        if not self._read_only:
            self._drop_digests(keep=set())

    def close(self):
        self.wait()
        self._state.close()
        self._snapshots.close()


# Where Orbax and TensorStore append their own advice (strict=False, padding, their logs) to
# an error's first line: advice about their API, not about a cm command.
_LIBRARY_ADVICE = ("Truncating/padding is disabled", "To enable it", "See full TensorStore")


def orbax_cause(e: BaseException) -> str:
    """The first line of a (Orbax) error, without the library's advice, at most 200 characters."""
    text = str(e).strip().splitlines()
    line = text[0] if text else type(e).__name__
    for advice in _LIBRARY_ADVICE:
        line = line.split(advice)[0]
    return line.strip().rstrip(".")[:200]
