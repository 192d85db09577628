"""Up-front checks of the config fields a run reads, so that a bad value stops the run with one
sentence (launch.py prints `error: ...`, exit 2) before anything is written to the workdir.

`check(config, mode)` is a pure function of the config. Fields that other modules already check
before the workdir is touched are left to them: method.name, method.distance, optim.name,
model.name / dtype / norm / embedding / encoder_type (experiment.build), data.* (data.py),
method.init_from / init_params (init_from.py, at the training start, before any write),
training.power_ema_stds (power_ema.py), training.batch_size against the devices
(train.check_batch_size), sampling.batch_size against the devices (sampling.py), lcsc.*
(lcsc/run.py, lcsc/search.py) and the --mode=encode fields (encode.py).
"""

import dataclasses
import math
import numbers
from collections.abc import Callable
from typing import Any

from cm import methods
from cm.evaluation import evaluator
from cm.methods import losses, spec
from cm.methods.spec import invalid

SAMPLING_PARAMS = ("ema", "online")  # sampling.params: which parameters the samplers use
LEVELS_EXAMPLE = "'((), (0.821,))'"  # iCT's 1- and 2-step samplers (docs/methods.md section 2)

# Modes that build the network and draw samples from it (training draws its sample grids).
SAMPLING_MODES = ("train", "sample", "eval", "lcsc")


@dataclasses.dataclass(frozen=True)
class Rule:
    """`path` must satisfy `ok` (every element of it when `each`) whenever `applies`."""

    path: str  # dotted config field, e.g. "training.checkpoint_every"
    what: str  # what the value is, for the message
    requirement: str  # e.g. "an integer >= 1"
    ok: Callable[[Any], bool]
    # (config, mode, the method's table entry) -> whether the run reads the field
    applies: Callable[[Any, str, spec.Method], bool]
    each: bool = False


def _integer(lo: int) -> tuple[str, Callable[[Any], bool]]:
    def ok(v):
        return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= lo

    return f"an integer >= {lo}", ok


def _number(lo: float, hi: float = math.inf, lo_open=False, hi_open=True):
    """A real number in the interval; NaN never passes (its comparisons are False)."""

    def ok(v):
        if not isinstance(v, numbers.Real) or isinstance(v, bool):
            return False
        return (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi)

    if hi == math.inf:
        return f"a number {'>' if lo_open else '>='} {lo}", ok
    left, right = "(" if lo_open else "[", ")" if hi_open else "]"
    return f"a number in {left}{lo}, {hi}{right}", ok


def _modes(*modes: str) -> Callable:
    return lambda config, mode, entry: mode in modes


def _train_if(condition: Callable[[Any], bool]) -> Callable:
    return lambda config, mode, entry: mode == "train" and condition(config)


def _owned_in_training(field: str) -> Callable:
    """Training a method whose own fields (its entry's DEFAULTS) include method.`field`."""
    return lambda config, mode, entry: mode == "train" and field in entry.defaults


def _consistency(config, mode: str, entry) -> bool:
    """The method samples with consistency samplers, which read the levels."""
    return mode in SAMPLING_MODES and entry.sampler is spec.CONSISTENCY_SAMPLERS


def _heun(config, mode: str, entry) -> bool:
    """The method samples with EDM's Heun sampler, which reads the sampling.heun/churn fields."""
    return mode in SAMPLING_MODES and entry.sampler is spec.HEUN_SAMPLERS


def _reads_eval(config, mode: str, entry=None) -> bool:
    """eval, lcsc (its fitness is an evaluation) and training with periodic evaluation."""
    return mode in ("eval", "lcsc") or (mode == "train" and _periodic_eval(config))


def _periodic_eval(config) -> bool:
    return config.eval.every != 0


def _rule(path, what, kind, applies, each=False) -> Rule:
    requirement, ok = kind
    return Rule(path, what, requirement, ok, applies, each)


