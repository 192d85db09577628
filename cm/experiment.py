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

from cm import keys, latents, objectives, power_ema, precision, precond, sampling, state
from cm.models import build_model


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
    model: Any
    denoise: Any  # (params, x, sigma, labels, train, dropout_rng) -> f or D
    loss_fn: Any  # (params, batch, rng, step) -> (loss, metrics)
    tx: Any
    mesh: Mesh
    power_ema_gammas: tuple = ()  # exponents of training.power_ema_stds (cm/power_ema.py)
    ema_halflife: Any = None  # state.HalflifeEMA, the last EMA entry; None = off

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    @property
    def data_sharded(self) -> NamedSharding:
        return NamedSharding(self.mesh, P("data"))


def build(config, devices=None) -> Experiment:
    objectives.check_method(config.method.name)
    model = build_model(config)
    denoise = precond.make_denoiser(
        model,
        objectives.PRECONDITIONING[config.method.name],
        config.method.noise_label,
        config.method.sigma_data,
        config.method.sigma_min,
    )
    # Every network call (training loss, samplers, LCSC fitness) at model.matmul_precision.
    denoise = precision.with_matmul_precision(denoise, config.model.matmul_precision)
    return Experiment(
        model=model,
        denoise=denoise,
        loss_fn=objectives.make_objective(config, denoise),
        tx=state.make_optimizer(config.optim),
        mesh=make_mesh(devices),
        power_ema_gammas=tuple(power_ema.std_to_gamma(s) for s in config.training.power_ema_stds),
        ema_halflife=state.halflife_ema(config.training),
    )


def init_params(exp: Experiment, config):
    """Network parameters from the "init" key stream (cm/keys.py), identical on every process."""
    h, w, c = image_shape(config)
    x = jnp.zeros((1, h, w, c), jnp.float32)
    labels = jnp.zeros((1,), jnp.int32) if num_label_classes(config) else None
    rng = keys.stream(config.seed, "init")
    return exp.model.init({"params": rng}, x, jnp.zeros((1,)), labels, train=False)["params"]


def _fresh_state(exp: Experiment, config) -> state.TrainState:
    t = config.training
    return state.create(init_params(exp, config), exp.tx, state.num_emas(t), len(t.power_ema_stds))


def init_state(exp: Experiment, config) -> state.TrainState:
    """A fresh replicated train state, built directly on the devices."""

    def make():
        return _fresh_state(exp, config)

    return jax.jit(make, out_shardings=exp.replicated)()


def abstract_state(exp: Experiment, config):
    """Shapes, dtypes and shardings of the train state, for restoring without allocating it."""
    shapes = jax.eval_shape(lambda: _fresh_state(exp, config))
    return jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=exp.replicated), shapes
    )


def samplers(config, exp: Experiment) -> dict:
    """Named data-parallel samplers for the run's method: consistency 1/2-step, or EDM Heun.

    On latent data (data.name = "latents") each sampler decodes its latents with the VAE and
    returns images (cm/latents.py); this is the one place where latents become images.
    """
    shape, classes = image_shape(config), num_label_classes(config)
    decoding = latents.LatentDecoding(config, exp.mesh) if config.data.name == "latents" else None
    if config.method.name == "edm":
        specs = {f"heun{config.sampling.heun_steps}": ("heun", ())}
    else:
        specs = {
            f"{len(levels) + 1}step": ("consistency", tuple(levels))
            for levels in config.sampling.consistency_levels
        }
    out = {}
    for name, (kind, levels) in specs.items():
        sample_fn = sampling.sampler_from_config(config, exp.denoise, kind, levels)
        if decoding:
            sample_fn = decoding.per_device(sample_fn)
        parallel = sampling.make_parallel_sampler(sample_fn, exp.mesh, shape, classes)
        out[name] = decoding.bind(parallel) if decoding else parallel
    return out
