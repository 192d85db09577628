"""Training-step and sampler speed of several commits, measured side by side in one run.

    python -m benchmarks.commit_speed --commits=50b459c,HEAD --rounds=3
    python -m benchmarks.commit_speed --commits=HEAD~5,HEAD~1,HEAD \
        --overrides=--config.model.channels=128,--config.model.num_blocks=4,--config.training.batch_size=8

Each commit is exported (`git archive`) to a temporary folder and runs ITS OWN
benchmarks/train_throughput.py on the same config (default: cifar10_ict's NCSN++ shrunk to 32
channels and 2 blocks, batch 32, dropout 0, 5 timed steps) with this Python. The runs are
interleaved (commit A, B, ..., then A, B, ... again for --rounds rounds), so a change of the
machine's load falls on every commit alike; each cell is the median over rounds, and the
spread (max - min) says how much to trust a difference. The tool of a bisection: a regression
is a difference larger than the spread. Needs a git checkout.
"""

import os
import re
import statistics
import subprocess
import sys
import tempfile

from absl import app, flags

from benchmarks import perf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_NCSNPP = (
    "--config.model.channels=32",
    "--config.model.num_blocks=2",
    "--config.model.dropout=0.0",
    "--config.training.batch_size=32",
)
_COMMITS = flags.DEFINE_list("commits", ["HEAD"], "Commits (anything git rev-parse takes).")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Interleaved rounds (runs per commit).")
_CONFIG = flags.DEFINE_string("config", "configs/cifar10_ict.py", "Config file (per commit).")
_OVERRIDES = flags.DEFINE_list("overrides", list(SMALL_NCSNPP), "Config flags of every run.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed training steps per run.")
# The lines of train_throughput.py's table read here (the same in every commit since 50b459c).
READ = {"step_s": r"train step \(s\)\s+([\d.]+)", "sample": r"sampler 1step images/s\s+([\d.]+)"}


def export(commit: str, folder: str) -> str:
    """`commit`'s tree under folder/<sha>; its full sha."""
    sha = subprocess.check_output(["git", "rev-parse", commit], cwd=ROOT, text=True).strip()
    path = os.path.join(folder, sha[:10])
    os.makedirs(path)
    archive = subprocess.Popen(["git", "archive", sha], cwd=ROOT, stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", path], stdin=archive.stdout, check=True)
    archive.wait()
    return path


def measure(path: str) -> dict:
    """One run of the commit's train_throughput.py: seconds per step, sampler images/s."""
    cmd = [sys.executable, "benchmarks/train_throughput.py", f"--config={_CONFIG.value}"]
    cmd += [*_OVERRIDES.value, f"--steps={_STEPS.value}"]
    env = dict(os.environ, PYTHONPATH=path)
    proc = subprocess.run(cmd, cwd=path, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{path}: train_throughput failed:\n{proc.stderr[-2000:]}")
    found = {k: re.search(p, proc.stdout) for k, p in READ.items()}
    return {k: float(m.group(1)) for k, m in found.items() if m}


def summary(runs: list[dict], key: str, fmt: str) -> str:
    values = [r[key] for r in runs if key in r]
    if not values:
        return "n/a"
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def main(argv):
    del argv
    with tempfile.TemporaryDirectory(prefix="commit_speed_") as folder:
        paths = {c: export(c, folder) for c in _COMMITS.value}
        runs = {c: [] for c in paths}
        for r in range(_ROUNDS.value):
            for commit, path in paths.items():
                runs[commit].append(measure(path) | {"load": os.getloadavg()[0]})
                print(f"round {r + 1}: {commit} {runs[commit][-1]}", file=sys.stderr, flush=True)
    rows = [
        {
            "commit": commit,
            "train step s, median (range)": summary(results, "step_s", ".3f"),
            "1-step sampler images/s": summary(results, "sample", ".1f"),
            "load average": summary(results, "load", ".1f"),
        }
        for commit, results in runs.items()
    ]
    print(f"config {_CONFIG.value} {' '.join(_OVERRIDES.value)}; {_ROUNDS.value} rounds")
    print(perf.format_table(rows))


if __name__ == "__main__":
    app.run(main)
