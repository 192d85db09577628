"""The method table: one entry per config.method.name, and the one place that dispatches on it.

Adding a method means writing its module and adding one line to METHODS (and, for a new kind
of sampler, one line to SAMPLER_KINDS); every dispatch on the method goes through here. An
entry is a `method_spec.Method`:

    objective(config, denoisers) -> loss_fn
        loss_fn(params, batch, rng, step, aux=(), extra=()) -> (loss, metrics), traced inside
        the jitted step. params: the network's parameters (differentiated); aux: the method's
        trainable auxiliary parameters (differentiated too); extra: its untrained state (not
        differentiated); batch: {"image": [B, H, W, C], "label": [B], ...}; rng: the step's
        key; step: the traced step. metrics: scalars, "loss" among them.
        `method_spec.stateless(loss)` adapts a loss of (params, batch, rng, step).
    parameterization(config, model) -> method_spec.Denoisers(train, sample, teacher)
        how the raw network becomes the function the objective differentiates (train), the
        one the samplers call (sample) and a frozen diffusion teacher's (teacher).
        `method_spec.precond_pair(train_kind, sample_kind)` builds it from precond.SCALINGS.
        (sct, scd and meanflow take TrigFlow / MeanFlow times instead of sigma: their entries'
        own samplers and objectives are the only callers; cm/methods/sct.py.)
    sampler: a key of SAMPLER_KINDS, the kind of the method's samplers. A kind
        (method_spec.SamplerKind) names its instances from the config ({name: levels}, e.g.
        1step and 2step from sampling.consistency_levels) and builds each as a per-device
        fn(params, rng, labels, shape) around the entry's sample denoiser.
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
    check(config, mode) -> None, or one ValueError sentence (method_spec.invalid)
        the method's own config fields, before anything is written (config_checks.check).
    init_sources: which recorded method.name a method.init_from checkpoint may have; None =
        any. requires_init_from: training refuses random parameters (a distilled teacher).
    network_distance: method.distance may name a distance computed by a frozen network
        (losses.NETWORK_DISTANCES: lpips). Its weights are read from the files the config names
        when a run starts (experiment.frozen_weights), passed to the state's jitted constructor
        as arguments (never as constants) and kept in the extra state under the distance's
        name; the objective then gets fn(a, b, c, extra) from losses.get_distance(name, config).
        config_checks refuses a network distance for the other methods.

The train state of a method without init_aux and init_extra is state.TrainState, exactly as
before the table existed (its checkpoints keep their layout); with either, it is
state.MethodTrainState, which adds aux, aux_opt_state and extra.
"""

from cm import sampling
from cm.methods import augment, cd, ect, edm, ict, meanflow, sct
from cm.methods.spec import (
    Denoisers,
    Method,
    SamplerKind,
    consistency_levels,
    heun_levels,
    precond_pair,
    stateless,
)


def _single_denoiser(builder):
    """An objective of (config, Denoisers) from a builder of (config, train denoiser) whose loss
    takes (params, batch, rng, step)."""
    return lambda config, denoisers: stateless(builder(config, denoisers.train))


METHODS = {
    # iCT / sLCT (docs/methods.md sections 2, 3): the consistency function in training and
    # sampling, the student's own stop-gradient copy as teacher.
    "ict": Method(
        objective=_single_denoiser(ict.ict_objective),
        parameterization=precond_pair("consistency", "consistency"),
        sampler="consistency",
    ),
    # EDM diffusion (section 5): the EDM denoiser, Heun's sampler.
    "edm": Method(
        objective=_single_denoiser(edm.edm_objective),
        parameterization=precond_pair("edm", "edm"),
        sampler="heun",
        augments=True,
    ),
    # ECT (section 8, cm/methods/ect.py): EDM's denoiser in training, the consistency function at
    # sampling; usually started from an EDM run (method.init_from).
    "ect": ect.METHOD,
    # CD (section 8, cm/methods/cd.py): a frozen EDM teacher in the extra state, Heun steps between
    # adjacent levels, an optional target EMA.
    "cd": cd.METHOD,
    # sCT / sCD (section 9, cm/methods/sct.py via cm/methods/sct.py): TrigFlow over the network,
    # one JVP
    # per step, the learned weighting w(t) as auxiliary parameters; sCD's EDM teacher frozen in
    # the extra state (method.init_from).
    "sct": sct.SCT,
    "scd": sct.SCD,
    # MeanFlow (section 9, cm/methods/meanflow.py): the average velocity u(z, r, t), its JVP target.
    "meanflow": meanflow.MEANFLOW,
}

# Sampler kinds (cm/sampling.py): consistency 1-step / multistep, EDM's Heun; TrigFlow's and
# MeanFlow's 1/2-step samplers (cm/methods/sct.py).
SAMPLER_KINDS = {
    "trigflow": sct.SAMPLERS,
    "meanflow": meanflow.SAMPLERS,
    "consistency": SamplerKind(
        names=consistency_levels,
        build=lambda config, denoise, levels: sampling.sampler_from_config(
            config, denoise, "consistency", levels
        ),
    ),
    "heun": SamplerKind(
        names=heun_levels,
        build=lambda config, denoise, levels: sampling.sampler_from_config(
            config, denoise, "heun", levels
        ),
    ),
}


def get(name: str) -> Method:
    """The entry of method `name`, or one sentence naming the valid ones."""
    if name not in METHODS:
        raise ValueError(f"Unknown method.name {name!r}; valid: {sorted(METHODS)}.")
    return METHODS[name]


def objective(config, denoisers):
    """loss_fn(params, batch, rng, step, aux=(), extra=()) of config.method.name."""
    entry = get(config.method.name)
    augmenting = {name for name, method in METHODS.items() if method.augments}
    augment.check_model(
        augment.Settings.from_config(config.augment),
        config.model.augment_dim,
        config.method.name,
        augmenting,
    )
    return entry.objective(config, denoisers)


def sampler_kinds(config) -> set:
    """The kinds of sampler the run's method uses (config_checks checks their fields); known
    before the fields themselves are checked."""
    return {get(config.method.name).sampler}


def sampler_specs(config) -> dict:
    """{name: (kind, levels)} of the run's method."""
    kind = get(config.method.name).sampler
    return {name: (kind, levels) for name, levels in SAMPLER_KINDS[kind].names(config).items()}


def make_sampler(config, denoise, kind: str, levels=()):
    """The per-device sampler fn(params, rng, labels, shape) of one kind."""
    if kind not in SAMPLER_KINDS:
        raise ValueError(f"Unknown sampler kind {kind!r}; valid: {sorted(SAMPLER_KINDS)}.")
    return SAMPLER_KINDS[kind].build(config, denoise, levels)


def check(config, mode: str):
    """The method's own config checks (after its name is known to be valid)."""
    entry = get(config.method.name)
    if entry.check is not None:
        entry.check(config, mode)


def make_objective(config, denoise):
    """loss_fn(params, batch, rng, step, aux=(), extra=()) of config.method.name, for a method
    whose objective uses one denoiser `denoise` (the table's objective with train = sample =
    denoise and no teacher)."""
    return objective(config, Denoisers(train=denoise, sample=denoise, teacher=None))
