"""The training loop: one jitted, donated, data-parallel step per call; logs, checkpoints, grids.

Randomness is the "train" stream's key of the step (cm/keys.py) and the data order is a
function of the step, so a run killed at any moment resumes from its last checkpoint exactly as
if it had never stopped.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from orbax.checkpoint import multihost as ocp_multihost

from cm import experiment, sampling, state
from cm.data import batches, coupling, sources
from cm.evaluation.run import periodic as periodic_eval
from cm.io import fileio, images
from cm.io.progress import TrainClock
from cm.train_step import global_batch, make_train_step  # noqa: F401 (train.make_train_step)
from cm.workdir import lock as workdir_lock
from cm.workdir import preemption, run_record
from cm.workdir.checkpoint import Checkpointer


@jax.jit
def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def check_batch_size(config, devices: int):
    batch = config.training.batch_size
    if batch % devices:
        raise ValueError(
            f"training.batch_size {batch} is not a multiple of the {devices} devices; "
            "set --config.training.batch_size to a multiple."
        )


def write_sample_grids(config, exp, samplers, params, step: int, workdir: str, writer):
    """PNG grids in workdir/samples and TensorBoard images, one per sampler."""
    n = config.training.grid_samples
    devices = exp.mesh.size
    batch = math.ceil(n / devices) * devices
    out_dir = fileio.path(workdir) / "samples"
    for name, sampler in samplers.items():
        pics, _ = sampling.generate(sampler, params, config.sampling.seed, n, batch, ordered=True)
        grid = images.make_grid(pics, columns=config.data.num_classes or None)
        if jax.process_index() == 0:
            upscale = images.display_upscale(pics.shape[1])  # decoded latents: larger than data
            images.save_png(out_dir / f"step{step:08d}_{name}.png", grid, upscale)
        writer.write_images(step, {f"samples/{name}": grid[None]})


def train_and_evaluate(config, workdir: str):
    """Trains config.training.num_steps steps in workdir, resuming from its last checkpoint.

    Everything that can refuse the run (data, config, the run's record, the lock) is checked
    before anything is written to the workdir.
    """
    t = config.training
    source = sources.load_source(config.data)
    exp = experiment.build(config)
    check_batch_size(config, exp.mesh.size)
    run_record.check(workdir, config.to_dict())
    frozen = shapes = None
    if not fileio.listdir(fileio.path(workdir) / "checkpoints"):
        # A new run: refuse a bad source or weights file before writing; what is read here
        # (the weights, the traced parameter shapes) builds the state, without a second read.
        if config.method.init_from:
            shapes = experiment.param_shapes(exp, config)
            experiment.check_init_from(exp, config, shapes)
        elif exp.method.scratch_warning:
            logging.warning("%s", exp.method.scratch_warning)  # sCT from scratch: allowed
        frozen = experiment.frozen_weights(exp, config)
    lock = workdir_lock.lock_workdir(workdir, t)
    try:
        with preemption.watching() as watch:  # SIGTERM / SIGINT: a checkpoint, then a stop
            return _train(config, workdir, source, exp, frozen, shapes, watch)
    finally:
        if lock is not None:
            lock.release()


def _train(config, workdir: str, source, exp: experiment.Experiment, frozen, shapes, watch):
    t = config.training
    ckpt = Checkpointer(workdir, t.keep_checkpoints)
    if ckpt.latest_step() is not None:
        train_state = ckpt.restore(experiment.abstract_state(exp, config))
        logging.info("Resumed from step %d in %s.", int(train_state.step), workdir)
    else:
        train_state = experiment.init_state(exp, config, frozen, shapes)
    start = int(train_state.step)
    run_record.record_start(workdir, config.to_dict(), start)

    # clu's writers import TensorFlow (about 3 s): here, so that the other modes and the runs
    # refused before training never pay it.
    from clu import metric_writers, periodic_actions

    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    if start == 0:
        writer.write_hparams({k: str(v) for k, v in config.to_dict().items()})
    progress = periodic_actions.ReportProgress(num_train_steps=t.num_steps, writer=writer)
    step_fn = make_train_step(exp, tuple(t.ema_rates), config.seed)
    samplers = experiment.samplers(config, exp)
    evaluate = periodic_eval(config, exp, samplers, workdir)  # None unless eval.every > 0
    stream = batches.BatchIterator(
        source,
        start,
        t.batch_size,
        config.seed,
        config.data.random_flip,
        jax.process_index(),
        jax.process_count(),
    )
    stream = coupling.wrap_if_enabled(
        stream, config, exp.mesh.size, start, jax.process_index(), jax.process_count()
    )
    last_good = ckpt.restored_step  # the checkpoint this run trusts: verified, or saved by it
    if jax.process_count() > 1:
        # Start the steps together (a coordination-service barrier, no collective): process 0
        # alone sets up TensorBoard, and on a loaded CPU that skew can exceed the 30 s that the
        # first step's gloo rendezvous allows.
        ocp_multihost.sync_global_processes("cm.train.first_step")
    watch.begin(start)
    stopping = False
    clock = TrainClock(start, t.batch_size, t.num_steps)  # images/s, elapsed, ETA in the log
    try:
        for step in range(start + 1, t.num_steps + 1):  # `step` = steps done after this one
            with jax.profiler.StepTraceAnnotation("train", step_num=step):
                train_state, metrics = step_fn(train_state, global_batch(next(stream), exp))
            progress(step)
            finished = step == t.num_steps or step - start == t.steps_per_run
            # A signal: this step is the last, with its checkpoint (cm/workdir/preemption.py).
            stopping = watch.reached(step) and not finished
            is_last = finished or stopping
            if step % t.log_every == 0 or is_last:
                metrics = jax.device_get(metrics)
                _nan_guard(float(metrics["loss"]), step, workdir, last_good)
                writer.write_scalars(step, {k: float(v) for k, v in metrics.items()})
                line = clock.line(step, float(metrics["loss"]))
                if jax.process_index() == 0:
                    logging.info("%s", line)
            if t.snapshot_every and step % t.snapshot_every == 0:
                _nan_guard_state(train_state, step, workdir, last_good)
                ckpt.save_snapshot(step, train_state.params, train_state.ema, train_state.power_ema)
            if step % t.checkpoint_every == 0 or is_last:
                _nan_guard_state(train_state, step, workdir, last_good)
                ckpt.save(step, train_state)
                last_good = step
            if t.sample_every and not stopping and (step % t.sample_every == 0 or is_last):
                params = state.sampling_params(train_state, config.sampling.params)
                write_sample_grids(config, exp, samplers, params, step, workdir, writer)
            if evaluate and not stopping and (step % config.eval.every == 0 or step == t.num_steps):
                params = state.sampling_params(train_state, config.sampling.params)
                writer.write_scalars(step, evaluate(params))
            if is_last:
                break
    finally:
        stream.close()
        ckpt.close()
        writer.flush()
    if stopping:
        raise watch.stopped(step, str(fileio.path(workdir) / "checkpoints" / str(step)))
    return train_state


def _nan_guard(loss: float, step: int, workdir: str, last_good):
    if np.isfinite(loss):
        return
    kept = (
        f"the last good checkpoint (step {last_good}) in {workdir} is kept"
        if last_good is not None
        else f"no checkpoint of this run is good yet, so nothing in {workdir} can be resumed"
    )
    raise FloatingPointError(
        f"The loss became {loss} at step {step}; training stopped and {kept}: lower "
        "optim.learning_rate or set optim.grad_clip, then rerun the same command."
    )


def _nan_guard_state(train_state, step: int, workdir: str, last_good):
    if not bool(_all_finite((train_state.params, train_state.ema, train_state.power_ema))):
        _nan_guard(float("nan"), step, workdir, last_good)
