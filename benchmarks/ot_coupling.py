"""Cost of sLCT's exact minibatch OT coupling against one training step of the latent network.

    python -m benchmarks.ot_coupling
    python -m benchmarks.ot_coupling --shards=128,256 --step_batch=0   # OT only
    python -m benchmarks.ot_coupling --step_batch=2 --steps=2          # also time the step

Part 1 times `cm.coupling` on the host for one device shard of 4x32x32 latents-like data at each
shard batch: the noise draw, the squared-distance matrix and the exact assignment
(linear_sum_assignment), and their sum; then the same for 2 shards solved in parallel threads
(scipy releases the GIL), as one host with several devices runs them.
Part 2 counts the FLOPs per image (benchmarks/perf.py `flops`) of one full sLCT training step
(Cauchy, adaptive c, diffusion loss, coupled noise) of the latent network of
configs/celebahq256_slct.py, and with
--steps=N also times it on this machine's default device, so the OT cost can be set against a
step at any batch: the step scales linearly in the batch, the assignment as about B^3.
"""

import concurrent.futures
import time

import jax
import numpy as np
from absl import app, flags
from scipy.optimize import linear_sum_assignment

from benchmarks import perf
from cm import experiment, train
from cm.data import coupling
from configs import celebahq256_slct

_SHARDS = flags.DEFINE_list("shards", ["128", "256", "512", "1024"], "Shard batches to time.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repeats per shard batch (best is kept).")
_STEP_BATCH = flags.DEFINE_integer("step_batch", 2, "Batch of the timed train step; 0 = skip.")
_STEPS = flags.DEFINE_integer("steps", 0, "Timed train steps after a warm-up; 0 = FLOPs only.")

SHAPE = (32, 32, 4)  # one SD-VAE latent of a 256 px image


def best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def time_ot(b: int, repeats: int) -> dict:
    """Seconds of each part of coupling one shard of b latents (best of `repeats`)."""
    x = np.random.default_rng(0).standard_normal((b, *SHAPE)).astype(np.float32) * 0.5
    z = coupling.group_noise(0, 0, 0, x.shape)
    cost = coupling.squared_distances(x, z)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        two = np.concatenate([x, x])
        parallel = best_of(lambda: coupling.couple_batch(two, 0, 0, b, 0, pool), repeats)
    return {
        "noise": best_of(lambda: coupling.group_noise(0, 0, 0, x.shape), repeats),
        "distances": best_of(lambda: coupling.squared_distances(x, z), repeats),
        "assignment": best_of(lambda: linear_sum_assignment(cost), repeats),
        "total": best_of(lambda: coupling.couple_batch(x, 0, 0, b, 0), repeats),
        "two_shards_2_threads": parallel,
    }


def step_cost(batch: int, steps: int):
    """(FLOPs per image, seconds per image or None) of one sLCT step of the latent network.

    FLOPs come from the lowered step (shapes only: nothing is allocated or compiled); with
    steps > 0 the step is also compiled and timed on the default device (minutes on a CPU).
    """
    config = celebahq256_slct.get_config()
    config.training.batch_size = batch
    config.method.ot_group_size = batch  # one OT group (the coupling is timed in part 1)
    exp = experiment.build(config, jax.devices()[:1])
    step_fn = train.make_train_step(exp, tuple(config.training.ema_rates), config.seed)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *SHAPE)).astype(np.float32) * 0.5
    local = {"image": x, "noise": coupling.couple_batch(x, 0, 0, batch, 0)}
    batch_arrays = train.global_batch(local, exp)
    abstract = experiment.abstract_state(exp, config)
    flops = perf.flops(step_fn.trace(abstract, batch_arrays))
    if steps <= 0:
        return flops / batch, None
    state = experiment.init_state(exp, config)
    state, metrics = step_fn(state, batch_arrays)
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, metrics = step_fn(state, batch_arrays)
    jax.block_until_ready((state, metrics))
    return flops / batch, (time.perf_counter() - t0) / steps / batch


def main(argv):
    del argv
    print(f"device: {jax.devices()[0].device_kind}; latent shape {SHAPE}")
    print("\n| shard batch | noise (ms) | distances (ms) | assignment (ms) | total (ms) "
          "| total per image (ms) | 2 shards, 2 threads (ms) |")  # fmt: skip
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for b in (int(s) for s in _SHARDS.value):
        t = {k: 1e3 * v for k, v in time_ot(b, _REPEATS.value).items()}
        print(
            f"| {b} | {t['noise']:.1f} | {t['distances']:.1f} | {t['assignment']:.1f} "
            f"| {t['total']:.1f} | {t['total'] / b:.3f} | {t['two_shards_2_threads']:.1f} |"
        )
    if _STEP_BATCH.value:
        flops, seconds = step_cost(_STEP_BATCH.value, _STEPS.value)
        timed = f", {seconds:.3f} s per image on this device" if seconds is not None else ""
        print(
            f"\nsLCT train step of the latent network (batch {_STEP_BATCH.value}): "
            f"{flops / 1e9:.1f} GFLOP per image (lowered){timed}"
        )


if __name__ == "__main__":
    app.run(main)
