"""What `launch.py --mode=...` runs: one function of (config, workdir) per mode."""

import jax
from absl import logging

from cm import compile_cache, encode, experiment, sampling, state, train
from cm.edm_import import run as edm_import
from cm.evaluation import run as evaluation
from cm.io import fileio, images, progress
from cm.lcsc import run as lcsc_run
from cm.models import param_table
from cm.workdir import run_record
from cm.workdir.checkpoint import Checkpointer


def summary(config, workdir: str):
    """Prints the per-module parameter table; ends with 'parameters: N'. Trains nothing."""
    del workdir
    exp = experiment.build(config)
    shapes = experiment.param_shapes(exp, config)
    table = param_table(shapes)
    print(table)
    return table


def restore_for_sampling(config, workdir: str):
    """(params to sample from, step) of the newest good full checkpoint in workdir.

    Read-only: a workdir without a checkpoint is refused and nothing is created in it.
    """
    exp = experiment.build(config)
    run_record.check(workdir, config.to_dict())
    ckpt = Checkpointer(workdir, read_only=True)
    train_state = ckpt.restore(experiment.abstract_state(exp, config))
    ckpt.close()
    step = ckpt.restored_step
    return exp, state.sampling_params(train_state, config.sampling.params), step


def sample(config, workdir: str):
    """sampling.num_samples uint8 samples per sampler -> samples/<name>_step<k>.npz and .png."""
    exp, params, step = restore_for_sampling(config, workdir)
    s = config.sampling
    out_dir = fileio.path(workdir) / "samples"
    written = {}
    for name, sampler in experiment.samplers(config, exp).items():
        progress = _progress_printer(name) if jax.process_index() == 0 else None
        pics, labels = sampling.generate(
            sampler, params, s.seed, s.num_samples, s.batch_size, progress
        )
        if jax.process_index() == 0:
            stem = str(out_dir / f"{name}_step{step:08d}")
            fileio.save_npz_atomic(stem + ".npz", images=pics, labels=labels)
            upscale = images.display_upscale(pics.shape[1])  # decoded latents: larger than data
            images.save_png(stem + ".png", images.make_grid(pics[:100]), upscale)
            logging.info("Wrote %d samples to %s.npz", len(pics), stem)
            print(f"{name}: {len(pics)} samples -> {stem}.npz, {stem}.png")
        written[name] = (pics, labels)
    return written


def evaluate(config, workdir: str):
    """FID / IS / precision-recall (or the digits metric) of each sampler of the newest
    checkpoint, on eval.num_samples samples -> eval/metrics_step<k>.json, TensorBoard, grids."""
    exp, params, step = restore_for_sampling(config, workdir)
    return evaluation.evaluate(config, workdir, exp, params, step)


def fid_stats(config, workdir: str):
    """Inception reference statistics of config.data -> eval.stats_path (or the workdir)."""
    return evaluation.write_reference_stats(config, workdir)


def _progress_printer(name: str):
    """A bar on a terminal, a line every ~10 % in a log file (cm/io/progress.py)."""
    return progress.reporter(name, "samples")


def lcsc(config, workdir: str):
    """Searches a linear combination of the run's snapshots (docs/methods.md section 4) and compares
    it with the final EMA and the baselines on held-out seeds -> <workdir>/<lcsc.name>/."""
    return lcsc_run.lcsc(config, workdir)


MODES = {
    "train": train.train_and_evaluate,
    "sample": sample,
    "summary": summary,
    "eval": evaluate,
    "fid_stats": fid_stats,
    "lcsc": lcsc,
    "encode": encode.encode,
    "import": edm_import.import_edm,
}


def run(mode: str, config, workdir: str):
    if mode not in MODES:
        raise ValueError(f"Unknown --mode {mode!r}; valid: {sorted(MODES)}.")
    compile_cache.configure_from(config)  # before the mode's first compilation
    return MODES[mode](config, workdir)
