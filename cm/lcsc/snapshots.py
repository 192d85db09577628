"""The parameter stream of a run (<workdir>/snapshots/<step>), one member at a time.

A snapshot holds {"params": online, "ema": (state.num_emas), "power_ema": (one per
training.power_ema_stds, when tracked)}. A member names one tree in it: ("params",),
("ema", i) or ("power_ema", j). Only the requested member is read from disk, so no more than
one parameter tree of one snapshot sits in host memory per call.
"""

import jax
import orbax.checkpoint as ocp

from cm import experiment, state
from cm.io import fileio
from cm.workdir.checkpoint import orbax_cause

ONLINE = ("params",)


def source_member(source: str) -> tuple:
    """lcsc.source -> member: 'params' (online parameters) or 'ema' (the first EMA)."""
    members = {"params": ONLINE, "ema": ("ema", 0)}
    if source not in members:
        raise ValueError(f"Unknown lcsc.source {source!r}; valid: {sorted(members)}.")
    return members[source]


def require(workdir: str):
    """The run's snapshot folder; FileNotFoundError (one sentence, nothing created) if absent."""
    path = fileio.local_absolute(workdir) / "snapshots"
    if not fileio.exists(path):
        raise FileNotFoundError(
            f"No parameter snapshots in {path}; train with --config.training.snapshot_every "
            "> 0 (the same --config and --workdir) first."
        )
    return path


class SnapshotStream:
    """Read access to <workdir>/snapshots of a run trained with `config` (never writes)."""

    def __init__(self, workdir: str, config, exp: experiment.Experiment):
        path = require(workdir)
        self._manager = ocp.CheckpointManager(
            path, options=ocp.CheckpointManagerOptions(read_only=True)
        )
        shapes = experiment.param_shapes(exp, config)
        self._abstract = jax.tree.map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=exp.replicated), shapes
        )
        self._restore_args = jax.tree.map(
            lambda s: ocp.ArrayRestoreArgs(sharding=exp.replicated), shapes
        )
        self._skip = jax.tree.map(lambda s: ocp.PLACEHOLDER, shapes)
        self._counts = {
            "ema": state.num_emas(config.training),
            "power_ema": len(config.training.power_ema_stds),
        }
        self.workdir = workdir

    def steps(self, first: int = 0, last: int = 0) -> list[int]:
        """Snapshot steps with first <= step <= last (last 0 = no upper bound), ascending."""
        steps = sorted(self._manager.all_steps())
        return [s for s in steps if s >= first and (not last or s <= last)]

    def _item(self, member: tuple, leaf, skip):
        tree = {"params": leaf if member == ONLINE else skip}
        for name, count in self._counts.items():
            if count:
                chosen = member[1] if member[0] == name else -1
                tree[name] = tuple(leaf if i == chosen else skip for i in range(count))
        return tree

    def load(self, step: int, member: tuple = ONLINE):
        """The member's parameter tree at `step`, replicated on the devices."""
        kind = member[0]
        if kind != "params" and not 0 <= member[1] < self._counts.get(kind, 0):
            raise ValueError(
                f"The snapshots of {self.workdir} hold {self._counts.get(kind, 0)} {kind} trees, "
                f"not index {member[1]}; check training.ema_rates / training.power_ema_stds."
            )
        args = ocp.args.PyTreeRestore(
            item=self._item(member, self._abstract, self._skip),
            restore_args=self._item(member, self._restore_args, self._skip),
        )
        try:
            tree = self._manager.restore(step, args=args)
        except (ValueError, KeyError, FileNotFoundError) as e:
            # The run's config was checked against config.json: this snapshot is another
            # run's (one trained earlier in this workdir, or copied in).
            raise ValueError(
                f"The snapshot at step {step} in {self.workdir} does not match this config "
                f"({orbax_cause(e)}), so it was not written by this run; leave it out with "
                "--config.lcsc.first_step / --config.lcsc.last_step, or move "
                f"{fileio.path(self.workdir) / 'snapshots' / str(step)} out of snapshots/."
            ) from e
        return tree["params"] if member == ONLINE else tree[kind][member[1]]

    def close(self):
        self._manager.close()
