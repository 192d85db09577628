"""The quality table of `python -m benchmarks.quality`: mean ± sample std over seeds.

Input: per run, per seed, the dict of `eval/metrics_step<k>.json` (keys '<sampler>/<metric>'
and the real-data floor 'real_test/<metric>') and the wall times. Output: rows (run x sampler)
and a markdown table. Pure functions: no file is touched here.
"""

import math
import re

import numpy as np

REFERENCE = "real_test"  # the digits metric's held-out real digits (cm/evaluation/digits_metric.py)
# (metric key in the eval JSON, column title, decimals); the reference's digits_fd is at the
# test split's size, so it sits in the matched column.
COLUMNS = (
    ("digits_fd", "FD ({n})", 2),
    ("digits_fd_matched", "FD ({m}, matched)", 2),
    ("digits_accuracy", "accuracy", 3),
)
REFERENCE_COLUMNS = {"digits_fd": "digits_fd_matched", "digits_accuracy": "digits_accuracy"}
DIGITS_TEST_SIZE = 297  # digits "test" split: images 1500..1796 (README, Data)


def mean_std(values) -> tuple[float, float]:
    """(mean, sample std with ddof=1) of the values; std is nan for fewer than 2 values."""
    x = np.asarray(list(values), np.float64)
    if x.size == 0:
        return math.nan, math.nan
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else math.nan


def format_mean_std(mean: float, std: float, decimals: int) -> str:
    """'35.35 ± 5.60'; the mean alone when std is nan (one seed); '' when there is no value."""
    if math.isnan(mean):
        return ""
    if math.isnan(std):
        return f"{mean:.{decimals}f}"
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def sampler_order(name: str):
    """1step < 2step < ... < heun18 < other names: by kind, then by the number in the name."""
    match = re.fullmatch(r"(\d+)step", name)
    if match:
        return (0, int(match[1]), name)
    match = re.fullmatch(r"heun(\d+)", name)
    return (1, int(match[1]), name) if match else (2, 0, name)


def split_metrics(results: dict) -> dict[str, dict[str, float]]:
    """Eval JSON -> {sampler or 'real_test': {metric: value}} (keys '<sampler>/<metric>')."""
    out: dict[str, dict[str, float]] = {}
    for key, value in results.items():
        if "/" in key:
            group, metric = key.split("/", 1)
            out.setdefault(group, {})[metric] = float(value)
    return out


def aggregate(runs: dict) -> list[dict]:
    """Rows of the table from {run: {seed: {'metrics': eval JSON, 'train_seconds': float,
    'eval_seconds': float}}}: the real-digits floor first, then the runs in the given order,
    samplers in sampler_order.

    Row: {'run', 'sampler', 'seeds': [k...], 'n': len(seeds), '<metric>': {'mean', 'std',
    'values'} for each metric present, 'train_seconds', 'eval_seconds': means over seeds}.
    The floor's row has run 'real_test' and sampler ''.
    """
    rows, reference = [], {}
    for run, seeds in runs.items():
        per_seed = {seed: split_metrics(r["metrics"]) for seed, r in sorted(seeds.items())}
        for groups in per_seed.values():
            for metric, value in groups.get(REFERENCE, {}).items():
                reference.setdefault(metric, []).append(value)
        samplers = {s for groups in per_seed.values() for s in groups if s != REFERENCE}
        times = {
            key: mean_std(r[key] for r in seeds.values())[0]
            for key in ("train_seconds", "eval_seconds")
        }
        for sampler in sorted(samplers, key=sampler_order):
            having = {seed: g[sampler] for seed, g in per_seed.items() if sampler in g}
            row = {"run": run, "sampler": sampler, "seeds": list(having), "n": len(having)}
            rows.append({**row, **_statistics(having.values()), **times})
    if reference:
        floor = _statistics({m: v} for m, values in reference.items() for v in values)
        for entry in floor.values():  # the same real digits every time: a constant, no spread
            if len(set(entry["values"])) == 1:
                entry["std"] = math.nan
        rows.insert(0, {"run": REFERENCE, "sampler": "", "seeds": [], "n": 0, **floor})
    return rows


def _statistics(metric_dicts) -> dict:
    """{metric: {'mean', 'std', 'values'}} over dicts {metric: value} (a metric may be
    missing from some of them)."""
    values: dict[str, list[float]] = {}
    for metrics in metric_dicts:
        for metric, value in metrics.items():
            values.setdefault(metric, []).append(value)
    out = {}
    for metric in sorted(values):
        mean, std = mean_std(values[metric])
        out[metric] = {"mean": mean, "std": std, "values": values[metric]}
    return out


def _cell(row: dict, metric: str, decimals: int) -> str:
    entry = row.get(metric)
    return format_mean_std(entry["mean"], entry["std"], decimals) if entry else ""


def _seconds(value) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.0f}"


def markdown(rows: list[dict], eval_samples: int) -> str:
    """The table: one line per run x sampler, the real-digits floor first."""
    matched = min(eval_samples, DIGITS_TEST_SIZE)
    titles = [title.format(n=eval_samples, m=matched) for _, title, _ in COLUMNS]
    header = ["run", "sampler", "seeds", *titles, "train s", "eval s"]
    lines = ["| " + " | ".join(header) + " |", "|---|---|---:|" + "---:|" * (len(header) - 3)]
    for row in rows:
        if row["run"] == REFERENCE:
            cells = ["real held-out digits (test split)", "", ""]
            by_column = {v: k for k, v in REFERENCE_COLUMNS.items()}
            cells += [_cell(row, by_column.get(key, ""), d) for key, _, d in COLUMNS]
            cells += ["", ""]
        else:
            cells = [row["run"], row["sampler"], str(row["n"])]
            cells += [_cell(row, key, d) for key, _, d in COLUMNS]
            cells += [_seconds(row.get("train_seconds")), _seconds(row.get("eval_seconds"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def protocol(eval_samples: int, seeds) -> str:
    """The sentence that says what the numbers are, printed above the table."""
    few = len(seeds) < 3
    matched = min(eval_samples, DIGITS_TEST_SIZE)
    return (
        f"Digits metric (cm/evaluation/digits_metric.py) on {eval_samples} samples per sampler "
        "of the final checkpoint (sampling.params: EMA by default); mean ± sample std "
        f"(ddof=1) over training seeds {', '.join(map(str, seeds))} (config.seed; "
        "sampling.seed is the config's, the same for every run). "
        f"FD ({matched}, matched) uses the first {matched} samples "
        f"(the held-out test split of the first row has {DIGITS_TEST_SIZE}). "
        "Wall times: mean seconds per seed on this machine."
        + (" Fewer than 3 seeds: not a quality measurement (BENCHMARKS.md)." if few else "")
    )
