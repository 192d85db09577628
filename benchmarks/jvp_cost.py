"""Cost of the JVP methods' training step against iCT's, on one network and batch.

    python -m benchmarks.jvp_cost --config=configs/demo.py
    python -m benchmarks.jvp_cost --config=configs/cifar10_ict.py --config.training.batch_size=64

Each row is the production training step (cm/train_step.py: value_and_grad of the method's
loss from the method table, the optimizer, the EMAs) of the config with method.name set to the
row's method, on one device, timed after compilation on random data (benchmarks/measure.py).
The network is the config's (MeanFlow's adds only the second time label's columns to the first
mapping layer). Columns: mean step time, the step's FLOPs (benchmarks/perf.py `flops`: XLA's
count of the lowered module, the program before XLA merges the sCT step's two forward passes
of one network at one input, so sCT's count holds one forward pass more than runs), XLA's
temporary memory, and each relative to iCT (two network passes: student with gradient,
teacher without). Rows:

  ict       iCT (docs/methods.md section 2)
  sct       sCT: JVP of the stop-gradient network + a forward/backward pass (section 9)
  meanflow  MeanFlow as its official code: the JVP's primal is the prediction (section 9)

It also prints how far the tangent g computed in float32 is from the same g computed in
float64 from the same network outputs (FastGen computes g and the loss in float64).
"""

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from benchmarks import measure, perf
from cm import experiment
from cm.methods import sct, trigflow

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "Experiment config file.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per method, after the compiling one.")
METHODS = ("ict", "sct", "meanflow")


def _g_precision(config):
    """Max |g32 - g64| / max |g64| of the normalized tangent over a batch, g64 recomputed in
    float64 from the float32 network outputs the loss used; the config's sCT fields."""
    m = config.method
    exp = experiment.build(config)
    batch = jax.device_get(measure.random_batch(config, exp))
    model = exp.model
    params = jax.device_get(experiment.init_params(exp, config))
    params = jax.tree.map(
        lambda v: v + 0.05 * jax.random.normal(jax.random.key(2), v.shape), params
    )  # the zero-initialized output layers would make F trivial
    flow = trigflow.make_flow(model, "trigflow", m.sigma_data, m.trig_time_scale, m.noise_label)
    x0, labels = jnp.asarray(batch["image"]), jnp.asarray(batch["label"])
    k1, k2 = jax.random.split(jax.random.key(3))
    t = sct.trig_time_law(k1, x0.shape[0], m.scm_p_mean, m.scm_p_std, m.sigma_data)
    z = m.sigma_data * jax.random.normal(k2, x0.shape)
    c, s = jnp.cos(t)[:, None, None, None], jnp.sin(t)[:, None, None, None]
    x_t, dxdt = c * x0 + s * z, c * z - s * x0
    F, dF = sct.jvp_tangent(lambda x, tt: flow(params, x, tt, labels), x_t, t, dxdt)
    g = sct.tangent(F, dF, x_t, dxdt, t, 1.0, m.sigma_data)
    g32, _ = sct.normalize_tangent(g, m.scm_tangent_c)
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    t64 = f64(t)
    c, s = np.cos(t64)[:, None, None, None], np.sin(t64)[:, None, None, None]
    sd = m.sigma_data
    g = -(c**2) * (sd * f64(F) - f64(dxdt)) - (c * s * f64(x_t) + sd * f64(dF))
    g = g / (np.sqrt(np.sum(g**2, axis=(1, 2, 3)))[:, None, None, None] + m.scm_tangent_c)
    return float(np.max(np.abs(f64(g32) - g)) / np.max(np.abs(g)))


def main(argv):
    del argv
    config = _CONFIG.value
    device = jax.devices()[:1]
    rows, base = [], None
    for name in METHODS:
        c = config.copy_and_resolve_references()
        c.method.name = name
        costs, _ = measure.train_step(c, experiment.build(c, device), _STEPS.value)
        base = base or costs
        memory = (costs["temp_bytes"] or 0) / max(base["temp_bytes"] or 1, 1)
        rows.append(
            {
                "method": name,
                "step (ms)": f"{1000 * costs['step_s']:.1f}",
                "x iCT time": f"{costs['step_s'] / base['step_s']:.2f}",
                "GFLOP/step": f"{costs['flops'] / 1e9:.3f}",
                "x iCT FLOPs": f"{costs['flops'] / base['flops']:.3f}",
                "XLA temp memory": perf.gib(costs["temp_bytes"]),
                "x iCT memory": f"{memory:.2f}",
                "compile (s)": f"{costs['compile_s']:.1f}",
            }
        )
    print(f"device: {device[0].device_kind}; batch {config.training.batch_size}; "
          f"{config.data.image_size}x{config.data.image_size}x{config.data.channels}; "
          f"mean of {_STEPS.value} steps after the compiling one")  # fmt: skip
    print(perf.format_table(rows))
    print(f"float32 tangent g vs float64 (same network outputs): {_g_precision(config):.2e}")


if __name__ == "__main__":
    app.run(main)
