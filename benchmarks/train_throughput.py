"""Training and sampling throughput of a config, with FLOPs and achieved fraction of peak.

    python benchmarks/train_throughput.py --config=configs/demo.py
    python benchmarks/train_throughput.py --config=configs/cifar10_ict.py \
        --config.training.batch_size=8 --config.data.name=npz --steps=3

Prints one table: train images/s, sampler images/s (1-step), XLA FLOPs per train step, the
achieved FLOP/s, and that as a fraction of a float32 matmul peak measured on the same device
in the same run. Data are random (the benchmark measures the step, not the input pipeline).
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from cm import experiment, train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed training steps (after one warm-up step).")
_SAMPLE_BATCH = flags.DEFINE_integer("sample_batch", 0, "Sampler batch; 0 = training batch.")
flags.mark_flags_as_required(["config"])


def matmul_peak_flops(n: int = 2048, repeats: int = 5) -> float:
    """Best float32 FLOP/s of an n x n matmul on the default device."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def random_batch(config, exp):
    b = config.training.batch_size
    h, w, c = experiment.image_shape(config)
    rng = np.random.default_rng(0)
    local = {
        "image": rng.uniform(-1, 1, (b, h, w, c)).astype(np.float32),
        "label": rng.integers(0, max(config.data.num_classes, 1), (b,)).astype(np.int32),
    }
    return train.global_batch(local, exp)


def time_train(config, exp, steps: int):
    """(seconds per step, XLA flops per step)."""
    step_fn = train.make_train_step(exp, tuple(config.training.ema_rates), config.seed)
    state = experiment.init_state(exp, config)
    batch = random_batch(config, exp)
    flops = step_fn.lower(state, batch).compile().cost_analysis().get("flops", float("nan"))
    state, metrics = step_fn(state, batch)
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, metrics = step_fn(state, batch)
    jax.block_until_ready((state, metrics))
    return (time.perf_counter() - t0) / steps, flops, state


def time_sampler(config, exp, params, batch: int, repeats: int = 3):
    """Seconds per batch of the first configured sampler."""
    name, sampler = next(iter(experiment.samplers(config, exp).items()))
    jax.block_until_ready(sampler(params, jax.random.key(0), batch))
    t0 = time.perf_counter()
    for i in range(repeats):
        out = sampler(params, jax.random.key(i + 1), batch)
    jax.block_until_ready(out)
    return name, (time.perf_counter() - t0) / repeats


def main(argv):
    del argv
    config = _CONFIG.value
    exp = experiment.build(config)
    b = config.training.batch_size
    sec, flops, state = time_train(config, exp, _STEPS.value)
    sample_batch = _SAMPLE_BATCH.value or b
    sample_batch -= sample_batch % jax.device_count()
    sampler_name, sample_sec = time_sampler(config, exp, state.params, sample_batch)
    peak = matmul_peak_flops()
    params = sum(x.size for x in jax.tree.leaves(state.params))
    rows = [
        ("device", f"{jax.devices()[0].device_kind} x{jax.device_count()}"),
        ("parameters", f"{params:,}"),
        ("batch", str(b)),
        ("train step (s)", f"{sec:.4f}"),
        ("train images/s", f"{b / sec:.1f}"),
        (f"sampler {sampler_name} images/s", f"{sample_batch / sample_sec:.1f}"),
        ("GFLOP per train step (XLA)", f"{flops / 1e9:.2f}"),
        ("achieved GFLOP/s", f"{flops / sec / 1e9:.1f}"),
        ("matmul peak GFLOP/s (measured)", f"{peak / 1e9:.1f}"),
        ("fraction of peak", f"{flops / sec / peak:.3f}"),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))


if __name__ == "__main__":
    app.run(main)
