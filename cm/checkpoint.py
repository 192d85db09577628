"""Orbax checkpoints in the workdir: full train state for resume, and a dense parameter stream.

workdir/checkpoints/<step>  full state (step, params, optimizer, EMAs), the last few kept
workdir/snapshots/<step>    parameters only ({"params", "ema"}), every one kept, for averaging
workdir/config.json         the config of the run, checked for compatibility on resume
"""

import dataclasses
import json
import os

import jax
import orbax.checkpoint as ocp

# Config fields that change the shape of the saved state: a resume with other values cannot work.
STRUCTURAL_FIELDS = (
    "model",
    "data.image_size",
    "data.channels",
    "data.num_classes",
    "optim.name",
    "optim.weight_decay",
    "optim.grad_clip",
    "optim.warmup_steps",
    "training.ema_rates",
    "training.ema_halflife_images",
    "training.power_ema_stds",
)
# Structural fields (or fields inside one) newer than some saved runs, with the value those
# runs implicitly had.
FIELDS_ADDED_LATER = {
    "training.power_ema_stds": [],
    "training.ema_halflife_images": 0,
    "model.augment_dim": 0,
}


def _lookup(tree: dict, dotted: str):
    for key in dotted.split("."):
        tree = tree.get(key, {}) if isinstance(tree, dict) else None
    return tree


def _normalize(value):
    """JSON round trip so that tuples and lists compare equal."""
    return json.loads(json.dumps(value))


def _with_later_fields(saved: dict) -> dict:
    """The saved config with each missing FIELDS_ADDED_LATER entry at its implicit value."""
    saved = _normalize(saved)
    for dotted, value in FIELDS_ADDED_LATER.items():
        *parents, leaf = dotted.split(".")
        node = saved
        for key in parents:
            node = node.setdefault(key, {}) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf not in node:
            node[leaf] = value
    return saved


def check_compatible(saved: dict, current: dict, workdir: str):
    """Raises one sentence naming the first structural field that differs from the saved run."""
    saved = _with_later_fields(saved)
    for field in STRUCTURAL_FIELDS:
        old, new = _normalize(_lookup(saved, field)), _normalize(_lookup(current, field))
        if old != new:
            raise ValueError(
                f"The workdir {workdir} holds a checkpoint of an incompatible config ({field}: "
                f"{old} there, {new} now); use a new --workdir or set --config.{field} back."
            )


def _on_disk(train_state):
    """A train state as saved: a dict of its fields without an empty power_ema, so that a run
    without power EMAs keeps the layout its checkpoints had before the field existed."""
    if not dataclasses.is_dataclass(train_state) or getattr(train_state, "power_ema", 1):
        return train_state
    fields = {f.name: getattr(train_state, f.name) for f in dataclasses.fields(train_state)}
    del fields["power_ema"]
    return fields


def _from_disk(abstract_state, saved):
    return abstract_state.replace(**saved) if isinstance(saved, dict) else saved


class Checkpointer:
    """Saves and restores the train state and the parameter stream of one workdir."""

    def __init__(self, workdir: str, keep: int, config_dict: dict):
        self.workdir = workdir
        self._state = ocp.CheckpointManager(
            os.path.join(os.path.abspath(workdir), "checkpoints"),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )
        self._snapshots = ocp.CheckpointManager(
            os.path.join(os.path.abspath(workdir), "snapshots"),
            options=ocp.CheckpointManagerOptions(max_to_keep=None, create=True),
        )
        self._config_path = os.path.join(workdir, "config.json")
        self._check_or_write_config(config_dict)

    def _check_or_write_config(self, config_dict: dict):
        if os.path.exists(self._config_path) and self.latest_step() is not None:
            with open(self._config_path) as f:
                check_compatible(json.load(f), config_dict, self.workdir)
        if jax.process_index() == 0:
            os.makedirs(self.workdir, exist_ok=True)
            with open(self._config_path, "w") as f:
                json.dump(config_dict, f, indent=2, default=str)

    def latest_step(self):
        """Step of the newest full checkpoint, or None."""
        return self._state.latest_step()

    def restore(self, abstract_state, step=None):
        """The saved state with the structure, dtypes and shardings of `abstract_state`."""
        step = self.latest_step() if step is None else step
        try:
            return self._restore_either_layout(step, abstract_state)
        except (ValueError, KeyError) as e:
            raise ValueError(
                f"The checkpoint at step {step} in {self.workdir} does not match this config "
                f"({str(e).splitlines()[0][:200]}); use a new --workdir or the run's old config."
            ) from e

    def _restore_either_layout(self, step: int, abstract_state):
        """Tries the layout `save` writes, then the train state as it is (checkpoints written
        while an empty power_ema was saved as a field)."""
        on_disk = _on_disk(abstract_state)
        try:
            saved = self._state.restore(step, args=ocp.args.StandardRestore(on_disk))
            return _from_disk(abstract_state, saved)
        except (ValueError, KeyError):
            if on_disk is abstract_state:
                raise
            return self._state.restore(step, args=ocp.args.StandardRestore(abstract_state))

    def save(self, step: int, state):
        self._state.save(step, args=ocp.args.StandardSave(_on_disk(state)))

    def save_snapshot(self, step: int, params, ema, power_ema=()):
        """{"params", "ema"} and, when power EMAs are tracked, "power_ema" (one per std)."""
        tree = {"params": params, "ema": ema}
        if power_ema:
            tree["power_ema"] = power_ema
        self._snapshots.save(step, args=ocp.args.StandardSave(tree))

    def snapshot_steps(self):
        return list(self._snapshots.all_steps())

    def restore_snapshot(self, step: int, abstract=None):
        args = ocp.args.StandardRestore(abstract) if abstract is not None else None
        return self._snapshots.restore(step, args=args)

    def wait(self):
        """Blocks until asynchronous saves are on disk."""
        self._state.wait_until_finished()
        self._snapshots.wait_until_finished()

    def close(self):
        self.wait()
        self._state.close()
        self._snapshots.close()