TRAIN = _modes("train")
RULES = (
    _rule("training.batch_size", "the global training batch", _integer(1), TRAIN),
    _rule("training.num_steps", "the number of training steps", _integer(0), TRAIN),
    _rule("training.log_every", "the steps between loss logs", _integer(1), TRAIN),
    _rule("training.checkpoint_every", "the steps between checkpoints", _integer(1), TRAIN),
    _rule("training.keep_checkpoints", "the checkpoints kept", _integer(1), TRAIN),
    _rule("training.snapshot_every", "the steps between snapshots (0 = off)", _integer(0), TRAIN),
    _rule("training.sample_every", "the steps between grids (0 = off)", _integer(0), TRAIN),
    _rule("training.steps_per_run", "the steps per process (0 = all)", _integer(0), TRAIN),
    _rule(
        "training.grid_samples",
        "the samples per grid",
        _integer(1),
        _train_if(lambda c: c.training.sample_every != 0),
    ),
    _rule(
        "training.ema_rates",
        "each EMA decay rate",
        _number(0.0, 1.0),
        _modes(*SAMPLING_MODES),
        each=True,
    ),
    _rule("optim.learning_rate", "the learning rate", _number(0.0, lo_open=True), TRAIN),
    _rule("optim.b1", "Adam's b1", _number(0.0, 1.0), TRAIN),
    _rule("optim.b2", "Adam's b2", _number(0.0, 1.0), TRAIN),
    _rule("optim.eps", "Adam's eps", _number(0.0, lo_open=True), TRAIN),
    _rule("optim.weight_decay", "the weight decay", _number(0.0), TRAIN),
    _rule("optim.warmup_steps", "the warmup steps", _integer(0), TRAIN),
    _rule("optim.grad_clip", "the gradient clipping norm (0 = off)", _number(0.0), TRAIN),
    _rule(
        "method.sigma_min",
        "the smallest noise level",
        _number(0.0, lo_open=True),
        _modes(*SAMPLING_MODES),
    ),
    _rule(
        "method.rho", "the Karras grid's rho", _number(0.0, lo_open=True), _modes(*SAMPLING_MODES)
    ),
    _rule(
        "method.sigma_data",
        "the data standard deviation",
        _number(0.0, lo_open=True),
        _modes(*SAMPLING_MODES),
    ),
    _rule("method.p_std", "the noise-level law's std", _number(0.0, lo_open=True), TRAIN),
    _rule("method.s0", "the curriculum's first N - 1", _integer(1), _owned_in_training("s0")),
    _rule(
        "method.huber_c_factor",
        "the distance's c factor",
        _number(0.0, lo_open=True),
        _train_if(lambda c: c.method.distance in losses.TAKES_C),
    ),
    _rule(
        "method.diffusion_weight",
        "the diffusion loss weight",
        _number(0.0),
        _owned_in_training("diffusion_weight"),
    ),
    _rule(
        "method.diffusion_quantile",
        "the diffusion loss's share of the grid",
        _number(0.0, 1.0, lo_open=True, hi_open=False),
        _owned_in_training("diffusion_quantile"),
    ),
    _rule(
        "method.ot_prefetch",
        "the coupled batches computed ahead",
        _integer(1),
        _train_if(lambda c: bool(c.method.ot_coupling)),
    ),
    _rule("sampling.num_samples", "the samples to draw", _integer(1), _modes("sample")),
    _rule(
        "sampling.batch_size",
        "the samples per sampler call",
        _integer(1),
        lambda c, mode, entry: mode == "sample" or _reads_eval(c, mode),
    ),
    _rule("sampling.heun_steps", "the Heun steps", _integer(1), _heun),
    _rule("sampling.churn", "the Heun churn", _number(0.0), _heun),
    _rule("sampling.s_tmin", "the Heun churn's lowest level", _number(0.0), _heun),
    _rule("sampling.s_noise", "the Heun churn's noise scale", _number(0.0), _heun),
    _rule("eval.num_samples", "the samples per sampler", _integer(1), _modes("eval")),
    _rule(
        "eval.batch_size",
        "the Inception batch",
        _integer(1),
        lambda c, mode, entry: mode == "fid_stats" or _reads_eval(c, mode),
    ),
    _rule("eval.is_splits", "the Inception Score splits", _integer(1), _reads_eval),
    _rule("eval.pr_k", "the precision/recall neighbour", _integer(1), _reads_eval),
    _rule(
        "eval.pr_samples",
        "the precision/recall features (0 = off)",
        _integer(0),
        lambda c, mode, entry: mode == "fid_stats" or _reads_eval(c, mode),
    ),
    _rule("eval.sqrtm_eps", "the covariance jitter", _number(0.0), _reads_eval),
    _rule("eval.grid_samples", "the samples per grid", _integer(1), _modes("eval")),
    _rule("eval.every", "the steps between evaluations (0 = off)", _integer(0), TRAIN),
    _rule(
        "eval.train_num_samples",
        "the samples per periodic evaluation",
        _integer(1),
        _train_if(_periodic_eval),
    ),
    _rule("model.channels", "the network width", _integer(1), _modes("summary", *SAMPLING_MODES)),
    _rule(
        "model.num_groups", "the GroupNorm groups", _integer(1), _modes("summary", *SAMPLING_MODES)
    ),
    _rule(
        "model.dropout", "the dropout rate", _number(0.0, 1.0), _modes("summary", *SAMPLING_MODES)
    ),
)


def _get(config, path: str):
    for key in path.split("."):
        config = config[key]
    return config


def _check_rule(rule: Rule, config):
    value = _get(config, rule.path)
    if rule.each:
        if not isinstance(value, tuple | list):
            invalid(
                rule.path, value, f"it must be a tuple in which {rule.what} is {rule.requirement}"
            )
        if not all(rule.ok(v) for v in value):
            fix = f"--config.{rule.path} to such values"
            invalid(rule.path, value, f"{rule.what} must be {rule.requirement}", fix)
    elif not rule.ok(value):
        invalid(rule.path, value, f"{rule.what} must be {rule.requirement}")


