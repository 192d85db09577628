"""What `--mode=eval` and `--mode=fid_stats` do, and the periodic evaluation during training.

eval: eval.num_samples samples from each configured sampler (1 and 2 steps for consistency
models, Heun for EDM), the configured metrics on them, the real-data floors beside them; the
results go to <workdir>/eval/metrics_step<k>.json, to TensorBoard as eval/<sampler>/<metric>,
and a sample grid per sampler to <workdir>/eval/<sampler>_step<k>.png.
"""

import json

import jax
import numpy as np

from cm import experiment, sampling
from cm.data import latent_data
from cm.evaluation import evaluator as evaluator_lib
from cm.evaluation import inception_metric, reference_stats
from cm.io import fileio, images


def sample_and_score(config, samplers: dict, params, evaluator, num_samples: int, progress=True):
    """({'<sampler>/<metric>': value}, {sampler: uint8 grid}) over num_samples samples of each
    sampler; the grid shows the first eval.grid_samples of them, sorted by class."""
    results, grids = {}, {}
    for name, sampler in samplers.items():
        report = _progress(name) if progress and jax.process_index() == 0 else None
        pics, labels = sampling.generate(
            sampler, params, config.sampling.seed, num_samples, config.sampling.batch_size, report
        )
        results.update({f"{name}/{k}": v for k, v in evaluator(pics, labels).items()})
        n = config.eval.grid_samples
        grids[name] = images.make_grid(pics[:n][np.argsort(labels[:n], kind="stable")])
    return results, grids


def evaluate(config, workdir: str, exp, params, step: int) -> dict:
    """The eval mode on restored parameters: metrics JSON, TensorBoard scalars, grids."""
    evaluator = evaluator_lib.Evaluator(config, workdir, exp.mesh)
    n = config.eval.num_samples
    results = {"step": step, "num_samples": n, **evaluator.reference()}
    scores, grids = sample_and_score(config, experiment.samplers(config, exp), params, evaluator, n)
    results.update(scores)
    if jax.process_index() == 0:
        out_dir = fileio.path(workdir) / "eval"
        path = out_dir / f"metrics_step{step:08d}.json"
        fileio.write_text_atomic(path, json.dumps(results, indent=2, sort_keys=True))
        upscale = images.display_upscale(latent_data.image_data(config).image_size)
        for name, grid in grids.items():
            images.save_png(out_dir / f"{name}_step{step:08d}.png", grid, upscale)
        print(format_results(results))
        print(f"Wrote {path}")
    from clu import metric_writers  # imports TensorFlow (about 3 s): only when writing

    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    writer.write_scalars(step, scalars(results))
    writer.write_images(step, {f"eval/{k}": v[None] for k, v in grids.items()})
    writer.close()
    return results


def scalars(results: dict) -> dict[str, float]:
    """The metric entries of a results dict, named eval/<sampler>/<metric> for TensorBoard."""
    return {f"eval/{k}": float(v) for k, v in results.items() if "/" in k}


def format_results(results: dict) -> str:
    """One line per metric, aligned: '1step/fid   12.3456'."""
    keys = sorted(k for k in results if "/" in k)
    width = max(map(len, keys), default=0)
    return "\n".join(f"{k:<{width}}  {results[k]:.4f}" for k in keys)


def write_reference_stats(config, workdir: str) -> dict:
    """--mode=fid_stats: Inception statistics of config.data -> eval.stats_path (or default)."""
    mesh = experiment.make_mesh()
    extractor = inception_metric.make_extractor(config, mesh)
    stats = reference_stats.compute(config, extractor)
    path = reference_stats.stats_path(config, workdir)
    reference_stats.save(path, stats)
    if jax.process_index() == 0:
        print(f"{int(stats['count'])} images of {stats['data_id']} -> {path}")
    return stats


def periodic(config, exp, samplers: dict, workdir: str):
    """fn(params) -> {'eval/<sampler>/<metric>': value} on eval.train_num_samples samples,
    for the training loop every eval.every steps; None when eval.every is 0."""
    if not config.eval.every:
        return None
    evaluator = evaluator_lib.Evaluator(config, workdir, exp.mesh)
    n = config.eval.train_num_samples

    def run(params):
        return scalars(sample_and_score(config, samplers, params, evaluator, n, False)[0])

    return run


def _progress(name: str):
    def report(done: int, total: int):
        end = "\n" if done >= total else ""
        print(f"\r{name}: {done}/{total} samples", end=end, flush=True)

    return report
