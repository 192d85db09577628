"""Inception feature throughput (images/s) on the available devices, with random weights.

    python -m benchmarks.inception_throughput --batch=64 --batches=3 --image_size=32

Times the whole FID input path of `--mode=eval`: uint8 images -> TF1 resize to 299 ->
Inception pool features and logits, data parallel over all devices, after one warm-up batch
that compiles. Weights are random (speed does not depend on them), so no download is needed.
"""

import time

import jax
import numpy as np
from absl import app, flags

from benchmarks import perf
from cm import experiment
from cm.evaluation import features, inception, inception_metric

_BATCH = flags.DEFINE_integer("batch", 64, "Global images per call.")
_BATCHES = flags.DEFINE_integer("batches", 3, "Timed calls after the warm-up call.")
_SIZE = flags.DEFINE_integer("image_size", 32, "Side of the square uint8 input images.")


def random_variables(seed: int = 0):
    """Random Inception variables built with numpy (no slow eager initialization)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(inception.init_variables, jax.random.key(0))

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            return rng.normal(0.0, fan_in**-0.5, leaf.shape).astype(np.float32)
        return np.full(leaf.shape, 1.0 if name in ("scale", "var") else 0.0, np.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def measure(batch: int, batches: int, image_size: int, mesh=None) -> dict:
    """{batch, seconds (per global batch), images_per_s, flops (perf.flops per global batch)}
    of the feature path on `mesh` (default: every device), after one compiling call."""
    mesh = mesh or experiment.make_mesh()
    fn = inception_metric.inception_features
    extractor = features.ParallelExtractor(fn, random_variables(), mesh, batch)
    b = extractor.batch_size
    pics = np.random.default_rng(0).integers(0, 256, (b, image_size, image_size, 3), np.uint8)
    read = features.array_reader(pics)
    extractor.extract(read, b)  # compiles
    program = features._parallel(fn, mesh)  # the extractor's jitted program, for its FLOPs
    shape = jax.ShapeDtypeStruct(pics.shape, pics.dtype, sharding=extractor._sharded)
    flops = perf.flops(program.trace(extractor.variables, shape))
    start = time.perf_counter()
    for _ in range(batches):
        extractor.extract(read, b)
    seconds = (time.perf_counter() - start) / batches
    return {"batch": b, "seconds": seconds, "images_per_s": b / seconds, "flops": flops}


def main(argv):
    del argv
    result = measure(_BATCH.value, _BATCHES.value, _SIZE.value)
    devices = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
    size = _SIZE.value
    print(
        f"Inception features from {size}x{size} uint8 on {devices}: "
        f"{result['images_per_s']:.1f} images/s, {result['flops'] / result['batch'] / 1e9:.2f} "
        "GFLOP per image"
    )


if __name__ == "__main__":
    app.run(main)
