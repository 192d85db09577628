"""The run's record in its workdir: how it was trained, written once and never overwritten.

workdir/config.json                   the config of the training start that began the run
workdir/starts/step<k>_<utc>.json     the effective config of every later training start

Read-only modes (sample, eval, summary, lcsc) check their config against config.json and never
write it. A training start that finds no checkpoint begins the run, so it (re)writes
config.json: nothing was trained under an older one (a missing config.json is also written).
"""

import datetime
import json

import jax

from cm.io import fileio

# Config fields that change the shape of the saved state: a resume with other values cannot work.
STRUCTURAL_FIELDS = (
    "method.name",  # the method's auxiliary parameters and extra state (cm/methods/table.py)
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
# Fields (structural, or inside a structural section) newer than some recorded runs, with the
# value those runs implicitly had: their absence from an older config.json is not a change.
FIELDS_ADDED_LATER = {
    "training.power_ema_stds": [],
    "training.ema_halflife_images": 0,
    "model.augment_dim": 0,
    "model.fourier_param": False,
}
# Fields inside a structural section that only say how the network is computed, not what is
# saved: a resume may change them, and runs recorded before they existed lack them.
COMPUTE_ONLY_FIELDS = ("model.matmul_precision", "model.remat")


def _lookup(tree: dict, dotted: str):
    for key in dotted.split("."):
        tree = tree.get(key, {}) if isinstance(tree, dict) else None
    return tree


def _normalize(value):
    """JSON round trip so that tuples and lists compare equal."""
    return json.loads(json.dumps(value, default=str))


def _with_later_fields(saved: dict) -> dict:
    """The recorded config with each missing FIELDS_ADDED_LATER entry at its implicit value."""
    saved = _normalize(saved)
    for dotted, value in FIELDS_ADDED_LATER.items():
        *parents, leaf = dotted.split(".")
        node = saved
        for key in parents:
            node = node.setdefault(key, {}) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf not in node:
            node[leaf] = value
    return saved


def _structural(tree: dict, field: str):
    """The value of `field` in `tree`, without the COMPUTE_ONLY_FIELDS inside it."""
    value = _normalize(_lookup(tree, field))
    for dotted in COMPUTE_ONLY_FIELDS:
        section, _, name = dotted.rpartition(".")
        if section == field and isinstance(value, dict):
            value.pop(name, None)
    return value


def _differences(old, new, field: str) -> list[tuple[str, object, object]]:
    """(dotted field, old, new) of every leaf that differs; a section compared key by key."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return [] if old == new else [(field, old, new)]
    missing = "(absent)"
    return [
        diff
        for key in sorted(set(old) | set(new))
        for diff in _differences(old.get(key, missing), new.get(key, missing), f"{field}.{key}")
    ]


def check_compatible(saved: dict, current: dict, workdir: str):
    """Raises one sentence naming the structural fields that differ from the saved run (the
    first structural section that differs; each of its differing leaves)."""
    saved = _with_later_fields(saved)
    for field in STRUCTURAL_FIELDS:
        diffs = _differences(_structural(saved, field), _structural(current, field), field)
        if diffs:
            listed = "; ".join(f"{name}: {old} there, {new} now" for name, old, new in diffs)
            back = ", ".join(f"--config.{name}" for name, _, _ in diffs)
            raise ValueError(
                f"The workdir {workdir} holds a run of an incompatible config ({listed}); use a "
                f"new --workdir or set back {back}."
            )


def read(workdir: str):
    """config.json of the run as a dict, or None when the workdir has none."""
    p = fileio.path(workdir) / "config.json"
    if not fileio.exists(p):
        return None
    try:
        return fileio.read_json(p)
    except ValueError as e:
        raise ValueError(
            f"{p} is not valid JSON ({e}); restore it from a copy, or move it away to let the "
            "next training start record the current config."
        ) from e


def check(workdir: str, config_dict: dict):
    """Compatibility of `config_dict` with the recorded run, if there is one."""
    saved = read(workdir)
    if saved is not None:
        check_compatible(saved, config_dict, workdir)


def record_start(workdir: str, config_dict: dict, start_step: int):
    """config.json for a run that begins (start_step 0 and no checkpoint), else a new file under
    starts/ with the effective config of this resume. Process 0 writes; atomically."""
    if jax.process_index() != 0:
        return
    root = fileio.path(workdir)
    if start_step == 0 or not fileio.exists(root / "config.json"):
        fileio.write_json_atomic(root / "config.json", config_dict)
        return
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    fileio.write_json_atomic(root / "starts" / f"step{start_step:08d}_{stamp}.json", config_dict)
