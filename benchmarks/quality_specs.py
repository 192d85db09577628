"""What `python -m benchmarks.quality` runs: named runs, seeds, and the launch.py arguments.

A run is `name=config_path[:arg] [--config.a.b=value ...]`: a config file and its own
overrides. Every (run, seed) trains and is evaluated in its own workdir
`<workdir_root>/<name>/seed<k>` by launch.py, with the training seed `config.seed = k`.
Pure functions: no file is touched here.
"""

import dataclasses
import os
import re
import shlex

from absl import flags
from ml_collections import config_flags

# Fields the tool sets itself, so a run or shared override must not set them.
OWNED_FIELDS = {
    "seed": "--seeds",
    "eval.num_samples": "--eval_samples",
    "eval.metrics": "the tool (always the digits metric)",
}
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One named configuration to measure: a config file (with its :arg) and its overrides."""

    name: str
    config: str  # "configs/demo.py" or "configs/demo_slct.py:no_ot"
    overrides: tuple[str, ...] = ()  # "--config.a.b=value", applied after the shared ones


def default_name(config: str) -> str:
    """'configs/demo_slct.py:no_ot' -> 'demo_slct_no_ot'; 'configs/demo.py' -> 'demo'."""
    path, _, arg = config.partition(":")
    stem = os.path.splitext(os.path.basename(path))[0]
    return f"{stem}_{arg.replace(',', '_')}" if arg else stem


def check_overrides(overrides, where: str) -> tuple[str, ...]:
    """The overrides as a tuple, each '--config.<field>=<value>', none of OWNED_FIELDS."""
    for item in overrides:
        match = re.fullmatch(r"--config\.([\w.]+)=(.*)", item, re.S)
        if not match:
            raise ValueError(
                f"{where}: {item!r} is not a config override; write each as "
                "--config.<field>=<value> (with '=', e.g. --config.training.num_steps=2000)."
            )
        if match[1] in OWNED_FIELDS:
            raise ValueError(
                f"{where}: {item!r} sets a field the tool owns; set it with "
                f"{OWNED_FIELDS[match[1]]} instead."
            )
    return tuple(overrides)


def parse_run(text: str) -> RunSpec:
    """'name=configs/demo.py --config.method.s1=160' -> RunSpec; without 'name=' the name is
    default_name(config)."""
    tokens = shlex.split(text)
    if not tokens or tokens[0].startswith("-"):
        raise ValueError(
            f"--run {text!r} has no config; write --run 'NAME=CONFIG_PATH[:ARG] "
            "[--config.FIELD=VALUE ...]', e.g. --run 'ict=configs/demo.py'."
        )
    name, eq, config = tokens[0].partition("=")
    if not eq:
        name, config = default_name(tokens[0]), tokens[0]
    if not config:
        raise ValueError(
            f"--run {text!r} names no config file after '='; e.g. {name}=configs/demo.py."
        )
    return RunSpec(check_name(name), config, check_overrides(tokens[1:], f"--run {name}"))


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"Run name {name!r} is not a plain folder name; use letters, digits, '_', '-', '.'."
        )
    return name


def check_unique(runs) -> list[RunSpec]:
    """The runs, refused when two share a name (they would share workdirs)."""
    names = [r.name for r in runs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(
            f"Runs {twice} are given more than once; give each its own name, "
            "e.g. --run 'ict_s1_160=configs/demo.py --config.method.s1=160'."
        )
    if not runs:
        raise ValueError("No run given; pass --config=configs/demo.py or --run 'NAME=CONFIG'.")
    return list(runs)


def parse_seeds(text: str) -> tuple[int, ...]:
    """'3' -> (0, 1, 2) (a count); '0,1,2' or '7,' -> those seeds (a list)."""
    try:
        if "," not in text:
            count = int(text)
            if count < 1:
                raise ValueError
            return tuple(range(count))
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        seeds = ()
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ValueError(
            f"--seeds={text} is neither a count >= 1 nor a list of distinct seeds >= 0; "
            "e.g. --seeds=3 (seeds 0, 1, 2) or --seeds=0,1,2."
        )
    return seeds


def workdir(root: str, run: RunSpec, seed: int) -> str:
    return f"{root.rstrip('/')}/{run.name}/seed{seed}"


SEED_FIELD = "{seed}"  # replaced by the seed in every --config flag (config_args)


def config_args(run: RunSpec, shared, seed: int) -> list[str]:
    """launch.py's --config flags of (run, seed): the file, shared, then the run's overrides,
    then the seed. These define the training; the record in the workdir compares them.

    `{seed}` in a flag becomes the seed, so each seed of a run can start from the same seed of
    another (e.g. --config.method.init_from=runs/quality/edm/seed{seed})."""
    flags_ = [*shared, *run.overrides]
    flags_ = [flag.replace(SEED_FIELD, str(seed)) for flag in flags_]
    return [f"--config={run.config}", *flags_, f"--config.seed={seed}"]


def train_args(run: RunSpec, shared, seed: int, workdir_: str) -> list[str]:
    return [*config_args(run, shared, seed), f"--workdir={workdir_}"]


def eval_args(run: RunSpec, shared, seed: int, workdir_: str, eval_samples: int) -> list[str]:
    return [
        *train_args(run, shared, seed, workdir_),
        "--mode=eval",
        "--config.eval.metrics=digits",
        f"--config.eval.num_samples={eval_samples}",
    ]


def load_config(args, where: str):
    """The ConfigDict that launch.py builds from these --config flags (same parser), so
    settings are known and bad flags are caught before anything trains."""
    argv = ["quality", *args]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config", flag_values=values, sys_argv=argv)
    try:
        values(argv)
        config = values["config"].value
        config.keys()  # a config file that failed to load raises on first use
    except (AttributeError, KeyError) as e:
        field = str(e.args[0] if e.args else e).strip("'\"")
        raise ValueError(
            f"{where}: unknown config field {field!r} in a --config.* flag; configs/common.py "
            "lists every field."
        ) from None
    except (flags.Error, OSError) as e:
        lines = [s.strip() for s in str(e).splitlines() if s.strip()]
        raise ValueError(
            f"{where}: its --config flags do not load ({lines[-1] if lines else e}); fix them "
            "(python launch.py --mode=summary with the same flags says more)."
        ) from None
    return config


def flag_difference(old, new) -> str:
    """'only before: A; only now: B' for two lists of flags (order kept)."""
    parts = [
        f"{label}: {' '.join(x for x in a if x not in b) or 'none'}"
        for label, a, b in (("only before", old, new), ("only now", new, old))
    ]
    return "; ".join(parts)
