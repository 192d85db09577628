"""The method table: one entry per config.method.name, and the one place that dispatches on it.

Adding a method means writing its module (formulas, objective, checks, DEFAULTS and its entry,
a spec.Method; cm/methods/spec.py gives the contract of each field) and adding one line to
METHODS; tests/test_method_contract.py then runs it through every mode. A run resolves its
entry once (experiment.build keeps it); everything else takes the entry.
"""

from cm.methods import augment, cd, ect, edm, ict, meanflow, sct, trigflow_diffusion
from cm.methods.spec import Denoisers, Method

METHODS = {
    "ict": ict.METHOD,  # iCT / sLCT (docs/methods.md sections 2, 3)
    "edm": edm.METHOD,  # EDM diffusion (section 5)
    "trigflow": trigflow_diffusion.METHOD,  # TrigFlow diffusion, sCT's start (section 9)
    "ect": ect.METHOD,  # ECT, usually from an EDM run (section 8)
    "cd": cd.METHOD,  # consistency distillation of an EDM teacher (section 8)
    "sct": sct.SCT,  # sCT: TrigFlow, one JVP per step (section 9)
    "scd": sct.SCD,  # sCD of an EDM teacher (section 9)
    "meanflow": meanflow.METHOD,  # MeanFlow's average velocity (section 9)
}


def get(name: str) -> Method:
    """The entry of method `name`, or one sentence naming the valid ones."""
    if name not in METHODS:
        raise ValueError(f"Unknown method.name {name!r}; valid: {sorted(METHODS)}.")
    return METHODS[name]


def defaults() -> dict:
    """Every method's own config fields with their defaults (configs/common.py merges them
    into config.method); one sentence if two methods define the same field differently."""
    out = {}
    for name, entry in METHODS.items():
        for field, value in entry.defaults.items():
            if field in out and out[field] != value:
                raise ValueError(f"method.{field} has two defaults; {name}'s differs.")
            out[field] = value
    return out


def augmenting() -> list:
    """The methods whose objective applies EDM's augmentation (Method.augments)."""
    return sorted(name for name, entry in METHODS.items() if entry.augments)


def network_distance_carriers() -> list:
    """The methods that may carry a frozen network distance (Method.network_distance)."""
    return sorted(name for name, entry in METHODS.items() if entry.network_distance)


def objective(config, denoisers, entry: Method | None = None):
    """loss_fn(params, batch, rng, step, aux=(), extra=()) of `entry` (default: the entry of
    config.method.name), after checking that the network can read its augmentation labels."""
    entry = entry or get(config.method.name)
    augment.check_model(
        augment.Settings.from_config(config.augment),
        config.model.augment_dim,
        config.method.name,
        augmenting(),
    )
    return entry.objective(config, denoisers)


def sampler_specs(config) -> dict:
    """{sampler name: levels} of the run's method, e.g. {"1step": (), "2step": (0.821,)}."""
    return get(config.method.name).sampler.names(config)


def make_objective(config, denoise):
    """loss_fn(params, batch, rng, step, aux=(), extra=()) of config.method.name, for a method
    whose objective uses one denoiser `denoise` (the table's objective with train = sample =
    denoise and no teacher)."""
    return objective(config, Denoisers(train=denoise, sample=denoise, teacher=None))
