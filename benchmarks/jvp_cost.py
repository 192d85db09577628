"""Cost of the JVP methods' training step against iCT's, on one network and batch.

    python -m benchmarks.jvp_cost --config=configs/demo.py
    python -m benchmarks.jvp_cost --config=configs/cifar10_ict.py --config.training.batch_size=64

Each row is one jitted step on one device (value_and_grad of the loss + the config's optimizer
update), timed after compilation on random data; the network is the config's (MeanFlow's adds
only the second time label's columns to the first mapping layer). Columns: mean step time, XLA's
FLOP count of the compiled step, XLA's temporary memory, and both relative to iCT (two network
passes: student with gradient, teacher without). Rows:

  ict       iCT (docs/methods.md section 2)
  sct       sCT: JVP of the stop-gradient network + a forward/backward pass (Algorithm 1)
  meanflow  MeanFlow as its official code: the JVP's primal is the prediction

It also prints how far the tangent g computed in float32 is from the same g computed in
float64 from the same network outputs (FastGen computes g and the loss in float64).
"""

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from ml_collections import config_flags

from cm import losses, meanflow, objectives, perf, precond, sct, state, trigflow
from cm.models import build_model

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "Experiment config file.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per row and round.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Rounds over all rows; the median is reported.")


def _batch(config):
    b, s, c = config.training.batch_size, config.data.image_size, config.data.channels
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.uniform(-1, 1, (b, s, s, c)), jnp.float32)}
    if config.data.num_classes and config.model.use_labels:
        batch["label"] = jnp.asarray(rng.integers(0, config.data.num_classes, (b,)), jnp.int32)
    return batch


def _init(model, batch, **extra):
    x = batch["image"][:1]
    label = batch["label"][:1] if "label" in batch else None
    return model.init(jax.random.key(0), x, jnp.zeros((1,)), label, train=False, **extra)["params"]


def _losses(config, batch):
    """name -> (loss_fn(trainable, batch, rng, step) -> (loss, metrics), trainable)."""
    m = config.method
    model = build_model(config)
    params = _init(model, batch)
    denoise = precond.make_denoiser(model, "consistency", m.noise_label, m.sigma_data, m.sigma_min)
    ict = functools.partial(
        objectives.ict_loss,
        denoise,
        total_steps=config.training.num_steps,
        s0=m.s0,
        s1=m.s1,
        sigma_min=m.sigma_min,
        sigma_max=m.sigma_max,
        rho=m.rho,
        p_mean=m.p_mean,
        p_std=m.p_std,
        distance=losses.get_distance(m.distance),
        c_factor=m.huber_c_factor,
    )
    flow = trigflow.make_flow(model, "trigflow", m.sigma_data, 1.0, m.noise_label)
    module = sct.TimeWeighting()
    weighting = sct.make_weighting(module, lambda t: t)
    sct_kw = dict(
        sigma_data=m.sigma_data,
        p_mean=-1.0,
        p_std=1.4,
        warmup_steps=10_000,
        tangent_c=0.1,
        prior_weighting=True,
    )

    def scm(trainable, batch, rng, step):
        net, w = trainable
        return sct.scm_loss(flow, weighting, net, w, batch, rng, step, **sct_kw)

    mf_model = model.clone(second_noise_label=True)
    u = meanflow.make_u(mf_model, "t_minus_r", 1.0)
    mf_params = _init(mf_model, batch, second_noise_labels=jnp.zeros((1,)))
    mf_kw = dict(
        t_mean=-2.0,
        t_std=2.0,
        r_mean=-2.0,
        r_std=2.0,
        equal_fraction=0.25,
        tr_order="sorted",
        norm_p=0.75,
        norm_eps=1e-3,
    )
    return {
        "ict": (ict, params),
        "sct": (scm, (params, sct.init_weighting(module, jax.random.key(1)))),
        "meanflow": (functools.partial(meanflow.meanflow_loss, u, **mf_kw), mf_params),
    }


def _compile(loss_fn, trainable, tx, batch):
    """(compiled step, its arguments, compile seconds) of value_and_grad + the optimizer."""

    def step_fn(trainable, opt_state, step):
        rng = jax.random.fold_in(jax.random.key(0), step)
        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable, batch, rng, step)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state, loss

    args = (trainable, tx.init(trainable), jnp.int32(0))
    start = time.perf_counter()
    compiled = jax.jit(step_fn).lower(*args).compile()
    jax.block_until_ready(compiled(*args))
    return compiled, args, time.perf_counter() - start


