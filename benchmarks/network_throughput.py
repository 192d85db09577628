"""Forward + backward throughput of the paper networks alone (no optimizer, no data), images/s.

    python -m benchmarks.network_throughput                         # CPU default: batch 8, fp32
    python -m benchmarks.network_throughput --networks=cifar10_ict,cifar10_edm
    python -m benchmarks.network_throughput --batch=256 --dtype=bfloat16   # on a GPU / TPU

One timed step is the gradient of a mean-square of the network output with respect to the
parameters, in training mode (dropout on, as in the config), on random inputs, jitted once per
network. Prints one table: parameters, input shape, compile seconds (trace, lower, compile),
seconds per step (median of --steps after one warm-up step), images/s, the step's FLOPs
(benchmarks/perf.py `flops`: XLA's count of the lowered module, the same on every device) and
the achieved GFLOP/s.
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

FLAGS = {}


def define_flags():
    """The command-line flags, defined only when this runs as a script, so that importing
    `program` (benchmarks/flop_recount.py, the tests) adds nothing to absl's global flags."""
    FLAGS["networks"] = flags.DEFINE_list("networks", list(NETWORKS), f"Any of {list(NETWORKS)}.")
    FLAGS["batch"] = flags.DEFINE_integer("batch", 8, "Images per step.")
    FLAGS["dtype"] = flags.DEFINE_enum(
        "dtype", "float32", ["float32", "bfloat16"], "Compute dtype."
    )
    FLAGS["steps"] = flags.DEFINE_integer("steps", 3, "Timed steps after one warm-up step.")


def _inputs(config, batch: int):
    """Random x [B, H, W, C], noise labels [B] and class labels [B] (or None)."""
    rng = np.random.default_rng(0)
    h, w, c = experiment.image_shape(config)
    x = jnp.asarray(rng.standard_normal((batch, h, w, c)), jnp.float32)
    c_noise = jnp.asarray(rng.uniform(-2.0, 2.0, batch), jnp.float32)
    classes = experiment.num_label_classes(config)
    labels = jnp.asarray(rng.integers(0, classes, batch), jnp.int32) if classes else None
    return x, c_noise, labels


def program(config, batch: int):
    """(jitted step, its arguments with the parameters as shapes, the parameter initializer)
    of the config's network: the gradient of a mean-square of the output in training mode, at
    model.dtype and JAX's default matmul precision (the network is applied directly, not
    under model.matmul_precision)."""
    model = build_model(config)
    x, c_noise, labels = _inputs(config, batch)
    one_label = None if labels is None else labels[:1]
    init = jax.jit(lambda k: model.init(k, x[:1], c_noise[:1], one_label, train=False)["params"])
    params = jax.eval_shape(init, jax.random.key(0))

    def loss(p, key):
        out = model.apply(
            {"params": p}, x, c_noise, labels, train=True, rngs={"dropout": key}
        )  # [B, H, W, C] float32
        return jnp.mean(jnp.square(out))

    return jax.jit(jax.value_and_grad(loss)), (params, jax.random.key(1)), init


def measure(name: str, batch: int, dtype: str, steps: int) -> dict:
    """One row of the table for network `name`."""
    config = NETWORKS[name]()
    config.model.dtype = dtype
    step, (_, key), init = program(config, batch)
    params = init(jax.random.key(0))
    t0 = time.perf_counter()
    traced = step.trace(params, key)
    lowered = traced.lower()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    flops = perf.flops(traced, lowered)
    jax.block_until_ready(compiled(params, key))  # warm-up
    keys = iter(jax.random.split(jax.random.key(2), steps))
    sec = perf.median_seconds(lambda: compiled(params, next(keys)), steps)
    h, w, c = experiment.image_shape(config)
    return {
        "network": name,
        "model": config.model.name,
        "parameters": f"{count_params(params):,}",
        "input": f"{h}x{w}x{c}",
        "batch": str(batch),
        "dtype": dtype,
        "compile s": f"{compile_s:.1f}",
        "step s": f"{sec:.3f}",
        "images/s": f"{batch / sec:.2f}",
        "GFLOP/step": f"{flops / 1e9:.1f}",
        "GFLOP/s": f"{flops / sec / 1e9:.1f}",
    }


def main(argv):
    del argv
    names = FLAGS["networks"].value
    unknown = sorted(set(names) - set(NETWORKS))
    if unknown:
        raise app.UsageError(f"Unknown --networks {unknown}; valid: {list(NETWORKS)}.")
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({device.platform}), {jax.device_count()} device(s)")
    rows = []
    for name in names:
        rows.append(measure(name, FLAGS["batch"].value, FLAGS["dtype"].value, FLAGS["steps"].value))
        print(perf.format_table(rows[-1:]).splitlines()[-1], flush=True)  # progress, row by row
    print(perf.format_table(rows))


if __name__ == "__main__":
    define_flags()
    app.run(main)
