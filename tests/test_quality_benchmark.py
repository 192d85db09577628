"""python -m benchmarks.quality: run specs, seeds, mean ± sample std, the table, and one tiny
end-to-end run that is resumed without training again."""

import json
import math
import os
import subprocess
import sys

import pytest

from benchmarks import quality, quality_specs, quality_table, tiny
from cm.io import fileio
from tests.helpers import ROOT, subprocess_env

# ---------------------------------------------------------------- mean ± std and the table


def test_mean_std_is_the_sample_std():
    # 1, 2, 3, 4: mean 2.5; squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5; / (4 - 1) = 5/3.
    mean, std = quality_table.mean_std([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert std == pytest.approx(math.sqrt(5 / 3), rel=1e-12)
    mean, std = quality_table.mean_std([7.0])
    assert mean == 7.0 and math.isnan(std)  # one seed has no spread
    assert all(math.isnan(v) for v in quality_table.mean_std([]))


def test_format_mean_std():
    assert quality_table.format_mean_std(35.354, 5.6, 2) == "35.35 ± 5.60"
    assert quality_table.format_mean_std(0.6, 0.1, 3) == "0.600 ± 0.100"
    assert quality_table.format_mean_std(35.354, math.nan, 2) == "35.35"
    assert quality_table.format_mean_std(math.nan, math.nan, 2) == ""


def test_sampler_order():
    names = ["heun18", "x", "2step", "10step", "1step", "heun5"]
    assert sorted(names, key=quality_table.sampler_order) == [
        "1step",
        "2step",
        "10step",
        "heun5",
        "heun18",
        "x",
    ]


def _eval_json(fd1, acc1, fd2=None):
    """An eval/metrics_step<k>.json as cm/evaluation/run.py writes it for the digits metric."""
    out = {
        "step": 3000,
        "num_samples": 10000,
        "real_test/digits_fd": 17.35,
        "real_test/digits_accuracy": 0.936,
        "1step/digits_fd": fd1,
        "1step/digits_fd_matched": fd1 + 3.0,
        "1step/digits_accuracy": acc1,
    }
    if fd2 is not None:
        out.update({"2step/digits_fd": fd2, "2step/digits_fd_matched": fd2 + 5.0})
        out["2step/digits_accuracy"] = acc1 + 0.1
    return out


def _results():
    job = lambda metrics, train, ev: {
        "metrics": metrics,
        "train_seconds": train,
        "eval_seconds": ev,
    }
    return {
        "ict": {
            0: job(_eval_json(10.0, 0.5, 20.0), 100.0, 10.0),
            1: job(_eval_json(12.0, 0.6, 22.0), 200.0, 20.0),
            2: job(_eval_json(14.0, 0.7, 27.0), 300.0, 30.0),
        },
        "edm": {
            0: job({"heun18/digits_fd": 5.0, "real_test/digits_fd": 17.35}, 50.0, 5.0),
            1: job({"heun18/digits_fd": 9.0, "real_test/digits_fd": 17.35}, 70.0, 7.0),
        },
    }


def test_aggregate_hand_values():
    rows = quality_table.aggregate(_results())
    assert [(r["run"], r["sampler"]) for r in rows] == [
        ("real_test", ""),
        ("ict", "1step"),
        ("ict", "2step"),
        ("edm", "heun18"),
    ]
    floor, one, two, heun = rows
    assert floor["digits_fd"]["mean"] == pytest.approx(17.35)
    assert math.isnan(floor["digits_fd"]["std"])  # the same real digits every time
    # 1 step FD 10, 12, 14: mean 12, deviations -2, 0, 2 -> sample variance 8 / 2 = 4, std 2.
    assert one["digits_fd"]["mean"] == pytest.approx(12.0)
    assert one["digits_fd"]["std"] == pytest.approx(2.0)
    assert one["digits_fd_matched"]["mean"] == pytest.approx(15.0)
    # accuracy 0.5, 0.6, 0.7: std 0.1 by the same arithmetic.
    assert one["digits_accuracy"]["std"] == pytest.approx(0.1)
    assert one["seeds"] == [0, 1, 2] and one["n"] == 3
    assert one["train_seconds"] == pytest.approx(200.0)
    assert one["eval_seconds"] == pytest.approx(20.0)
    # 2 steps FD 20, 22, 27: mean 23; deviations -3, -1, 4 -> (9 + 1 + 16) / 2 = 13.
    assert two["digits_fd"]["mean"] == pytest.approx(23.0)
    assert two["digits_fd"]["std"] == pytest.approx(math.sqrt(13.0))
    # Heun FD 5, 9: mean 7; deviations -2, 2 -> 8 / 1 = 8.
    assert heun["digits_fd"]["std"] == pytest.approx(math.sqrt(8.0))
    assert "digits_accuracy" not in heun and heun["n"] == 2


def test_markdown_table():
    text = quality_table.markdown(quality_table.aggregate(_results()), 10000)
    lines = text.splitlines()
    assert lines[0] == (
        "| run | sampler | seeds | FD (10000) | FD (297, matched) | accuracy | train s | eval s |"
    )
    assert lines[2] == "| real held-out digits (test split) |  |  |  | 17.35 | 0.936 |  |  |"
    assert (
        lines[3] == "| ict | 1step | 3 | 12.00 ± 2.00 | 15.00 ± 2.00 | 0.600 ± 0.100 | 200 | 20 |"
    )
    assert lines[5] == "| edm | heun18 | 2 | 7.00 ± 2.83 |  |  | 60 | 6 |"
    # Fewer samples than the test split: the matched column uses all of them.
    assert "FD (16, matched)" in quality_table.markdown([], 16)


def test_protocol_names_the_std_and_warns_below_three_seeds():
    assert "ddof=1" in quality_table.protocol(10000, (0, 1, 2))
    assert "Fewer than 3 seeds" not in quality_table.protocol(10000, (0, 1, 2))
    assert "Fewer than 3 seeds" in quality_table.protocol(10000, (0, 1))


# ---------------------------------------------------------------- runs, seeds, arguments


def test_parse_run():
    run = quality_specs.parse_run("ict_s1_160=configs/demo.py --config.method.s1=160")
    assert run == quality_specs.RunSpec(
        "ict_s1_160", "configs/demo.py", ("--config.method.s1=160",)
    )
    run = quality_specs.parse_run("configs/demo_slct.py:no_ot")
    assert run == quality_specs.RunSpec("demo_slct_no_ot", "configs/demo_slct.py:no_ot", ())
    quoted = quality_specs.parse_run(
        "a=configs/demo.py '--config.sampling.consistency_levels=((),)'"
    )
    assert quoted.overrides == ("--config.sampling.consistency_levels=((),)",)


@pytest.mark.parametrize(
    "text, message",
    [
        ("ict=configs/demo.py --config.seed=1", "--seeds"),
        ("ict=configs/demo.py --config.eval.num_samples=5", "--eval_samples"),
        ("ict=configs/demo.py --config.method.s1 160", "--config.<field>=<value>"),
        ("ict=configs/demo.py --workdir=x", "--config.<field>=<value>"),
        ("a/b=configs/demo.py", "plain folder name"),
        ("ict=", "names no config"),
        ("--config.method.s1=3", "has no config"),
    ],
)
def test_parse_run_errors(text, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        quality_specs.parse_run(text)


def test_parse_seeds():
    assert quality_specs.parse_seeds("3") == (0, 1, 2)
    assert quality_specs.parse_seeds("0,2,5") == (0, 2, 5)
    assert quality_specs.parse_seeds("7,") == (7,)
    for bad in ("0", "1,1", "x", "-1,2", ","):
        with pytest.raises(ValueError, match="--seeds"):
            quality_specs.parse_seeds(bad)


def test_arguments_order_shared_then_run_then_seed():
    run = quality_specs.RunSpec("s1", "configs/demo.py", ("--config.method.s1=160",))
    shared = ("--config.training.num_steps=20", "--config.method.s1=80")
    workdir = quality_specs.workdir("runs/quality/", run, 2)
    assert workdir == "runs/quality/s1/seed2"
    assert quality_specs.eval_args(run, shared, 2, workdir, 500) == [
        "--config=configs/demo.py",
        "--config.training.num_steps=20",
        "--config.method.s1=80",
        "--config.method.s1=160",  # the run's own override comes last, so it wins
        "--config.seed=2",
        "--workdir=runs/quality/s1/seed2",
        "--mode=eval",
        "--config.eval.metrics=digits",
        "--config.eval.num_samples=500",
    ]
    config = quality_specs.load_config(quality_specs.config_args(run, shared, 2), "Run s1")
    assert (config.method.s1, config.training.num_steps, config.seed) == (160, 20, 2)


def test_seed_placeholder_becomes_each_seed():
    # A run that starts each seed from the same seed of another run (ECT from the EDM runs).
    run = quality_specs.RunSpec("b", "configs/demo.py", ("--config.data.path=runs/a/seed{seed}",))
    assert quality_specs.config_args(run, ("--config.eval.stats_path=s{seed}.npz",), 2) == [
        "--config=configs/demo.py",
        "--config.eval.stats_path=s2.npz",
        "--config.data.path=runs/a/seed2",
        "--config.seed=2",
    ]


def test_load_config_errors_are_one_sentence():
    with pytest.raises(ValueError, match="unknown config field 'nope'"):
        quality_specs.load_config(["--config=configs/demo.py", "--config.method.nope=1"], "Run a")
    with pytest.raises(ValueError, match="do not load"):
        quality_specs.load_config(["--config=configs/demo.py", "--config.method.s1=x"], "Run a")
    with pytest.raises(ValueError, match="do not load"):
        quality_specs.load_config(["--config=configs/missing.py"], "Run a")


def test_parse_args_and_refusals():
    options, runs, shared = quality.parse_args(
        ["--config=configs/demo.py", "--run=b=configs/demo.py", "--config.training.num_steps=9"]
    )
    assert [r.name for r in runs] == ["demo", "b"]
    assert shared == ("--config.training.num_steps=9",)
    assert options.eval_samples == quality.DEFAULT_EVAL_SAMPLES
    with pytest.raises(ValueError, match="more than once"):
        quality.parse_args(["--config=configs/demo.py", "--run=demo=configs/demo.py"])
    with pytest.raises(ValueError, match="No run given"):
        quality.parse_args([])
    with pytest.raises(ValueError, match="not a config override"):
        quality.parse_args(["--config=configs/demo.py", "--config.training.num_steps", "9"])
    with pytest.raises(ValueError, match="data.name='npz'"):
        quality.final_step(runs[0], ("--config.data.name=npz",))
    with pytest.raises(ValueError, match="steps_per_run"):
        quality.final_step(runs[0], ("--config.training.steps_per_run=5",))
    assert quality.final_step(runs[0], shared) == 9


def test_record_refuses_other_flags_and_metrics_need_equal_samples(tmp_path):
    workdir = str(tmp_path / "ict" / "seed0")
    args = ["--config=configs/demo.py", "--config.seed=0"]
    assert quality.read_record(workdir, args) == {}
    quality.write_record(workdir, {"config_args": args, "trained": True})
    assert quality.read_record(workdir, args)["trained"]
    with pytest.raises(ValueError, match="only before: none; only now: --config.method.s1=9"):
        quality.read_record(workdir, [*args, "--config.method.s1=9"])
    fileio.write_json_atomic(quality.metrics_path(workdir, 30), {"num_samples": 16, "x/y": 1.0})
    assert quality.finished_metrics(workdir, 30, 16) == {"num_samples": 16, "x/y": 1.0}
    assert quality.finished_metrics(workdir, 30, 32) is None  # other N: evaluate again
    assert quality.finished_metrics(workdir, 40, 16) is None  # not the final step


# ---------------------------------------------------------------- end to end, tiny

TINY = [
    *tiny.as_flags(tiny.TINY_NETWORK),
    "--config.training.batch_size=8",
    "--config.training.num_steps=2",
    "--config.training.log_every=1",
    "--config.training.checkpoint_every=2",
    "--config.training.snapshot_every=0",
    "--config.training.sample_every=0",
    "--config.sampling.batch_size=8",
]


def _quality(root, *args):
    cmd = [sys.executable, "-m", "benchmarks.quality", "--config=configs/demo.py", "--seeds=2"]
    cmd += ["--eval_samples=16", f"--workdir_root={root}", *TINY, *args]
    out = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def _table(stdout):
    return [line for line in stdout.splitlines() if line.startswith("|")]


def _mtimes(folder):
    return {
        name: os.stat(os.path.join(folder, name)).st_mtime_ns for name in fileio.walk_files(folder)
    }


@pytest.mark.slow
def test_end_to_end_table_and_resume(tmp_path):
    root = tmp_path / "quality"
    first = _quality(root)
    assert first.count("[quality] run demo seed") == 4  # 2 seeds x (training, evaluation)
    for sampler in ("1step", "2step"):
        row = next(line for line in first.splitlines() if line.startswith(f"| demo | {sampler} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[2] == "2"  # seeds
        assert "±" in cells[3] and "±" in cells[4] and "±" in cells[5]  # FD, matched, accuracy
    assert "| real held-out digits (test split) |" in first
    summary = json.loads((root / "quality.json").read_text())
    assert [r["sampler"] for r in summary["rows"]] == ["", "1step", "2step"]
    assert summary["rows"][1]["digits_fd"]["values"] == [
        json.loads((root / f"demo/seed{k}/eval/metrics_step00000002.json").read_text())[
            "1step/digits_fd"
        ]
        for k in (0, 1)
    ]
    assert (root / "quality.md").read_text().startswith("    python -m benchmarks.quality")

    # Same command again, after seed 1's metrics file was lost: nothing is trained, seed 0 is
    # not evaluated again, seed 1 is (the same checkpoint and seed: the same numbers, only its
    # eval seconds are new); seed 0's files and seed 1's checkpoints are untouched.
    before = {k: _mtimes(root / f"demo/seed{k}") for k in (0, 1)}
    lost = "eval/metrics_step00000002.json"
    fileio.remove(root / "demo/seed1" / lost)
    second = _quality(root)
    assert "training in" not in second and second.count("not trained again") == 1
    assert "seed 1: digits metric on 16 samples" in second
    without_eval_seconds = lambda table: [row.rsplit("|", 2)[0] for row in table]  # noqa: E731
    assert without_eval_seconds(_table(second)) == without_eval_seconds(_table(first))
    assert _mtimes(root / "demo/seed0") == before[0]
    kept = {n: t for n, t in before[1].items() if n.startswith("checkpoints/")}
    assert kept and {n: _mtimes(root / "demo/seed1")[n] for n in kept} == kept
    assert lost in _mtimes(root / "demo/seed1")
