"""What one entry of the method table (cm/methods/table.py) holds, and the pieces method modules
share.

A method is one `Method`; its module (cm/methods/ict.py for ict and edm, cm/methods/ect.py,
cm/methods/cd.py, ...)
builds the entry's parts, and cm/methods/table.py lists the entries by config.method.name. The
format
is documented in cm/methods/table.py. This module imports nothing from `cm` but precond, so that
every
method module can import it without a cycle.
"""

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

from cm import precond


class Denoisers(NamedTuple):
    """The network, wrapped as each use needs it; all have the signature of
    precond.make_denoiser's result: (params, x, sigma, labels, train, dropout_rng,
    augment_labels) -> x-prediction [B, H, W, C].

    train    the form the objective differentiates (ECT: EDM's denoiser; CD and iCT: the
             consistency function)
    sample   the form every sampler uses (ECT: the boundary-respecting consistency function)
    teacher  EDM's denoiser of the same network, for a frozen diffusion teacher (CD)
    """

    train: Any
    sample: Any
    teacher: Any


@dataclasses.dataclass(frozen=True)
class Method:
    """One entry of the method table; see cm/methods/table.py for the contract of each field."""

    objective: Callable  # (config, Denoisers) -> loss_fn
    parameterization: Callable  # (config, model) -> Denoisers
    sampler: str  # a key of methods.SAMPLER_KINDS: how the method samples
    init_aux: Callable | None = None  # (config, rng) -> trainable auxiliary parameters
    init_extra: Callable | None = None  # (config, params) -> untrained method state
    update_extra: Callable | None = None  # config -> fn(extra, params, step) -> extra
    check: Callable | None = None  # (config, mode) -> None, or one ValueError sentence
    # Methods whose checkpoints method.init_from may name, by the source's recorded
    # method.name (its config.json); None = any.
    init_sources: tuple | None = None
    requires_init_from: bool = False  # training refuses to start from random parameters
    augments: bool = False  # the objective applies EDM's augmentation when augment.p > 0
    # method.distance may name a network distance (losses.NETWORK_DISTANCES: lpips), whose
    # frozen weights the run then carries in its extra state under the distance's name.
    network_distance: bool = False


def precond_pair(train_kind: str, sample_kind: str) -> Callable:
    """A `parameterization`: precond.make_denoiser of `train_kind` for the objective and of
    `sample_kind` for the samplers (keys of precond.SCALINGS), EDM's denoiser as teacher; all
    with the config's noise label, sigma_data and sigma_min."""

    def parameterization(config, model) -> Denoisers:
        m = config.method

        def make(kind):
            return precond.make_denoiser(model, kind, m.noise_label, m.sigma_data, m.sigma_min)

        return Denoisers(train=make(train_kind), sample=make(sample_kind), teacher=make("edm"))

    return parameterization


def stateless(loss_fn) -> Callable:
    """A loss of (params, batch, rng, step) as an objective of the table's signature, for
    methods without auxiliary parameters or extra state."""

    def objective(params, batch, rng, step, aux=(), extra=()):
        del aux, extra
        return loss_fn(params, batch, rng, step)

    return objective


@dataclasses.dataclass(frozen=True)
class SamplerKind:
    """One kind of sampler (an entry of methods.SAMPLER_KINDS): its named instances and how
    to build one."""

    names: Callable  # config -> {sampler name: levels}
    # (config, sample denoiser, levels) -> per-device fn(params, rng, labels, shape)
    build: Callable


def consistency_levels(config) -> dict:
    """One consistency sampler per entry of sampling.consistency_levels, named by its steps."""
    return {
        f"{len(levels) + 1}step": tuple(levels) for levels in config.sampling.consistency_levels
    }


def heun_levels(config) -> dict:
    """EDM's Heun sampler with sampling.heun_steps steps (no levels)."""
    return {f"heun{config.sampling.heun_steps}": ()}


def invalid(path: str, value, reason: str, fix: str = ""):
    """Raises config_checks' sentence '<path>=<value> is invalid: <reason>; set <fix>.' (fix:
    `--config.<path> to such a value` unless given), for a method module's own checks."""
    fix = fix or f"--config.{path} to such a value"
    raise ValueError(f"{path}={value!r} is invalid: {reason}; set {fix}.")


def require_number(path, value, lo=None, lo_open=False, integer=False):
    """Raises invalid(...) unless `value` is a number (an integer when `integer`) above `lo`
    (strictly when `lo_open`)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    ok = ok and (isinstance(value, int) or not integer)
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if not ok:
        kind = "an integer" if integer else "a number"
        bound = "" if lo is None else f" {'>' if lo_open else '>='} {lo}"
        invalid(path, value, f"it must be {kind}{bound}")
