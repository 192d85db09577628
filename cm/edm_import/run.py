"""--mode=import: an NVlabs/edm snapshot becomes a `cm` run at step IMPORT_STEP.

workdir/checkpoints/0   the full train state: params = the file's EMA network, every EMA
                        (constant-rate, half-life and power EMAs) = the same, fresh optimizer
workdir/config.json     the import's config (cm/workdir/run_record.py), like a run that began here
workdir/import.json     provenance: source path, sha256, EDM's class names and arguments

The config must describe the file's network (architecture.py; docs/workflows.md lists the
config for each published file), so `--mode=sample`, `--mode=eval` and `--mode=train` (EDM
fine-tuning) with the same config read the workdir as any run, and other methods start from
it (method.init_from).
Everything that can refuse the import is checked before the workdir is written.
"""

import jax
from absl import logging

from cm import experiment, state
from cm.edm_import import load
from cm.io import fileio
from cm.models import count_params
from cm.workdir import lock as workdir_lock
from cm.workdir import run_record
from cm.workdir.checkpoint import Checkpointer

IMPORT_STEP = 0  # the imported network is the run's start: training resumes from here
RECORD = "import.json"


def import_edm(config, workdir: str):
    """Reads config.edm_import.path and writes its EMA network as workdir's step-0 state."""
    network = load.read_network(config.edm_import.path)
    load.check(config, network)  # the config's first difference from the file, before building
    exp = experiment.build(config)
    shapes = experiment.param_shapes(exp, config)
    params = load.flax_params(config, network, shapes)
    run_record.check(workdir, config.to_dict())
    existing = fileio.listdir(fileio.path(workdir) / "checkpoints")
    if existing:
        raise ValueError(
            f"{workdir} already holds a run (checkpoints {', '.join(existing)}); import into "
            "a new --workdir."
        )
    lock = workdir_lock.lock_workdir(workdir, config.training)
    try:
        train_state = _initial_state(exp, config, params)
        run_record.record_start(workdir, config.to_dict(), IMPORT_STEP)
        ckpt = Checkpointer(workdir, config.training.keep_checkpoints)
        ckpt.save(IMPORT_STEP, train_state)
        ckpt.close()
        _write_record(workdir, network, count_params(params))
    finally:
        if lock is not None:
            lock.release()
    count = count_params(params)
    message = (
        f"Imported {network.source} ({network.precond_class}({network.model_class}), {count} "
        f"parameters) into {workdir}/checkpoints/{IMPORT_STEP} as params and every EMA."
    )
    logging.info(message)
    if jax.process_index() == 0:
        print(message)
    return train_state


def _initial_state(exp, config, params) -> state.TrainState:
    """The step-0 state with `params` (numpy) as params and as every EMA, replicated."""
    t = config.training
    params = jax.device_put(params, exp.replicated)

    def make(p):
        return state.create(p, exp.tx, state.num_emas(t), len(t.power_ema_stds))

    return jax.jit(make, out_shardings=exp.replicated)(params)


def _write_record(workdir: str, network: load.EdmNetwork, count: int):
    if jax.process_index() != 0:
        return
    fileio.write_json_atomic(
        fileio.path(workdir) / RECORD,
        {
            "source": network.source,
            "sha256": network.sha256,
            "network": f"{network.precond_class}({network.model_class})",
            "precond_kwargs": network.precond_kwargs,
            "model_kwargs": network.model_kwargs,
            "tensors": len(network.tensors),
            "parameters": count,
            "step": IMPORT_STEP,
        },
    )
