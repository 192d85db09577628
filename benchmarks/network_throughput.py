"""Forward + backward throughput of the paper networks alone (no optimizer, no data), images/s.

    python -m benchmarks.network_throughput                         # CPU default: batch 8, fp32
    python -m benchmarks.network_throughput --networks=cifar10_ict,cifar10_edm
    python -m benchmarks.network_throughput --batch=256 --dtype=bfloat16   # on a GPU / TPU

One timed step is the gradient of a mean-square of the network output with respect to the
parameters, in training mode (dropout on, as in the config), on random inputs, jitted once per
network. Prints one table: parameters, input shape, compile seconds, seconds per step (median
of --steps after one warm-up step), images/s, and XLA's FLOP count of the step.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import perf
from benchmarks.measure import NETWORKS
from cm import experiment
from cm.models import build_model, count_params

_NETWORKS = flags.DEFINE_list("networks", list(NETWORKS), f"Any of {list(NETWORKS)}.")
_BATCH = flags.DEFINE_integer("batch", 8, "Images per step.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
_STEPS = flags.DEFINE_integer("steps", 3, "Timed steps after one warm-up step.")


def _inputs(config, batch: int):
    """Random x [B, H, W, C], noise labels [B] and class labels [B] (or None)."""
    rng = np.random.default_rng(0)
    h, w, c = experiment.image_shape(config)
    x = jnp.asarray(rng.standard_normal((batch, h, w, c)), jnp.float32)
    c_noise = jnp.asarray(rng.uniform(-2.0, 2.0, batch), jnp.float32)
    classes = experiment.num_label_classes(config)
    labels = jnp.asarray(rng.integers(0, classes, batch), jnp.int32) if classes else None
    return x, c_noise, labels


def measure(name: str, batch: int, dtype: str, steps: int) -> dict:
    """One row of the table for network `name`."""
    config = NETWORKS[name]()
    config.model.dtype = dtype
    model = build_model(config)
    x, c_noise, labels = _inputs(config, batch)
    one_label = None if labels is None else labels[:1]
    init = lambda k: model.init(k, x[:1], c_noise[:1], one_label, train=False)["params"]
    params = jax.jit(init)(jax.random.key(0))

    def loss(p, key):
        out = model.apply(
            {"params": p}, x, c_noise, labels, train=True, rngs={"dropout": key}
        )  # [B, H, W, C] float32
        return jnp.mean(jnp.square(out))

    step = jax.jit(jax.value_and_grad(loss))
    t0 = time.perf_counter()
    compiled = step.lower(params, jax.random.key(1)).compile()
    compile_s = time.perf_counter() - t0
    flops = perf.flops(compiled)
    jax.block_until_ready(compiled(params, jax.random.key(1)))  # warm-up
    keys = iter(jax.random.split(jax.random.key(2), steps))
    sec = perf.median_seconds(lambda: compiled(params, next(keys)), steps)
    return {
        "network": name,
        "model": config.model.name,
        "parameters": f"{count_params(params):,}",
        "input": "x".join(str(d) for d in x.shape[1:]),
        "batch": str(batch),
        "dtype": dtype,
        "compile s": f"{compile_s:.1f}",
        "step s": f"{sec:.3f}",
        "images/s": f"{batch / sec:.2f}",
        "GFLOP/step": f"{flops / 1e9:.1f}",
    }


def main(argv):
    del argv
    unknown = sorted(set(_NETWORKS.value) - set(NETWORKS))
    if unknown:
        raise app.UsageError(f"Unknown --networks {unknown}; valid: {list(NETWORKS)}.")
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({device.platform}), {jax.device_count()} device(s)")
    rows = []
    for name in _NETWORKS.value:
        rows.append(measure(name, _BATCH.value, _DTYPE.value, _STEPS.value))
        print(perf.format_table(rows[-1:]).splitlines()[-1], flush=True)  # progress, row by row
    print(perf.format_table(rows))


if __name__ == "__main__":
    app.run(main)
