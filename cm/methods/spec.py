"""What one entry of the method table (cm/methods/table.py) holds, and the pieces that method
modules share.

A method's module (ict.py, edm.py, ect.py, cd.py, sct.py, meanflow.py) holds its formulas, its
objective, its config checks, its config defaults (DEFAULTS) and its entry, a `Method`;
table.py lists the entries by config.method.name and is the one place that dispatches on it.
This module imports nothing from `cm` but precond and sampling, so every method module can
import it without a cycle.

The fields of a `Method`:

    objective(config, denoisers) -> loss_fn
        loss_fn(params, batch, rng, step, aux=(), extra=()) -> (loss, metrics), traced inside
        the jitted step. params: the network's parameters (differentiated); aux: the method's
        trainable auxiliary parameters (differentiated too); extra: its untrained state (not
        differentiated); batch: {"image": [B, H, W, C], "label": [B], ...}; rng: the step's
        key; step: the traced step. metrics: scalars, "loss" among them. `stateless(loss)`
        adapts a loss of (params, batch, rng, step).
    parameterization(config, model) -> Denoisers(train, sample, teacher)
        how the raw network becomes the function the objective differentiates (train), the
        one the samplers call (sample) and a frozen diffusion teacher's (teacher).
        `precond_pair(train_kind, sample_kind)` builds it from precond.SCALINGS. (sct, scd and
        meanflow take TrigFlow / MeanFlow times instead of sigma: their own samplers and
        objectives are the only callers; trigflow's train form too, its sample form is sigma's.)
        experiment.network_forms applies the precision policy (cm/precision.py) to its forms
        and adds the JVP pass's own form (Denoisers.jvp) when the policy asks for one.
    sampler: a SamplerKind, the kind of the method's samplers: it names its instances from the
        config ({name: levels}, e.g. 1step and 2step from sampling.consistency_levels), builds
        each as a per-device fn(params, rng, labels, shape) around the sample denoiser.
    defaults: the method's own config fields with their paper defaults, merged into
        config.method by configs/common.py (names unique across the table).
    init_aux(config, rng) -> pytree, or None (the default: no auxiliary parameters)
        trainable parameters besides the network (e.g. sCM's learned weighting w(t)). They are
        trained with the network by the same optimizer (their own optimizer state), and are
        never sampled from, EMA'd, snapshotted or merged by LCSC. rng = key 1 of the "init"
        stream (the network uses the stream's base key).
    init_extra(config, params) -> pytree, or None (the default: no extra state)
        state that no gradient trains, built from the network parameters the run starts from
        (its random initialization, or method.init_from's): a frozen teacher, a target EMA.
        It is part of the checkpointed train state, so a resumed run has it exactly.
    update_extra(config) -> fn(extra, params, step) -> extra, or None (the default: constant)
        applied after every optimizer step with the new parameters (a target EMA's update).
    check(config, mode) -> None, or one ValueError sentence (`invalid`)
        the method's own config fields, before anything is written (config_checks.check).
    init_sources: which recorded method.name a method.init_from checkpoint may have; None =
        any. requires_init_from: training refuses random parameters (a distilled teacher).
        scratch_warning: one line that training logs as a warning, not an error, when a new run
        starts from random parameters (the paper starts the method from a trained model: sCT).
    augments: the objective applies EDM's augmentation when augment.p > 0.
    network_distance: method.distance may name a distance computed by a frozen network
        (losses.NETWORK_DISTANCES: lpips). Its weights are read from the files the config names
        when a run starts (experiment.frozen_weights), passed to the state's jitted constructor
        as arguments (never as constants) and kept in the extra state under the distance's
        name; the objective then gets fn(a, b, c, extra) from losses.get_distance(name, config).
        config_checks refuses a network distance for the other methods.
    second_noise_label: the network reads a second time label (MeanFlow's r or t - r).
    clip_denoised(config) -> bool, or None (the default: the sampler re-noises no x0 estimate)
        the method's sampling switch: its samplers clip every x0 estimate to the data range
        before re-noising it (sampling.sample_denoiser; docs/methods.md section 8).

The train state of a method without init_aux and init_extra is state.TrainState, exactly as
before the table existed (its checkpoints keep their layout); with either, it is
state.MethodTrainState, which adds aux, aux_opt_state and extra.
"""

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

