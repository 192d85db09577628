"""Reference statistics of a dataset split: Inception mean, covariance, count and a feature subset.

The file is an .npz with 'mu' [2048] and 'sigma' [2048, 2048] (float64; the names of the TTUR /
pytorch-fid statistics files, so their published files load too), 'count', 'data_id' (which
data it describes) and 'features' float32 [M, 2048]: M = eval.pr_samples training images
drawn at random with fixed seed, the real manifold for precision / recall.
"""

import jax
import numpy as np
from absl import logging

from cm.data import latent_data, sources
from cm.evaluation import features as features_lib
from cm.evaluation import metrics
from cm.io import fileio

_SUBSET_SEED = 0x5EED  # which training images form the precision / recall feature subset


def data_id(data_config) -> str:
    """A name for the images a data config reads: source, dataset, split and size."""
    d = data_config
    dataset = d.tfds_name or (d.path and fileio.path(d.path).name) or d.name
    return f"{d.name}-{dataset}-{d.split}-{d.image_size}px".replace("/", "_")


def stats_path(config, workdir: str) -> str:
    """eval.stats_path, or <workdir>/fid_stats/<data id>.npz."""
    if config.eval.stats_path:
        return str(fileio.path(config.eval.stats_path))
    name = data_id(latent_data.image_data(config)) + ".npz"
    return str(fileio.path(workdir) / "fid_stats" / name)


def accumulate(batches, num_images: int, subset_size: int) -> dict:
    """Streams feature batches {'pool': [b, D], ...} into mu, sigma, count and a random subset
    of `subset_size` pool rows (by global row index, so independent of the batch size)."""
    rng = np.random.default_rng(_SUBSET_SEED)
    keep = np.sort(rng.choice(num_images, min(subset_size, num_images), replace=False))
    stats, kept, start = None, [], 0
    for batch in batches:
        pool = batch["pool"]  # [b, D]
        stats = stats or metrics.RunningStats(pool.shape[1])
        stats.update(pool)
        rows = keep[(keep >= start) & (keep < start + len(pool))] - start
        kept.append(pool[rows])
        start += len(pool)
    return {
        "mu": stats.mean,
        "sigma": stats.cov,
        "count": np.int64(stats.count),
        "features": np.concatenate(kept).astype(np.float32),
    }


def compute(config, extractor: features_lib.ParallelExtractor) -> dict:
    """Statistics of every image of config.data (of vae.images for latent data), data parallel,
    with a progress line."""
    source = sources.load_source(latent_data.image_data(config))
    n = len(source)
    batches = extractor.batches(
        lambda indices: source.get(indices)[0], n, features_lib.progress_printer("fid_stats")
    )
    stats = accumulate(batches, n, config.eval.pr_samples)
    stats["data_id"] = np.str_(data_id(latent_data.image_data(config)))
    return stats


def save(path: str, stats: dict) -> None:
    """Writes the statistics atomically (process 0 only; local paths and gs:// alike)."""
    if jax.process_index() == 0:
        fileio.save_npz_atomic(path, **stats)


def load(path: str, expected_data_id: str | None = None) -> dict:
    """{'mu', 'sigma', and where present 'count', 'features', 'data_id'} from an .npz file."""
    if not fileio.exists(path):
        raise FileNotFoundError(f"No reference statistics at {path}.")
    stats = fileio.load_npz(path)
    if "mu" not in stats or "sigma" not in stats:
        raise ValueError(f"{path} has no 'mu' and 'sigma': not a FID statistics file.")
    found = str(stats.get("data_id", ""))
    if expected_data_id and found and found != expected_data_id:
        raise ValueError(
            f"{path} holds statistics of {found}, but the config's data is "
            f"{expected_data_id}: set --config.eval.stats_path to another file (or delete it)."
        )
    return stats


def load_or_compute(config, workdir: str, extractor) -> dict:
    """The reference statistics file of the config's data, computed and written if missing."""
    path = stats_path(config, workdir)
    if fileio.exists(path):
        return load(path, data_id(latent_data.image_data(config)))
    logging.info("No reference statistics at %s; computing them.", path)
    stats = compute(config, extractor)
    save(path, stats)
    return stats