def _time(compiled, args, steps):
    """Mean seconds per step over `steps` steps dispatched back to back."""
    trainable, opt_state, _ = args
    start = time.perf_counter()
    for i in range(steps):
        trainable, opt_state, loss = compiled(trainable, opt_state, jnp.int32(i + 1))
    jax.block_until_ready(loss)
    return (time.perf_counter() - start) / steps


def _g_precision(config, batch):
    """Max |g32 - g64| / max |g64| of the normalized tangent over a batch, g64 recomputed in
    float64 from the float32 network outputs the loss used."""
    m = config.method
    model = build_model(config)
    params = _init(model, batch)
    params = jax.tree.map(
        lambda v: v + 0.05 * jax.random.normal(jax.random.key(2), v.shape), params
    )
    flow = trigflow.make_flow(model, "trigflow", m.sigma_data, 1.0, m.noise_label)
    x0 = batch["image"]
    labels = batch.get("label")
    k1, k2 = jax.random.split(jax.random.key(3))
    t = sct.trig_time_law(k1, x0.shape[0], -1.0, 1.4, m.sigma_data)
    z = m.sigma_data * jax.random.normal(k2, x0.shape)
    c, s = jnp.cos(t)[:, None, None, None], jnp.sin(t)[:, None, None, None]
    x_t, dxdt = c * x0 + s * z, c * z - s * x0
    F, dF = sct.jvp_tangent(lambda x, tt: flow(params, x, tt, labels), x_t, t, dxdt)
    g32, _ = sct.normalize_tangent(sct.tangent(F, dF, x_t, dxdt, t, 1.0, m.sigma_data), 0.1)
    f64 = lambda a: np.asarray(a, np.float64)
    t64 = f64(t)
    c, s = np.cos(t64)[:, None, None, None], np.sin(t64)[:, None, None, None]
    sd = m.sigma_data
    g = -(c**2) * (sd * f64(F) - f64(dxdt)) - (c * s * f64(x_t) + sd * f64(dF))
    g = g / (np.sqrt(np.sum(g**2, axis=(1, 2, 3)))[:, None, None, None] + 0.1)
    return float(np.max(np.abs(f64(g32) - g)) / np.max(np.abs(g)))


def main(argv):
    del argv
    config = _CONFIG.value
    batch = _batch(config)
    tx = state.make_optimizer(config.optim)
    programs = {
        name: _compile(loss_fn, trainable, tx, batch)
        for name, (loss_fn, trainable) in _losses(config, batch).items()
    }
    # Rounds over all rows in turn, so that a busy machine slows every row alike; the median
    # round of each row is reported.
    times = {name: [] for name in programs}
    for _ in range(_ROUNDS.value):
        for name, (compiled, args, _) in programs.items():
            times[name].append(_time(compiled, args, _STEPS.value))
    rows, base = [], None
    for name, (compiled, _, compile_s) in programs.items():
        r = {
            "step_s": float(np.median(times[name])),
            "flops": perf.flops(compiled),
            "temp": perf.temp_bytes(compiled),
        }
        base = base or r
        rows.append(
            {
                "method": name,
                "step (ms)": f"{1000 * r['step_s']:.1f}",
                "x iCT time": f"{r['step_s'] / base['step_s']:.2f}",
                "GFLOP/step": f"{r['flops'] / 1e9:.3f}",
                "x iCT FLOPs": f"{r['flops'] / base['flops']:.3f}",
                "XLA temp memory": perf.gib(r["temp"]),
                "x iCT memory": f"{(r['temp'] or 0) / max(base['temp'] or 1, 1):.2f}",
                "compile (s)": f"{compile_s:.1f}",
            }
        )
    device = jax.devices()[0]
    print(f"device: {device.device_kind}; batch {config.training.batch_size}; "
          f"{config.data.image_size}x{config.data.image_size}x{config.data.channels}; "
          f"median of {_ROUNDS.value} rounds of {_STEPS.value} steps")  # fmt: skip
    print(perf.format_table(rows))
    print(f"float32 tangent g vs float64 (same network outputs): {_g_precision(config, batch):.2e}")


if __name__ == "__main__":
    app.run(main)
