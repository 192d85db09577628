"""Measurements of a config's training step and samplers on the devices of an Experiment,
shared by benchmarks/train_throughput.py and benchmarks/device_check.py (no flags here).

Data are random: the step is measured, not the input pipeline. With sLCT's OT coupling the
batch carries random noise in place of the coupled noise (the coupling runs on the host, see
benchmarks/ot_coupling.py), so the device program is the one training runs.
"""

import time

import jax
import numpy as np

from benchmarks import perf
from cm import experiment
from cm.train_step import global_batch, make_train_step
from configs import celebahq256_slct, cifar10_edm, cifar10_ict, imagenet64_ict

# The paper configs by network name (NCSN++, its deep variant, DDPM++, ADM, and sLCT's latent
# ADM with NsLN on 4 x 32 x 32, in its full training config).
NETWORKS = {
    "cifar10_ict": lambda: cifar10_ict.get_config(),  # NCSN++
    "cifar10_ict:deep": lambda: cifar10_ict.get_config("deep"),
    "cifar10_edm": lambda: cifar10_edm.get_config(),  # DDPM++
    "imagenet64_ict": lambda: imagenet64_ict.get_config(),  # ADM, class-conditional
    "slct_latent": lambda: celebahq256_slct.get_config(),  # ADM with NsLN on latents
}


def random_batch(config, exp: experiment.Experiment) -> dict:
    """A global batch of training.batch_size random images (labels, OT noise) on exp's mesh."""
    b = config.training.batch_size
    h, w, c = experiment.image_shape(config)
    rng = np.random.default_rng(0)
    local = {
        "image": rng.uniform(-1, 1, (b, h, w, c)).astype(np.float32),  # [B, H, W, C]
        "label": rng.integers(0, max(config.data.num_classes, 1), (b,)).astype(np.int32),
    }
    if config.method.ot_coupling:
        local["noise"] = rng.standard_normal((b, h, w, c)).astype(np.float32)
    return global_batch(local, exp)


def train_step(
    config, exp: experiment.Experiment, steps: int, state=None, count_flops: bool = True
) -> tuple[dict, object]:
    """Times the jitted training step; returns ({lower_s, compile_s, first_step_s, step_s,
    flops, temp_bytes}, the state after the steps).

    lower_s: tracing and lowering to HLO (never cached); compile_s: XLA's compilation (a
    persistent-cache hit makes it a load); first_step_s: both plus the first call (what a fresh
    process waits for); step_s: the mean of `steps` further calls, dispatched back to back as
    training does; flops: perf.flops of the step over all of exp's devices (NaN unless
    count_flops: the count converts the lowered module to HLO, a third to half the lowering time).
    """
    step_fn = make_train_step(exp, tuple(config.training.ema_rates), config.seed)
    state = experiment.init_state(exp, config) if state is None else state
    batch = random_batch(config, exp)
    start = time.perf_counter()
    traced = step_fn.trace(state, batch)
    lowered = traced.lower()
    lower_s = time.perf_counter() - start
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start - lower_s
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    first_step_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    costs = {
        "lower_s": lower_s,
        "compile_s": compile_s,
        "first_step_s": first_step_s,
        "step_s": (time.perf_counter() - start) / max(steps, 1),
        "flops": perf.flops(traced, lowered) if count_flops else float("nan"),
        "temp_bytes": perf.temp_bytes(compiled),
    }
    return costs, state


def train_step_flops(config, exp: experiment.Experiment) -> float:
    """perf.flops of the training step that train_step times, from shapes alone (nothing is
    allocated or compiled), so that a step measured on one device can be counted on another."""
    step_fn = make_train_step(exp, tuple(config.training.ema_rates), config.seed)
    abstract = experiment.abstract_state(exp, config)
    return perf.flops(step_fn.trace(abstract, random_batch(config, exp)))


def sampler(config, exp: experiment.Experiment, params, name: str, batch: int, repeats: int):
    """Times sampler `name` of the config at a global batch; returns {seconds, flops}
    (seconds per call: the median of `repeats` calls after a compiling one; flops: perf.flops,
    one device's share: the sampler is a jax.shard_map)."""
    run = experiment.samplers(config, exp)[name]
    key = jax.random.key(0)
    traced = run.jitted(batch, False).trace(params, key)
    lowered = traced.lower()
    compiled = lowered.compile()
    jax.block_until_ready(compiled(params, key))
    seconds = perf.median_seconds(lambda: compiled(params, key), repeats)
    return {"seconds": seconds, "flops": perf.flops(traced, lowered)}
