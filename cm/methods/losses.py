"""Per-sample distances between two batches of samples, as pure functions of arrays, and the
one table that resolves method.distance.

CM's CIFAR-10 code (jcm/losses.py) names its distances "l1" and "l2": the means over the
elements of |a - b| and (a - b)^2; `cm` keeps those names for them, and calls the Euclidean
norm over the whole sample (ECT's c = 0 pseudo-Huber) "l2_norm" (docs/methods.md section 8).
iCT's pseudo-Huber acts on the whole sample vector; sLCT's Cauchy and the iLCT baseline's
pseudo-Huber (as the sLCT authors' code computes it) on the mean over elements. LPIPS (CM's
distance for consistency distillation, cm/models/lpips.py) runs a frozen network: its weights are
read
from files when a run starts and travel in the method's extra state (checkpointed, never
trained), so only a method whose table entry carries them (Method.network_distance: CD) may name
it.
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from cm import precision
from cm.models import lpips, lpips_weights


def _flat(a):
    """[B, ...] -> [B, d]."""
    return a.reshape(a.shape[0], -1)


def squared_l2(a, b):
    """||a - b||_2^2 over each sample. Returns [B]."""
    return jnp.sum(jnp.square(_flat(a) - _flat(b)), axis=-1)


def l2_norm(a, b, c=None):
    """Euclidean distance ||a - b||_2 over each sample (c unused). Returns [B]."""
    del c
    return jnp.sqrt(squared_l2(a, b))


def mean_abs(a, b, c=None):
    """jcm's "l1": mean over each sample's elements of |a - b| (c unused). Returns [B]."""
    del c
    return jnp.mean(jnp.abs(_flat(a) - _flat(b)), axis=-1)


def mean_square(a, b, c=None):
    """jcm's "l2": mean over each sample's elements of (a - b)^2 (c unused). Returns [B]."""
    del c
    return jnp.mean(jnp.square(_flat(a) - _flat(b)), axis=-1)


def pseudo_huber(a, b, c):
    """iCT pseudo-Huber over the whole sample vector: sqrt(||a - b||^2 + c^2) - c. Returns [B]."""
    return jnp.sqrt(squared_l2(a, b) + c**2) - c


def pseudo_huber_lct(a, b, c):
    """Pseudo-Huber on the mean over elements, as the sLCT authors' code runs its iLCT baseline
    (docs/methods.md section 3): sqrt(mean((a - b)^2) + c^2) - c. Returns [B].

    Unlike iCT's `pseudo_huber` (a sum over the d elements), the same c = 0.00054 sqrt(d) here
    meets a d times smaller squared error, so the loss is far closer to its quadratic regime.
    """
    mse = jnp.mean(jnp.square(_flat(a) - _flat(b)), axis=-1)  # [B]
    return jnp.sqrt(mse + c**2) - c


def cauchy(a, b, c):
    """sLCT Cauchy distance: log(1 + mean_over_elements((a - b)^2) / (2 c^2)). Returns [B].

    c may be a scalar or traced (the adaptive c(N) of `schedules.slct_cauchy_c`).
    """
    mse = jnp.mean(jnp.square(_flat(a) - _flat(b)), axis=-1)  # [B]
    return jnp.log1p(mse / (2.0 * jnp.square(c)))


def huber_c(num_elements: int, factor: float) -> float:
    """iCT's c = factor * sqrt(d) for samples of d elements (0.00054 * sqrt(3072) = 0.0299)."""
    return factor * num_elements**0.5


# The distances that read c (iCT's c = huber_c_factor sqrt(d)); the others ignore it.
TAKES_C = ("pseudo_huber", "pseudo_huber_lct", "cauchy")

DISTANCES = {
    "l1": mean_abs,  # jcm's "l1"
    "l2": mean_square,  # jcm's "l2"
    "l2_norm": l2_norm,  # the Euclidean norm (named "l2" in `cm` before jcm's names came)
    "pseudo_huber": pseudo_huber,
    "pseudo_huber_lct": pseudo_huber_lct,
    "cauchy": cauchy,
}


@dataclasses.dataclass(frozen=True)
class NetworkDistance:
    """A distance computed by a frozen network whose weights are read from files."""

    distance: Callable  # (weights, a, b, config) -> [B]
    load: Callable  # config.method -> the weights (numpy), read from the files it names
    shapes: Callable  # () -> the weights' ShapeDtypeStructs, no file read


def _lpips(weights, a, b, config):
    m = config.method
    return lpips.lpips(weights, a, b, m.lpips_resize, m.lpips_pooling)


NETWORK_DISTANCES = {
    "lpips": NetworkDistance(_lpips, lpips_weights.load_from_config, lpips_weights.shapes),
}


def is_network_distance(name: str) -> bool:
    return name in NETWORK_DISTANCES


def get_distance(name: str, config=None):
    """The per-sample distance of config string `name`: fn(a, b, c) -> [B].

    With `config` (a method whose entry carries network distances, Method.network_distance)
    every name gives fn(a, b, c, frozen) instead, `frozen` being the method's extra state: a
    network distance reads its weights from frozen[name] under stop_gradient and runs its
    network at model.matmul_precision; the others ignore `frozen`.
    """
    if name in NETWORK_DISTANCES:
        if config is None:
            raise ValueError(
                f"method.distance={name!r} runs a frozen network that this method does not "
                f"carry; set --config.method.distance to one of {sorted(DISTANCES)}."
            )
        network = precision.with_matmul_precision(
            NETWORK_DISTANCES[name].distance, config.model.matmul_precision
        )

        def distance(a, b, c, frozen):
            del c
            return network(jax.lax.stop_gradient(frozen[name]), a, b, config)

        return distance
    if name not in DISTANCES:
        valid = sorted(DISTANCES) + sorted(NETWORK_DISTANCES)
        raise ValueError(f"Unknown method.distance {name!r}; valid: {valid}.")
    plain = DISTANCES[name]
    if config is None:
        return plain
    return lambda a, b, c, frozen: plain(a, b, c)


def frozen_weights(config, abstract: bool = False) -> dict:
    """{method.distance: its network's weights} for a network distance, {} for the others:
    numpy arrays read from the files the config names, or their ShapeDtypeStructs when
    `abstract` (restoring a checkpoint that holds them reads no file)."""
    name = config.method.distance
    if name not in NETWORK_DISTANCES:
        return {}
    network = NETWORK_DISTANCES[name]
    return {name: network.shapes() if abstract else network.load(config.method)}
