"""Sample quality over seeds: train runs on N seeds, score them with the digits metric, and
print one table of mean ± sample std per run and sampler.

    python -m benchmarks.quality --config=configs/demo.py --seeds=3
    python -m benchmarks.quality --seeds=3 --eval_samples=10000 \\
        --run 'ict=configs/demo.py' --run 'ict_s1_160=configs/demo.py --config.method.s1=160'
    python -m benchmarks.quality --config=configs/demo.py --config.training.num_steps=2000
    python -m benchmarks.quality --config=configs/demo.py --report_only   # table of what is done

Each (run, seed) is one workdir, <workdir_root>/<name>/seed<k>, trained by a fresh
`launch.py` process (the command users run, with --config.seed=k) and then scored by
`launch.py --mode=eval` with the digits metric on --eval_samples samples per sampler; the
numbers come from its eval/metrics_step<k>.json. Jobs run one at a time, seed by seed (all
runs of seed 0 first, so a partial table already compares the runs). `--config.*` flags given
to the tool apply to every run, before each run's own overrides. `{seed}` in any flag becomes
the seed, so a run can start each seed from the same seed of another run:
`--run 'ect=configs/demo.py --config.method.name=ect
--config.method.init_from=runs/quality/edm/seed{seed}'`.

Resuming: run the same command again. A (run, seed) whose metrics file for the final step
exists with as many samples is neither trained nor evaluated again; an unfinished training
resumes from its checkpoint (launch.py's exact resume). Each workdir's quality_run.json keeps
the run's --config flags (a rerun with other flags for the same name is refused) and the wall
times of the training and evaluation processes that finished.

Writes <workdir_root>/quality.md (the command, the protocol and the table, for BENCHMARKS.md)
and quality.json (every value per seed).
"""

import argparse
import math
import os
import shlex
import subprocess
import sys
import time

from benchmarks import quality_specs as specs
from benchmarks import quality_table as table
from cm.io import fileio

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch.py")
RECORD = "quality_run.json"
# 10k samples keep EDM's Heun sampler (35 network calls per sample) at minutes on a CPU; the
# distance is biased upwards at small N, so compare only tables with the same --eval_samples.
DEFAULT_EVAL_SAMPLES = 10_000


def parse_args(argv):
    """(options, runs, shared overrides) from the command line; every error is one sentence."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.quality",
        allow_abbrev=False,
        description="Mean ± std of the digits metric over seeds; --config.FIELD=VALUE flags "
        "apply to every run.",
    )
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        help="config file[:arg]; repeatable; its run "
        "is named after the file (configs/demo.py -> demo).",
    )
    parser.add_argument(
        "--run",
        action="append",
        default=[],
        help="'NAME=CONFIG[:ARG] [--config.F=V ...]', "
        "a named run with its own overrides; repeatable.",
    )
    parser.add_argument("--seeds", default="3", help="a count (3 = seeds 0,1,2) or a list (0,1,2)")
    parser.add_argument("--workdir_root", default="runs/quality", help="<root>/<name>/seed<k>")
    parser.add_argument(
        "--eval_samples", type=int, default=DEFAULT_EVAL_SAMPLES, help="samples per sampler"
    )
    parser.add_argument(
        "--report_only", action="store_true", help="train nothing; the table of finished jobs"
    )
    options, rest = parser.parse_known_args(argv)
    shared = specs.check_overrides(rest, "shared flags")
    runs = [specs.RunSpec(specs.check_name(specs.default_name(c)), c) for c in options.config]
    runs = specs.check_unique([*runs, *map(specs.parse_run, options.run)])
    if options.eval_samples < 1:
        raise ValueError(f"--eval_samples={options.eval_samples} must be >= 1, e.g. 10000.")
    return options, runs, shared


def final_step(run, shared) -> int:
    """training.num_steps of the run as launch.py will load it; refuses what the tool cannot
    measure (other data than the digits, a training cut into several starts)."""
    config = specs.load_config(specs.config_args(run, shared, 0), f"Run {run.name}")
    if config.data.name != "digits":
        raise ValueError(
            f"Run {run.name} trains on data.name={config.data.name!r}; the quality tool scores "
            "with the digits metric, so use a config on the digits (e.g. configs/demo.py)."
        )
    if config.training.steps_per_run:
        raise ValueError(
            f"Run {run.name} sets training.steps_per_run={config.training.steps_per_run}; the "
            "tool trains each run to the end, so drop that override."
        )
    return int(config.training.num_steps)


def metrics_path(workdir: str, step: int) -> str:
    return str(fileio.path(workdir) / "eval" / f"metrics_step{step:08d}.json")


def finished_metrics(workdir: str, step: int, eval_samples: int):
    """The eval JSON of the final step when it holds eval_samples samples per sampler, else None."""
    path = metrics_path(workdir, step)
    if not fileio.exists(path):
        return None
    metrics = fileio.read_json(path)
    return metrics if metrics.get("num_samples") == eval_samples else None


def read_record(workdir: str, config_args) -> dict:
    """The workdir's quality_run.json ({} when new); refused when made with other flags."""
    path = fileio.path(workdir) / RECORD
    if not fileio.exists(path):
        return {}
    record = fileio.read_json(path)
    if record.get("config_args") != list(config_args):
        difference = specs.flag_difference(record.get("config_args", []), config_args)
        raise ValueError(
            f"{workdir} was trained with other flags ({difference}); give this run another "
            "name or --workdir_root."
        )
    return record


