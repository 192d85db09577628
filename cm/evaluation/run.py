"""What `--mode=eval` and `--mode=fid_stats` do, and the periodic evaluation during training.

eval: eval.num_samples samples from each configured sampler (1 and 2 steps for consistency
models, Heun for EDM), the configured metrics on them, the real-data floors beside them; the
results go to <workdir>/eval/metrics_step<k>.json, to TensorBoard as eval/<sampler>/<metric>,
and a sample grid per sampler to <workdir>/eval/<sampler>_step<k>.png.
"""

import json
import zipfile

import jax
import numpy as np

from cm import experiment, sampling
from cm.data import latent_data
from cm.evaluation import evaluator as evaluator_lib
from cm.evaluation import inception, inception_metric, reference_stats
from cm.io import fileio, images
from cm.io import progress as progress_lib


def sample_and_score(config, samplers: dict, params, evaluator, num_samples: int, progress=True):
    """({'<sampler>/<metric>': value}, {sampler: uint8 grid}) over num_samples samples of each
    sampler; the grid shows the first eval.grid_samples of them, sorted by class."""
    results, grids = {}, {}
    for name, sampler in samplers.items():
        show = progress and jax.process_index() == 0  # a bar, or a line every ~10 % in a log
        report = progress_lib.reporter(name, "samples") if show else None
        pics, labels = sampling.generate(
            sampler, params, config.sampling.seed, num_samples, config.sampling.batch_size, report
        )
        results.update({f"{name}/{k}": v for k, v in evaluator(pics, labels).items()})
        n = config.eval.grid_samples
        grids[name] = images.make_grid(pics[:n][np.argsort(labels[:n], kind="stable")])
    return results, grids


def evaluate(config, workdir: str, exp, params, step: int) -> dict:
    """The eval mode on restored parameters: metrics JSON, TensorBoard scalars, grids."""
    check_reference_dims(config, workdir)  # before the Inception weights and any sampling
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


def check_reference_dims(config, workdir: str):
    """Refuses reference statistics whose dimension is not the Inception pool features' (the
    FID of 2048-d features against them fails only after all the sampling), naming the file
    and the field; reads the arrays' headers only. A missing file is computed later."""
    if "inception" not in evaluator_lib.metric_names(config):
        return
    path = reference_stats.stats_path(config, workdir)
    if not fileio.exists(path):
        return
    shapes = _npz_shapes(path)
    d = inception.FEATURE_DIM
    expected = {"mu": (d,), "sigma": (d, d), "features": (shapes.get("features", (0,))[0], d)}
    wrong = [
        f"'{k}' {list(shapes[k])}" for k in expected if shapes.get(k, expected[k]) != expected[k]
    ]
    if wrong:
        field = "eval.stats_path" if config.eval.stats_path else "eval.stats_path (unset: default)"
        raise ValueError(
            f"{field} = {path} holds {', '.join(wrong)}, but FID compares {d}-dimensional "
            f"Inception pool features ('mu' [{d}], 'sigma' [{d}, {d}]); set "
            "--config.eval.stats_path to statistics of this data written by --mode=fid_stats "
            "(or move that file away to have them computed)."
        )


def _npz_shapes(path) -> dict[str, tuple]:
    """{array name: shape} of an .npz, from each member's .npy header (no array is read)."""
    shapes = {}
    with fileio.open_file(path) as file:
        try:
            archive = zipfile.ZipFile(file)
        except zipfile.BadZipFile as e:
            raise ValueError(
                f"eval.stats_path = {path} is not an .npz file ({e}); set --config.eval."
                "stats_path to statistics written by --mode=fid_stats."
            ) from e
        with archive:
            for name in archive.namelist():
                with archive.open(name) as member:
                    version = np.lib.format.read_magic(member)
                    read = np.lib.format.read_array_header_1_0
                    if version != (1, 0):
                        read = np.lib.format.read_array_header_2_0
                    shapes[name.removesuffix(".npy")] = read(member)[0]
    return shapes


def periodic(config, exp, samplers: dict, workdir: str):
    """fn(params) -> {'eval/<sampler>/<metric>': value} on eval.train_num_samples samples,
    for the training loop every eval.every steps; None when eval.every is 0."""
    if not config.eval.every:
        return None
    check_reference_dims(config, workdir)
    evaluator = evaluator_lib.Evaluator(config, workdir, exp.mesh)
    n = config.eval.train_num_samples

    def run(params):
        return scalars(sample_and_score(config, samplers, params, evaluator, n, False)[0])

    return run
