"""The device check's programs: what each unit runs, built so that the compile phase compiles it
from shapes alone (nothing allocated or run) and stores it, and the measure phase loads the
compiled parts without tracing or lowering them again.

A program is a few jitted parts, the last of them the one measured:

  train      init: the method's fresh train state, built on the device as experiment.init_state
             builds it (experiment.fresh_state of experiment.init_params); step: the training
             step of cm/train_step.py (loss, gradient, optimizer, EMAs)
  sample     init: the network's parameters; sample: the method's sampler at a global batch
  inception  features: the FID Inception path of --mode=eval, on random weights (its speed does
             not depend on them; benchmarks/inception_throughput.py)

The training batch is random images (and labels), the FID Inception input random uint8 images;
the frozen weights of a network distance (CD's LPIPS VGG16) are random too (no weight file is
read: the device has none).

The store: each compiled part serialized (jax.experimental.serialize_executable, a pickle of
trusted code written by this check only, as the persistent compilation cache's entries are),
so that the measure phase skips tracing and lowering (seconds per NCSN++ program). The compile
phase compiles with the persistent cache off: on XLA:CPU (JAX 0.10.2) an executable loaded
from the cache serializes into one that fails at its first call ("Function ... not found"),
while freshly compiled ones round-trip. A part the store lacks, or that does not load, is
compiled in the measuring process (its row says so). Parts that several programs share are
stored once (part_keys).
"""

import dataclasses
import os
import pickle
import time
from collections.abc import Callable

import jax
import numpy as np
from jax.experimental import serialize_executable
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from benchmarks import device_setup, inception_throughput, measure, perf
from cm import experiment
from cm.evaluation import features, inception_metric
from cm.io import fileio
from cm.train_step import make_train_step

INCEPTION_IMAGE_SIZE = 32  # CIFAR-10 samples; resized to 299 inside the feature path


@dataclasses.dataclass(frozen=True)
class Part:
    jitted: Callable  # a jax.jit function
    # ({name: compiled} of the parts before it) -> the arguments to lower it with
    # (ShapeDtypeStructs or arrays)
    args: Callable


@dataclasses.dataclass(frozen=True)
class Program:
    parts: dict  # name -> Part, in run order; the last one is measured
    inputs: Callable  # ({name: loaded part}) -> the measured part's arguments on the device
    keys: dict  # name -> store key (part_keys)

    @property
    def measured(self) -> str:
        return list(self.parts)[-1]


def part_keys(spec: dict) -> dict:
    """{part name: store key} of a unit spec's program, in run order (the last one measured).
    A part that several programs share has one key: the train state's initializer is the same
    program in both float32 modes (one model dtype), the samplers' parameters the same for
    both samplers."""
    quick = "quick/" if spec["quick"] else ""
    if spec["kind"] in ("train", "profile"):
        method, mode, batch = spec["method"], spec["mode"], spec["batch"]
        dtype = perf.PRECISION_MODES[mode][0]
        return {
            "init": f"{quick}train/{method}/{dtype}/init",
            "step": f"{quick}train/{method}/{mode}/{batch}/step",
        }
    if spec["kind"] == "sample":
        method = spec["method"]
        return {
            "init": f"{quick}sample/{method}/init",
            "sample": f"{quick}sample/{method}/{spec['sampler']}/{spec['batch']}",
        }
    return {"features": f"{quick}inception/{spec['batch']}"}


def build(spec: dict) -> Program:
    """The program of a unit spec (benchmarks/device_units.py; a profile unit runs its train
    program)."""
    return {"train": _train, "profile": _train, "sample": _sample, "inception": _inception}[
        spec["kind"]
    ](spec)


def _abstract(tree, sharding=None):
    """ShapeDtypeStructs of a tree's arrays (or of a compiled part's out_info), with `sharding`
    (None: each leaf's own)."""
    return jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding or a.sharding), tree
    )


def random_weights(shapes, seed: int = 0):
    """Host arrays of the shapes' tree: N(0, 1 / fan_in) for kernels (2 or more axes), zeros
    for vectors and scalars (a network distance's frozen weights; its files are not read)."""
    rng = np.random.default_rng(seed)

    def fill(s):
        if len(s.shape) < 2:
            return np.zeros(s.shape, s.dtype)
        fan_in = int(np.prod(s.shape[:-1]))
        return (rng.standard_normal(s.shape, np.float32) * fan_in**-0.5).astype(s.dtype)

    return jax.tree.map(fill, shapes)


def _train(spec: dict) -> Program:
    config = device_setup.method_config(spec["method"], spec["quick"], spec["mode"], spec["batch"])
    exp = device_setup.one_device_experiment(config)
    frozen = random_weights(experiment.frozen_weights(exp, config, abstract=True))

    def fresh(frozen):
        return experiment.fresh_state(exp, config, experiment.init_params(exp, config), frozen)

    init = jax.jit(fresh, out_shardings=exp.replicated)
    step = make_train_step(exp, tuple(config.training.ema_rates), config.seed)
    batch = measure.random_batch(config, exp)  # {image [B, H, W, C], label [B]}
    parts = {
        "init": Part(init, lambda _: (_abstract(frozen, exp.replicated),)),
        # the state as the init part returns it (one trace of the network's initializer)
        "step": Part(step, lambda done: (_abstract(done["init"].out_info), batch)),
    }

    def inputs(loaded):
        return loaded["init"](jax.device_put(frozen, exp.replicated)), batch

    return Program(parts, inputs, part_keys(spec))


