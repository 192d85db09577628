"""Builds the pieces of a run from its config: mesh, network, denoiser, loss, optimizer, state.

The config is read here (at the edge); everything returned is a pure function or a value.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from cm import keys, latents, methods, power_ema, precision, sampling, state
from cm.methods import losses
from cm.methods.spec import Denoisers, Method
from cm.models import build_model
from cm.workdir import init_from


def make_mesh(devices=None) -> Mesh:
    """One 'data' axis over every device of every process (or over `devices`)."""
    return Mesh(np.asarray(jax.devices() if devices is None else devices), ("data",))


def image_shape(config) -> tuple[int, int, int]:
    return (config.data.image_size, config.data.image_size, config.data.channels)


def num_label_classes(config) -> int:
    """Classes the network is conditioned on (0 = unconditional)."""
    return config.data.num_classes if config.model.use_labels else 0


@dataclasses.dataclass(frozen=True)
class Experiment:
    method: Method  # the entry of config.method.name, resolved once (cm/methods/table.py)
    model: Any
    denoise: Any  # the samplers' (params, x, sigma, labels, train, dropout_rng) -> f or D
    loss_fn: Any  # (params, batch, rng, step, aux=(), extra=()) -> (loss, metrics)
    tx: Any
    mesh: Mesh
    power_ema_gammas: tuple = ()  # exponents of training.power_ema_stds (cm/power_ema.py)
    ema_halflife: Any = None  # state.HalflifeEMA, the last EMA entry; None = off
    update_extra: Any = None  # the method's (extra, params, step) -> extra; None = constant

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    @property
    def data_sharded(self) -> NamedSharding:
        return NamedSharding(self.mesh, P("data"))


def network_forms(config, entry: Method, model) -> Denoisers:
    """The entry's forms of `model` under the run's precision policy (cm/precision.py): train,
    sample and teacher (every network call: training loss, samplers, LCSC fitness) at
    model.matmul_precision in model.dtype (the model's own); jvp, the train form of a second
    model at method.jvp_dtype and method.jvp_matmul_precision, for an entry that owns those
    fields (a JVP method) and only when they differ from the network's (else None: the JVP
    shares the train form's pass)."""
    forms = entry.parameterization(config, model)
    train, sample, teacher = (
        precision.with_matmul_precision(d, config.model.matmul_precision) for d in forms[:3]
    )
    owns_jvp = all(field in entry.defaults for field in precision.JVP_DEFAULTS)
    jvp_config = precision.jvp_config(config) if owns_jvp else None
    jvp = None
    if jvp_config is not None:
        jvp_model = build_model(jvp_config, second_noise_label=entry.second_noise_label)
        jvp = precision.with_matmul_precision(
            entry.parameterization(jvp_config, jvp_model).train,
            jvp_config.model.matmul_precision,
        )
    return Denoisers(train, sample, teacher, jvp)


def build(config, devices=None) -> Experiment:
    """The run's pieces for config.method.name, from its entry in the method table (resolved
    here, once, and kept as Experiment.method)."""
    entry = methods.get(config.method.name)
    model = build_model(config, second_noise_label=entry.second_noise_label)
    denoisers = network_forms(config, entry, model)
    return Experiment(
        method=entry,
        model=model,
        denoise=denoisers.sample,
        loss_fn=methods.objective(config, denoisers, entry),
        tx=state.make_optimizer(config.optim),
        mesh=make_mesh(devices),
        power_ema_gammas=tuple(power_ema.std_to_gamma(s) for s in config.training.power_ema_stds),
        ema_halflife=state.halflife_ema(config.training),
        update_extra=entry.update_extra(config) if entry.update_extra else None,
    )


def init_params(exp: Experiment, config):
    """Network parameters from the "init" key stream (cm/keys.py), identical on every process."""
    h, w, c = image_shape(config)
    x = jnp.zeros((1, h, w, c), jnp.float32)
    labels = jnp.zeros((1,), jnp.int32) if num_label_classes(config) else None
    rng = keys.stream(config.seed, "init")
    second = {"second_noise_labels": jnp.zeros((1,))} if exp.model.second_noise_label else {}
    return exp.model.init({"params": rng}, x, jnp.zeros((1,)), labels, train=False, **second)[
        "params"
    ]


def param_shapes(exp: Experiment, config):
    """The network parameters' ShapeDtypeStructs (one trace of the initializer, no compute)."""
    return jax.eval_shape(lambda: init_params(exp, config))


def frozen_weights(exp: Experiment, config, abstract: bool = False) -> dict:
    """The frozen network weights the run's method carries besides init_extra's state: those of
    method.distance's network when the method's entry allows one (Method.network_distance),
    else {}. Read from their files on the host (numpy), or their ShapeDtypeStructs when
    `abstract`."""
    if not exp.method.network_distance:
        return {}
    return losses.frozen_weights(config, abstract)


def fresh_state(exp: Experiment, config, params, frozen=None) -> state.TrainState:
    """The step-0 state around `params`: every EMA and power EMA a copy of them, a fresh
    optimizer state, and the method's auxiliary parameters and extra state (cm/methods/spec.py),
    `frozen` (frozen_weights) added to the latter."""
    entry, t = exp.method, config.training
    aux = entry.init_aux(config, keys.indexed(config.seed, "init", 1)) if entry.init_aux else None
    extra = entry.init_extra(config, params) if entry.init_extra else None
    if frozen:
        extra = {**(extra or {}), **frozen}
    num_emas, num_power = state.num_emas(t), len(t.power_ema_stds)
    return state.create(params, exp.tx, num_emas, num_power, aux=aux, extra=extra)


def check_init_from(exp: Experiment, config, shapes=None):
    """method.init_from's checks (cm/workdir/init_from.py), reading metadata only: for a new run
    to refuse a bad source before it writes anything. shapes: param_shapes, when known."""
    shapes = param_shapes(exp, config) if shapes is None else shapes
    init_from.check(config, shapes, exp.method.init_sources)


def _replicated(exp: Experiment, host):
    """Numpy arrays (the same on every process) -> arrays replicated over the mesh."""
    return jax.tree.map(
        lambda a: jax.make_array_from_callback(a.shape, exp.replicated, lambda i: a[i]), host
    )


def state_around(exp: Experiment, config, params, frozen=None) -> state.TrainState:
    """fresh_state around replicated `params`, built on the devices by one jitted program that
    takes the method's frozen weights (frozen_weights, read here unless given) as arguments,
    never as constants."""
    frozen = _replicated(exp, frozen_weights(exp, config) if frozen is None else frozen)
    make = jax.jit(lambda p, f: fresh_state(exp, config, p, f), out_shardings=exp.replicated)
    return make(params, frozen)


def init_state(exp: Experiment, config, frozen=None, shapes=None) -> state.TrainState:
    """A fresh replicated train state, built directly on the devices: from random parameters,
    or from those of the checkpoint method.init_from names (cm/workdir/init_from.py).
    frozen: frozen_weights when already read; shapes: param_shapes when already traced."""
    if config.method.init_from:
        shapes = param_shapes(exp, config) if shapes is None else shapes
        # numpy, read by every process
        host = init_from.load_params(config, shapes, exp.method.init_sources)
        return state_around(exp, config, _replicated(exp, host), frozen)

    def make(frozen):
        return fresh_state(exp, config, init_params(exp, config), frozen)

    frozen = _replicated(exp, frozen_weights(exp, config) if frozen is None else frozen)
    return jax.jit(make, out_shardings=exp.replicated)(frozen)


def abstract_state(exp: Experiment, config):
    """Shapes, dtypes and shardings of the train state, for restoring without allocating it
    (the frozen weights by their shapes: no file is read)."""
    shapes = jax.eval_shape(
        lambda f: fresh_state(exp, config, init_params(exp, config), f),
        frozen_weights(exp, config, abstract=True),
    )
    return jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=exp.replicated), shapes
    )


def samplers(config, exp: Experiment) -> dict:
    """Named data-parallel samplers of the run's method (its entry's sampler kind): e.g.
    consistency 1/2-step, or EDM Heun. Each calls the denoiser clipped between steps as the
    method's switch says (sampling.sample_denoiser).

    On latent data (data.name = "latents") each sampler decodes its latents with the VAE and
    returns images (cm/latents.py); this is the one place where latents become images.
    """
    shape, classes = image_shape(config), num_label_classes(config)
    decoding = latents.LatentDecoding(config, exp.mesh) if config.data.name == "latents" else None
    kind = exp.method.sampler
    denoise = sampling.sample_denoiser(config, exp.method.clip_denoised, exp.denoise)
    out = {}
    for name, levels in kind.names(config).items():
        sample_fn = kind.build(config, denoise, levels)
        if decoding:
            sample_fn = decoding.per_device(sample_fn)
        parallel = sampling.make_parallel_sampler(sample_fn, exp.mesh, shape, classes)
        out[name] = decoding.bind(parallel) if decoding else parallel
    return out