def _check_noise_range(config, mode: str, entry):
    """sigma_max > sigma_min, and the iCT curriculum's s1 >= s0 (log2(s1 / s0) must exist)."""
    m = config.method
    if mode in SAMPLING_MODES and not m.sigma_max > m.sigma_min:
        invalid(
            "method.sigma_max",
            m.sigma_max,
            f"it must exceed method.sigma_min={m.sigma_min!r}",
            "--config.method.sigma_max to a larger number",
        )
    if mode == "train" and "s1" in entry.defaults and not m.s1 >= m.s0:
        invalid("method.s1", m.s1, f"it must be at least method.s0={m.s0!r}")


def _check_levels(config):
    """Each entry of sampling.consistency_levels is one sampler: the levels after the first
    step, strictly decreasing within [sigma_min, sigma_max] (below sigma_min the re-noising
    sqrt(t^2 - sigma_min^2) does not exist); samplers are named by step count, so the entries
    need distinct lengths."""
    path, all_levels = "sampling.consistency_levels", config.sampling.consistency_levels
    lo, hi = config.method.sigma_min, config.method.sigma_max

    def fail(reason, fix="valid levels"):
        invalid(path, all_levels, reason, f"{fix}, e.g. --config.{path}={LEVELS_EXAMPLE}")

    if not isinstance(all_levels, tuple | list) or not all_levels:
        fail("it must be a non-empty tuple of samplers, each a tuple of noise levels")
    for levels in all_levels:
        if not isinstance(levels, tuple | list) or not all(
            isinstance(t, numbers.Real) and not isinstance(t, bool) for t in levels
        ):
            fail(f"the entry {levels!r} is not a tuple of noise levels")
        outside = [t for t in levels if not lo <= t <= hi]
        if outside:
            fail(
                f"the level {outside[0]!r} is outside [method.sigma_min, method.sigma_max] = "
                f"[{lo!r}, {hi!r}]"
            )
        if any(a <= b for a, b in zip(levels, levels[1:], strict=False)):
            fail(f"the levels {tuple(levels)!r} are not strictly decreasing")
    lengths = [len(levels) for levels in all_levels]
    repeated = [n for n in lengths if lengths.count(n) > 1]
    if repeated:
        fail(
            f"two samplers have {repeated[0]} level(s) and would share the name "
            f"'{repeated[0] + 1}step'",
            "a different number of levels per sampler",
        )


def _check_sampling_choices(config, mode: str, entry):
    s = config.sampling
    if s.params not in SAMPLING_PARAMS:
        invalid("sampling.params", s.params, f"it must be one of {list(SAMPLING_PARAMS)}")
    if _heun(config, mode, entry) and not s.s_tmax >= s.s_tmin:
        invalid("sampling.s_tmax", s.s_tmax, f"it must be at least sampling.s_tmin={s.s_tmin!r}")


# The sample count an evaluation scores, per mode (lcsc's counts are lcsc/run.py's).
EVAL_COUNT = {"eval": "eval.num_samples", "train": "eval.train_num_samples"}


def _check_eval(config, mode: str):
    """eval.metrics names known metrics; the Inception Score needs a sample per split."""
    names = evaluator.metric_names(config)  # raises its own sentence for an unknown name
    splits, count = config.eval.is_splits, EVAL_COUNT.get(mode)
    if "inception" in names and count and _get(config, count) < splits:
        reason = f"the Inception Score needs at least eval.is_splits={splits} samples"
        invalid(count, _get(config, count), reason, f"--config.{count} to at least {splits}")


def _check_method(config, mode: str, entry):
    """The method's own fields (its entry's check), method.init_from where it is required, and
    a network distance (LPIPS) only for a method that carries its frozen weights."""
    if losses.is_network_distance(config.method.distance) and not entry.network_distance:
        carriers = methods.network_distance_carriers()
        invalid(
            "method.distance",
            config.method.distance,
            f"it runs a frozen network that only method.name in {carriers} carries",
            f"--config.method.distance to one of {sorted(losses.DISTANCES)} (or "
            f"--config.method.name={carriers[0]})",
        )
    if entry.check is not None:
        entry.check(config, mode)
    if mode == "train" and entry.requires_init_from and not config.method.init_from:
        invalid(
            "method.init_from",
            config.method.init_from,
            f"method.name={config.method.name!r} starts from a trained diffusion model",
            "--config.method.init_from to the workdir of an EDM run (or --mode=import's output)",
        )


def check(config, mode: str) -> None:
    """Raises ValueError, one sentence naming the field, its value and the fix, for the first
    config value that `mode` reads and cannot work with; returns None when all are usable."""
    entry = methods.get(config.method.name)  # an unknown method: one sentence naming the valid
    for rule in RULES:
        if rule.applies(config, mode, entry):
            _check_rule(rule, config)
    _check_noise_range(config, mode, entry)
    _check_method(config, mode, entry)
    if _consistency(config, mode, entry):
        _check_levels(config)
    if mode in SAMPLING_MODES:
        _check_sampling_choices(config, mode, entry)
    if _reads_eval(config, mode):
        _check_eval(config, mode)