def _sample(spec: dict) -> Program:
    config = device_setup.method_config(spec["method"], spec["quick"])
    exp = device_setup.one_device_experiment(config)
    init = jax.jit(lambda: experiment.init_params(exp, config), out_shardings=exp.replicated)
    sample = experiment.samplers(config, exp)[spec["sampler"]].jitted(spec["batch"], False)
    key = jax.random.key(0)
    parts = {
        "init": Part(init, lambda _: ()),
        "sample": Part(sample, lambda done: (_abstract(done["init"].out_info), key)),
    }
    return Program(parts, lambda loaded: (loaded["init"](), key), part_keys(spec))


def _inception(spec: dict) -> Program:
    mesh = experiment.make_mesh([device_setup.device()])
    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    variables = inception_throughput.random_variables()  # host numpy
    size = INCEPTION_IMAGE_SIZE
    images = np.random.default_rng(0).integers(0, 256, (spec["batch"], size, size, 3), np.uint8)
    program = features._parallel(inception_metric.inception_features, mesh)  # eval's program
    abstract = (_abstract(variables, replicated), _abstract(images, sharded))
    parts = {"features": Part(program, lambda _: abstract)}

    def inputs(loaded):
        del loaded
        return jax.device_put(variables, replicated), jax.device_put(images, sharded)

    return Program(parts, inputs, part_keys(spec))


# ----------------------------------------------------------------------------- compile, store


def part_path(store: str, key: str) -> str:
    """The stored part's file: its key with "/" and " " made file-name safe."""
    return os.path.join(store, key.replace("/", "__").replace(" ", "_") + ".bin")


def stored(store: str, spec: dict) -> bool:
    """Whether the store holds every part of a unit spec's program."""
    return all(fileio.exists(part_path(store, key)) for key in part_keys(spec).values())


def compile_part(part: Part, done: dict) -> tuple:
    """(compiled, {lower_s, compile_s}, traced, lowered) of one part; done: the parts before
    it, compiled or loaded."""
    start = time.perf_counter()
    traced = part.jitted.trace(*part.args(done))
    lowered = traced.lower()
    lower_s = time.perf_counter() - start
    compiled = lowered.compile()
    times = {"lower_s": lower_s, "compile_s": time.perf_counter() - start - lower_s}
    return compiled, times, traced, lowered


def measured_stats(compiled, times: dict, traced, lowered) -> dict:
    """What the table reports of the measured part's compilation: times, FLOPs (perf.flops, the
    lowered count) and XLA's peak and temporary memory."""
    return {
        **times,
        "flops": perf.flops(traced, lowered),
        "xla_peak_bytes": perf.xla_peak_bytes(compiled),
        "temp_bytes": perf.temp_bytes(compiled),
    }


def compile_and_store(program: Program, store: str) -> dict:
    """The compile phase: every part compiled and stored, nothing run (a shared part another
    program stored already is loaded instead); returns measured_stats of the measured part,
    with other_compile_s the other parts' seconds."""
    other_s, stats, done = 0.0, {}, {}
    for name, part in program.parts.items():
        path = part_path(store, program.keys[name])
        if name != program.measured and fileio.exists(path):
            done[name] = _deserialize(path)
            continue
        compiled, times, traced, lowered = compile_part(part, done)
        done[name] = compiled
        if name == program.measured:
            stats = measured_stats(compiled, times, traced, lowered)
        else:
            other_s += times["compile_s"]
        payload = pickle.dumps(serialize_executable.serialize(compiled))
        fileio.write_bytes_atomic(path, payload)
    return {**stats, "other_compile_s": other_s}


def _deserialize(path: str):
    payload, in_tree, out_tree = pickle.loads(fileio.read_bytes(path))
    return serialize_executable.deserialize_and_load(
        payload, in_tree, out_tree, execution_devices=[device_setup.device()]
    )


def load(program: Program, store: str) -> tuple[dict, dict]:
    """The measure phase: ({name: compiled part}, how): each part deserialized from the store,
    or compiled here where it is not stored or does not load. how: load_s (every part), and
    where the measured part was compiled here its measured_stats under "compiled_here", with
    the reason."""
    loaded, how, start = {}, {}, time.perf_counter()
    for name, part in program.parts.items():
        path = part_path(store, program.keys[name])
        reason = "the compile phase did not store it"
        if fileio.exists(path):
            try:
                loaded[name] = _deserialize(path)
                continue
            except Exception as e:  # noqa: BLE001 (a part that does not load is compiled)
                reason = f"the stored part did not load: {type(e).__name__}: {str(e)[:200]}"
        compiled, times, traced, lowered = compile_part(part, loaded)
        loaded[name] = compiled
        if name == program.measured:
            how["compiled_here"] = {**measured_stats(compiled, times, traced, lowered)}
            how["compiled_here"]["reason"] = reason
    how["load_s"] = time.perf_counter() - start
    return loaded, how