from cm import precond, sampling


class Denoisers(NamedTuple):
    """The network, wrapped as each use needs it; all have the signature of
    precond.make_denoiser's result: (params, x, sigma, labels, train, dropout_rng,
    augment_labels) -> x-prediction [B, H, W, C].

    train    the form the objective differentiates (ECT: EDM's denoiser; CD and iCT: the
             consistency function)
    sample   the form every sampler uses (ECT: the boundary-respecting consistency function)
    teacher  EDM's denoiser of the same network, for a frozen diffusion teacher (CD)
    jvp      the train form at the JVP pass's own precision (method.jvp_dtype,
             method.jvp_matmul_precision; cm/precision.py), for the methods that take a jax.jvp
             of the network (sct, scd, meanflow); None (the default): the JVP runs at the
             network's precision, in the train form's own pass
    """

    train: Any
    sample: Any
    teacher: Any
    jvp: Any = None


@dataclasses.dataclass(frozen=True)
class SamplerKind:
    """One kind of sampler: its named instances and how to build one."""

    name: str  # for messages and tables: consistency, heun, trigflow, meanflow
    names: Callable  # config -> {sampler name: levels}
    # (config, sample denoiser, levels) -> per-device fn(params, rng, labels, shape)
    build: Callable


@dataclasses.dataclass(frozen=True)
class Method:
    """One entry of the method table; the module docstring gives the contract of each field."""

    objective: Callable  # (config, Denoisers) -> loss_fn
    parameterization: Callable  # (config, model) -> Denoisers
    sampler: SamplerKind  # how the method samples
    defaults: dict = dataclasses.field(default_factory=dict)  # the method's own config fields
    init_aux: Callable | None = None  # (config, rng) -> trainable auxiliary parameters
    init_extra: Callable | None = None  # (config, params) -> untrained method state
    update_extra: Callable | None = None  # config -> fn(extra, params, step) -> extra
    check: Callable | None = None  # (config, mode) -> None, or one ValueError sentence
    # Methods whose checkpoints method.init_from may name, by the source's recorded
    # method.name (its config.json); None = any.
    init_sources: tuple | None = None
    requires_init_from: bool = False  # training refuses to start from random parameters
    scratch_warning: str = ""  # logged when a new run starts from random parameters
    augments: bool = False  # the objective applies EDM's augmentation when augment.p > 0
    # method.distance may name a network distance (losses.NETWORK_DISTANCES: lpips), whose
    # frozen weights the run then carries in its extra state under the distance's name.
    network_distance: bool = False
    second_noise_label: bool = False  # the network reads a second time label (MeanFlow)
    clip_denoised: Callable | None = None  # config -> bool: samplers clip each x0 estimate


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
    """A loss of (params, batch, rng, step) as a loss_fn of the table's signature, for methods
    without auxiliary parameters or extra state."""

    def loss(params, batch, rng, step, aux=(), extra=()):
        del aux, extra
        return loss_fn(params, batch, rng, step)

    return loss


def invalid(path: str, value, reason: str, fix: str = ""):
    """Raises the config checks' sentence '<path>=<value> is invalid: <reason>; set <fix>.'
    (fix: `--config.<path> to such a value` unless given)."""
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


def consistency_levels(config) -> dict:
    """One consistency sampler per entry of sampling.consistency_levels, named by its steps."""
    return {
        f"{len(levels) + 1}step": tuple(levels) for levels in config.sampling.consistency_levels
    }


def heun_levels(config) -> dict:
    """EDM's Heun sampler with sampling.heun_steps steps (no levels)."""
    return {f"heun{config.sampling.heun_steps}": ()}


# The two kinds of sampler over a denoiser of sigma (cm/sampling.py); config_checks checks
# their fields (sampling.consistency_levels; the Heun fields).
CONSISTENCY_SAMPLERS = SamplerKind(
    "consistency", consistency_levels, sampling.consistency_from_config
)
HEUN_SAMPLERS = SamplerKind("heun", heun_levels, sampling.heun_from_config)