def write_record(workdir: str, record: dict):
    fileio.write_json_atomic(fileio.path(workdir) / RECORD, record)


def launch(args, what: str) -> float:
    """Runs launch.py with args in a fresh process (its output goes to ours); wall seconds."""
    start = time.monotonic()
    code = subprocess.run([sys.executable, LAUNCH, *args], check=False).returncode
    if code:
        raise ValueError(
            f"The {what} failed (launch.py exit code {code}, its output is above); fix the "
            "cause and run the same command again to continue."
        )
    return time.monotonic() - start


def run_job(run, shared, seed: int, root: str, step: int, eval_samples: int) -> dict:
    """Trains and evaluates (run, seed) unless done; {'metrics', 'train_seconds',
    'eval_seconds'} (seconds nan when no process of this tool measured them)."""
    workdir = specs.workdir(root, run, seed)
    config_args = specs.config_args(run, shared, seed)
    record = read_record(workdir, config_args)
    metrics = finished_metrics(workdir, step, eval_samples)
    label = f"run {run.name} seed {seed}"
    if metrics is not None:
        _say(f"{label}: done ({metrics_path(workdir, step)}), not trained again")
    else:
        trained = record.get("trained") or fileio.exists(metrics_path(workdir, step))
        record = {"config_args": config_args, **record}
        if not trained:
            _say(f"{label}: training in {workdir}")
            write_record(workdir, {**record, "trained": False})  # flags kept before training
            seconds = launch(specs.train_args(run, shared, seed, workdir), f"training of {label}")
            record.update(trained=True, train_seconds=record.get("train_seconds", 0.0) + seconds)
            write_record(workdir, record)
        _say(f"{label}: digits metric on {eval_samples} samples per sampler")
        args = specs.eval_args(run, shared, seed, workdir, eval_samples)
        record["eval_seconds"] = launch(args, f"evaluation of {label}")
        write_record(workdir, record)
        metrics = finished_metrics(workdir, step, eval_samples)
        if metrics is None:
            raise ValueError(
                f"The evaluation of {label} wrote no metrics for step {step} in {workdir}; its "
                "newest checkpoint is not the final step, so run the same command again."
            )
    return {
        "metrics": metrics,
        "train_seconds": record.get("train_seconds", math.nan),
        "eval_seconds": record.get("eval_seconds", math.nan),
    }


def collect(runs, shared, seeds, options, steps: dict) -> dict:
    """{run name: {seed: job result}}, jobs seed-major; with --report_only only finished jobs."""
    results = {run.name: {} for run in runs}
    for seed in seeds:
        for run in runs:
            if options.report_only:
                workdir = specs.workdir(options.workdir_root, run, seed)
                metrics = finished_metrics(workdir, steps[run.name], options.eval_samples)
                if metrics is None:
                    continue
                record = read_record(workdir, specs.config_args(run, shared, seed))
                results[run.name][seed] = {
                    "metrics": metrics,
                    "train_seconds": record.get("train_seconds", math.nan),
                    "eval_seconds": record.get("eval_seconds", math.nan),
                }
            else:
                results[run.name][seed] = run_job(
                    run, shared, seed, options.workdir_root, steps[run.name], options.eval_samples
                )
    return {name: jobs for name, jobs in results.items() if jobs}


def report(results: dict, runs, shared, seeds, options, command: str) -> str:
    """Prints the table and writes quality.md / quality.json in the workdir root."""
    rows = table.aggregate(results)
    text = "\n\n".join(
        [
            f"    {command}",
            table.protocol(options.eval_samples, seeds),
            table.markdown(rows, options.eval_samples),
        ]
    )
    root = fileio.path(options.workdir_root)
    fileio.write_text_atomic(root / "quality.md", text + "\n")
    summary = {
        "command": command,
        "eval_samples": options.eval_samples,
        "seeds": list(seeds),
        "std": "sample standard deviation over seeds (ddof=1)",
        "runs": {r.name: {"config": r.config, "overrides": [*shared, *r.overrides]} for r in runs},
        "rows": rows,
        "per_seed": {name: {str(k): v for k, v in jobs.items()} for name, jobs in results.items()},
    }
    fileio.write_json_atomic(root / "quality.json", _finite_or_none(summary))
    print(text)
    print(f"\nWrote {root / 'quality.md'} and {root / 'quality.json'}")
    return text


def main(argv) -> str:
    options, runs, shared = parse_args(argv)
    seeds = specs.parse_seeds(options.seeds)
    steps = {run.name: final_step(run, shared) for run in runs}  # every run's flags checked first
    command = shlex.join(["python", "-m", "benchmarks.quality", *argv])
    results = collect(runs, shared, seeds, options, steps)
    if not results:
        raise ValueError(
            f"No (run, seed) under {options.workdir_root} is finished with --eval_samples="
            f"{options.eval_samples}; run the command without --report_only first."
        )
    return report(results, runs, shared, seeds, options, command)


def _finite_or_none(value):
    """The summary with nan replaced by None (JSON has no NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_none(v) for v in value]
    return value


def _say(text: str):
    print(f"[quality] {text}", flush=True)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ValueError, FileNotFoundError) as e:
        if os.environ.get("CM_TRACEBACK"):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
