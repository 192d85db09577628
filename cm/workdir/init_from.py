"""method.init_from: the network parameters a new run starts from, read from another run.

The source is a `cm` workdir (its newest checkpoint whose save committed, i.e. whose digest was
written, else its newest) or one checkpoint folder `<workdir>/checkpoints/<step>`: a trained
EDM run, `--mode=import`'s output, any `cm` run. Only one parameter tree is read from it (an
Orbax partial restore), chosen by method.init_params: "ema", the source's first EMA (what it
samples from; its online parameters when it tracks no EMA), or "params", its online parameters.
The run's state starts from them at step 0 (experiment.fresh_state): parameters, every EMA and
power EMA, and the method's extra state (CD's frozen teacher). Later resumes read the run's own
checkpoints, never the source again.

Checks, each one sentence: the source exists and holds a checkpoint; its tree has exactly the
parameters of this config's network, with the same shapes and dtypes; and when it recorded its
config (config.json), its method is one the run's method accepts (its entry's init_sources,
handed in by the caller)
and its noise label and sigma_data are this config's (the network learned to read them).
The content digest of the source checkpoint is not re-checked (only the parameter tree is read,
and the digest covers the whole state).
"""

import jax
import numpy as np
import orbax.checkpoint as ocp

from cm.io import fileio
from cm.workdir.checkpoint import Checkpointer, NoCheckpointError

INIT_PARAMS = ("ema", "params")  # method.init_params: which tree of the source


def _missing(path: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"method.init_from={path!r} holds no cm checkpoint; point it at the workdir (or "
        "<workdir>/checkpoints/<step>) of a run that saved one, such as an EDM run or the "
        "output of --mode=import."
    )


def locate(path: str) -> tuple:
    """(workdir, step) of the checkpoint `path` names: a workdir or one of its step folders."""
    root = fileio.local_absolute(path)
    if root.name.isdigit() and root.parent.name == "checkpoints":
        if not fileio.exists(root / "default"):
            raise _missing(path)
        return root.parent.parent, int(root.name)
    try:
        ckpt = Checkpointer(str(root), read_only=True)
    except NoCheckpointError:
        raise _missing(path) from None
    steps = ckpt.all_steps()
    ckpt.close()
    if not steps:
        raise _missing(path)
    sealed = [s for s in steps if fileio.exists(root / "digests" / f"{s}.json")]
    return root, max(sealed or steps)


def _flat_shapes(tree) -> dict:
    """{"a/b/c": (shape, dtype name)} of a nested dict of arrays or array metadata."""
    out = {}
    for keys, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in keys)
        out[name] = (tuple(leaf.shape), np.dtype(leaf.dtype).name)
    return out


def _architecture_difference(source: dict, target: dict) -> str:
    """'' when equal, else the first difference, for the error sentence."""
    for name in sorted(set(source) | set(target)):
        if name not in source:
            return f"its checkpoint lacks the parameter {name}"
        if name not in target:
            return f"its parameter {name} is not in this config's network"
        if source[name] != target[name]:
            return f"its parameter {name} is {source[name]}, this network's is {target[name]}"
    return ""


def _check_recorded_config(config, path: str, workdir, allowed):
    """The source's recorded method (one of `allowed`, or any when None), noise label and
    sigma_data (when it has config.json)."""
    record = workdir / "config.json"
    if not fileio.exists(record):
        return
    source = fileio.read_json(record).get("method", {})
    name = source.get("name")
    if allowed is not None and name is not None and name not in allowed:
        raise ValueError(
            f"method.init_from={path!r} holds a {name!r} run, but method.name="
            f"{config.method.name!r} starts from one of {list(allowed)}; point it at such a run."
        )
    for field in ("noise_label", "sigma_data"):
        if field in source and source[field] != config.method[field]:
            raise ValueError(
                f"method.init_from={path!r} was trained with method.{field}="
                f"{source[field]!r}, not {config.method[field]!r}; set "
                f"--config.method.{field}={source[field]}."
            )


def check(config, shapes, init_sources):
    """Every check of the module docstring, reading only metadata; returns (checkpoint folder,
    the Orbax partial-restore item that selects the parameter tree). init_sources: the run's
    method entry's (spec.Method.init_sources)."""
    path, which = config.method.init_from, config.method.init_params
    if which not in INIT_PARAMS:
        raise ValueError(
            f"method.init_params={which!r} is invalid: it must be one of {list(INIT_PARAMS)}; "
            "set --config.method.init_params to one of them."
        )
    workdir, step = locate(path)
    _check_recorded_config(config, path, workdir, init_sources)
    directory = workdir / "checkpoints" / str(step) / "default"
    try:
        saved = ocp.PyTreeCheckpointHandler().metadata(directory).tree
    except Exception as e:  # noqa: BLE001 - any unreadable metadata is the same user error
        raise ValueError(
            f"The checkpoint {directory} of method.init_from is unreadable ({type(e).__name__}); "
            "point method.init_from at another checkpoint of that run."
        ) from None
    emas = saved.get("ema") or []
    if which == "ema" and emas:
        source, item = emas[0], {"ema": [shapes] + [None] * (len(emas) - 1)}
    else:
        source, item = saved.get("params", {}), {"params": shapes}
    difference = _architecture_difference(_flat_shapes(source), _flat_shapes(shapes))
    if difference:
        raise ValueError(
            f"The network of method.init_from={path!r} does not match this config's ("
            f"{difference}); set the model and data fields to those of the run it comes from."
        )
    return directory, item


def load_params(config, shapes, init_sources):
    """The parameter tree of method.init_from as numpy arrays, with the structure of `shapes`
    (this config's network: a tree of jax.ShapeDtypeStruct), after `check`."""
    directory, item = check(config, shapes, init_sources)
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    restored = ocp.PyTreeCheckpointer().restore(
        directory,
        args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True),
    )
    tree = restored["ema"][0] if "ema" in item else restored["params"]
    return jax.tree.map(lambda _, a: np.asarray(a), shapes, tree)
