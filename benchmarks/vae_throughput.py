"""Encode and decode throughput of the Stable Diffusion VAE (random weights), data parallel.

    PYTHONPATH=. python benchmarks/vae_throughput.py --image_size=256 --batch=4 --repeats=3

Prints one table row per direction: images/s, seconds per call, FLOPs per image
(benchmarks/perf.py `flops`: XLA's count of the lowered module) and the achieved GFLOP/s. The
encoder is the one --mode=encode runs (one scaled posterior sample per image); the decoder is
the one every sampler of a latent run appends.
"""

import time

import jax
import numpy as np
from absl import app, flags
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from benchmarks import perf
from cm import experiment, latents
from cm.models import vae

_SIZE = flags.DEFINE_integer("image_size", 256, "Side of the square RGB images.")
_BATCH = flags.DEFINE_integer("batch", 4, "Images per call, over all devices.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls after a compiling warm-up.")
SCALE_FACTOR = 0.18215  # the SD VAE's latent scale (configs/common.py vae.scale_factor)


def _random_params(cfg: vae.VAEConfig):
    """Numpy random parameters of the right shapes (no compiled init)."""
    rng = np.random.default_rng(0)
    shapes = jax.eval_shape(lambda: vae.init_params(cfg, jax.random.key(0)))

    def draw(path, leaf):
        if path[-1].key == "kernel":
            return (rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))).astype(
                np.float32
            )
        return np.full(leaf.shape, path[-1].key == "scale", np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def _time(fn, *args) -> tuple[float, float]:
    """(best seconds per call, FLOPs per call)."""
    flops = perf.flops(fn.trace(*args))
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(_REPEATS.value):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return best, flops


def main(argv):
    del argv
    cfg = vae.VAEConfig()
    mesh = experiment.make_mesh()
    params = latents.replicate(_random_params(cfg), mesh)
    b, s = _BATCH.value, _SIZE.value
    f = cfg.downsampling_factor
    sharded = NamedSharding(mesh, P("data"))
    images = jax.device_put(np.zeros((b, s, s, 3), np.float32), sharded)
    indices = jax.device_put(np.arange(b, dtype=np.int32), sharded)
    z = jax.device_put(np.zeros((b, s // f, s // f, cfg.latent_channels), np.float32), sharded)
    encoder = latents.make_encoder(cfg, SCALE_FACTOR, 0, mesh)
    model = vae.AutoencoderKL(cfg)
    decoder = jax.jit(
        lambda p, z: model.apply({"params": p}, z, method="decode"), out_shardings=sharded
    )
    rows = [
        ("encode", *_time(encoder, params, images, indices)),
        ("decode", *_time(decoder, params, z)),
    ]
    print(f"{jax.device_count()} x {jax.devices()[0].device_kind}, {s} px, batch {b}")
    print("| direction | s / call | images/s | GFLOP / image | achieved GFLOP/s |")
    print("|---|---:|---:|---:|---:|")
    for name, seconds, flops in rows:
        print(
            f"| {name} | {seconds:.3f} | {b / seconds:.2f} | {flops / b / 1e9:.1f} | "
            f"{flops / seconds / 1e9:.1f} |"
        )


if __name__ == "__main__":
    app.run(main)
