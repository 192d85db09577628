"""Training and sampling throughput of a config, with FLOPs and achieved fraction of peak.

    python benchmarks/train_throughput.py --config=configs/demo.py
    python benchmarks/train_throughput.py --config=configs/cifar10_ict.py \
        --config.training.batch_size=8 --steps=3 --sample=false

Prints one table: compile and first-step seconds (the first step of a fresh process, which
the persistent compilation cache of `training.compilation_cache_dir` shortens), train images/s,
sampler images/s (1-step), FLOPs per train step (benchmarks/perf.py `flops`: XLA's count of
the lowered module, over all devices), XLA's temporary bytes, the achieved FLOP/s per device,
and that as a fraction of a float32 matmul peak measured on one device in the same run. Data
are random (the benchmark measures the step, not the input pipeline).
"""

import time

_START = time.perf_counter()  # the process's start, for "first step after start"

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from benchmarks import measure, perf  # noqa: E402
from cm import compile_cache, experiment  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed training steps (after the first step).")
_SAMPLE = flags.DEFINE_bool("sample", True, "Also time the first sampler.")
_SAMPLE_BATCH = flags.DEFINE_integer("sample_batch", 0, "Sampler batch; 0 = training batch.")
_MATMUL = flags.DEFINE_integer("matmul_size", 2048, "Side of the matmul that measures the peak.")
flags.mark_flags_as_required(["config"])


def main(argv):
    del argv
    config = _CONFIG.value
    cache = compile_cache.configure_from(config)
    exp = experiment.build(config)
    b = config.training.batch_size
    state = experiment.init_state(exp, config)
    costs, state = measure.train_step(config, exp, _STEPS.value, state)
    since_start = time.perf_counter() - _START
    sec, flops = costs["step_s"], costs["flops"]
    per_device = flops / sec / jax.device_count()  # FLOP/s of one device (data parallel)
    peak = perf.matmul_peak(_MATMUL.value, "f32 highest")
    params = sum(x.size for x in jax.tree.leaves(state.params))
    rows = [
        ("device", f"{jax.devices()[0].device_kind} x{jax.device_count()}"),
        ("compilation cache", str(cache or "off")),
        ("parameters", f"{params:,}"),
        ("batch", str(b)),
        ("train step trace + lower (s)", f"{costs['lower_s']:.2f}"),
        ("train step compile (s; a cache hit loads)", f"{costs['compile_s']:.2f}"),
        ("first train step (s, lower + compile + run)", f"{costs['first_step_s']:.2f}"),
        ("first step done after start (s)", f"{since_start:.2f}"),
        ("train step (s)", f"{sec:.4f}"),
        ("train images/s", f"{b / sec:.1f}"),
        ("XLA temporary memory", perf.gib(costs["temp_bytes"])),
    ]
    if _SAMPLE.value:
        batch = _SAMPLE_BATCH.value or b
        batch -= batch % jax.device_count()
        name = next(iter(experiment.samplers(config, exp)))
        sampled = measure.sampler(config, exp, state.params, name, batch, repeats=3)
        rows.append((f"sampler {name} images/s", f"{batch / sampled['seconds']:.1f}"))
    rows += [
        ("GFLOP per train step (lowered, all devices)", f"{flops / 1e9:.2f}"),
        ("achieved GFLOP/s per device", f"{per_device / 1e9:.1f}"),
        ("matmul peak GFLOP/s (measured, float32)", f"{peak / 1e9:.1f}"),
        ("fraction of peak", perf.fraction(per_device, peak)),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))


if __name__ == "__main__":
    app.run(main)
