"""benchmarks/device_check.sh and its parts (benchmarks/device_*.py): the published peaks, the
reference rows' ratios, the plan's order, the report of a results file, the bad flags, the
compile phase's time limit, and the whole script in its CPU smoke mode (--quick)."""

import json
import os
import subprocess
import sys

import ml_collections
import pytest
from helpers import ROOT, subprocess_env

from benchmarks import (
    device_compile,
    device_reference,
    device_rows,
    device_setup,
    device_table,
    device_units,
    perf,
    profile_step,
    tiny,
)


def test_published_peaks_by_device_kind():
    assert perf.published_peak("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert perf.published_peak("NVIDIA H100 PCIe", "f32 default") == 378e12  # TF32
    assert perf.published_peak("NVIDIA H200", "f32 highest") == 67e12
    assert perf.published_peak("NVIDIA A100-SXM4-80GB", "f32 default") == 156e12
    assert perf.published_peak("Tesla V100-SXM2-32GB", "f32 default") == 15.7e12  # no TF32
    assert perf.published_peak("Tesla V100-PCIE-16GB", "f32 highest") == 14e12
    assert perf.published_peak("Tesla V100-SXM2-32GB", "bf16") is None
    assert perf.published_peak("TPU v5 lite", "bf16") == 197e12
    assert perf.published_peak("TPU v4", "f32 highest") is None  # no float32 unit on TPUs
    assert perf.published_peak("cpu", "bf16") is None


def test_tiny_overrides_copy_the_config_and_render_as_flags():
    config = ml_collections.ConfigDict({"model": {"channels": 128, "head": {"width": 4}}})
    small = tiny.with_overrides(config, {"model.channels": 8, "model.head.width": 2})
    assert (small.model.channels, small.model.head.width) == (8, 2)
    assert (config.model.channels, config.model.head.width) == (128, 4)  # left alone
    assert tiny.as_flags(tiny.TINY_NETWORK) == [
        "--config.model.channels=8",
        "--config.model.channel_mult=(1,)",
        "--config.model.num_blocks=1",
        "--config.model.num_groups=4",
    ]
    assert tiny.as_flags({"model.attn_resolutions": (8,), "data.image_size": 8}) == [
        "--config.model.attn_resolutions=(8,)",
        "--config.data.image_size=8",
    ]


REFS = {r.method: r for r in device_reference.REFERENCES}


def test_reference_ratios_direct_and_peak_scaled():
    meanflow, ect, edm = REFS["meanflow"], REFS["ect"], REFS["edm"]
    # py-meanflow: 1024 images per 0.21 s iteration on 8 H200 = 609.52 img/s per GPU.
    assert meanflow.images_per_s == pytest.approx(609.5238, rel=1e-6)
    # The same device: 1219.05 / 609.52 = 2.000.
    value, how = device_reference.ratio(1219.0476, meanflow, "NVIDIA H200")
    assert value == pytest.approx(2.0, rel=1e-6) and how == "same device"
    # An H100 SXM: TF32 495 / 495 TFLOP/s, the reference unscaled.
    value, how = device_reference.ratio(609.5238, meanflow, "NVIDIA H100 80GB HBM3")
    assert value == pytest.approx(1.0, rel=1e-6) and how.startswith("peak-scaled")
    # ECT on an A100 at float32, on an H200: 284 x 67 / 19.5 = 975.79 img/s; 487.90 -> 0.500.
    value, how = device_reference.ratio(487.8974, ect, "NVIDIA H200")
    assert value == pytest.approx(0.5, rel=1e-5) and "= 976 img/s" in how
    # EDM on a V100 at float32, on an A100: 145 x 19.5 / 15.7 = 180.10 img/s; 360.19 -> 2.000.
    assert device_reference.ratio(360.1911, edm, "NVIDIA A100-SXM4-80GB")[0] == pytest.approx(2.0)
    value, how = device_reference.ratio(100.0, edm, "cpu")  # no peak published for a CPU
    assert value != value and "no published peak" in how
    row = device_reference.reference_row(meanflow, {"images_per_s": 1300.0}, "NVIDIA H200")
    assert row["images/s"] == "609.5" and "cm / reference = 2.13 (same device)" in row["note"]
    assert "goal >= 2: met" in row["note"]
    row = device_reference.reference_row(meanflow, None, "NVIDIA H200")  # not measured yet
    assert "cm / reference" not in row["note"]


def test_plan_runs_every_method_in_every_mode_reference_rows_first():
    units = device_units.plan(
        False, device_units.SECTIONS, device_setup.METHODS, device_setup.MODES, 0, 8192
    )
    train = [spec for _, spec in units if spec["kind"] == "train"]
    assert len(train) == 24 and {s["batch"] for s in train} == {128}
    pairs = [(s["method"], s["mode"]) for s in train]
    assert set(pairs) == {(m, mode) for m in device_setup.METHODS for mode in device_setup.MODES}
    head = [("meanflow", "f32 default"), ("ect", "f32 highest"), ("edm", "f32 highest")]
    assert pairs[:3] == head  # the rows the published references compare with
    modes = [mode for _, mode in pairs[3:]]  # then TF32, bfloat16, full float32
    assert modes == ["f32 default"] * 7 + ["bf16"] * 8 + ["f32 highest"] * 6
    assert [s["steps"] for s in train] == [device_units.STEPS["train"]] * 24
    rest = [(uid, s) for uid, s in units if s["kind"] != "train"]
    assert [uid for uid, _ in rest] == [
        "profile/ict/f32 highest",  # each config's own precision
        "profile/meanflow/f32 highest",
        "sample/ict/1step",
        "sample/ict/2step",
        "inception",
    ]
    assert rest[0][1]["program"] == "train/ict/f32 highest"
    assert [s["batch"] for _, s in rest[2:]] == [1024, 1024, 256]  # sampling, eval batches
    only = device_units.plan(True, ["train"], device_setup.METHODS, device_setup.MODES, 0, 256,
                             only=[("sct", "bf16"), ("ect", "f32 highest")])  # fmt: skip
    assert [uid for uid, _ in only] == ["train/ect/f32 highest", "train/sct/bf16"]
    assert only[0][1]["batch"] == device_setup.QUICK_BATCH and only[0][1]["steps"] == 1
    tasks = device_compile.program_tasks(units)
    assert len(tasks) == 27  # 24 steps, 2 samplers, the Inception: the profiles reuse steps


def _record(method, mode, seconds, flops, peak, compile_s=80.0):
    spec = {"kind": "train", "method": method, "mode": mode, "batch": 128, "quick": False}
    stats = {"compile_s": compile_s, "flops": flops, "xla_peak_bytes": peak}
    result = {"seconds": seconds, "mode": mode, "device_kind": "NVIDIA H200", "platform": "gpu"}
    result |= {"jax": "0.11.2", "memory_limit": 140 * perf.GIB, "published_peak": 495e12}
    result["measured_peak"] = 400e12
    return {"spec": spec, "compile": stats, "result": result}


def _table(text: str) -> tuple[list[str], list[dict]]:
    """(columns, rows as dicts) of the first markdown table of `text`."""
    lines = []
    for line in text.splitlines():
        if line.startswith("|"):
            lines.append(line)
        elif lines:
            break
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    columns, rows = cells[0], cells[2:]
    return columns, [dict(zip(columns, row, strict=True)) for row in rows]


def test_report_of_a_results_file_needs_no_device_and_runs_nothing_twice():
    """A lease's results print anywhere: meanflow at TF32 and EDM at highest on an H200 (hand
    numbers), and a unit compiled but not measured."""
    units = {"train/meanflow/f32 default": _record("meanflow", "f32 default", 0.1, 1e12, 2**34)}
    units["train/edm/f32 highest"] = _record("edm", "f32 highest", 0.2, 1e12, 2**33)
    pending = {"kind": "train", "method": "ict", "mode": "bf16", "batch": 128, "quick": False}
    units["train/ict/bf16"] = {"spec": pending, "compile": {"compile_s": 60.0}}
    results = {"units": units, "compile_phases": [
        {"programs": 2, "jobs": 8, "wall_s": 100.0, "compiled": 2, "failed": 0, "cut": 0}
    ]}  # fmt: skip
    text = device_table.render(results, False, 8)
    assert text.splitlines()[0] == "device: NVIDIA H200 (gpu), JAX 0.11.2, memory limit 140.00 GiB"
    assert "compile phase: 2 programs, 8 worker processes, 100 s: 2 compiled" in text
    columns, rows = _table(text)
    assert tuple(columns) == device_rows.COLUMNS
    row = next(r for r in rows if r["config"] == "cifar10_meanflow")
    # 128 / 0.1 s = 1280 img/s; 1e12 / 0.1 s = 10 TFLOP/s: MFU 10 / 495 = 0.020, of the
    # measured 400 TFLOP/s 0.025; XLA peak 2^34 bytes = 16 GiB.
    assert (row["seconds"], row["images/s"], row["GFLOP"]) == ("0.1", "1280", "1000")
    assert (row["MFU"], row["of measured peak"], row["XLA peak memory"]) == (
        "0.020",
        "0.025",
        "16.00 GiB",
    )
    assert row["compile (s)"] == "80"
    ict = next(r for r in rows if r["config"] == "cifar10_ict")
    assert ict["note"] == device_table.PENDING
    reference = next(r for r in rows if r["config"] == "Gsunshine/py-meanflow")
    assert "cm / reference = 2.10 (same device); goal >= 2: met" in reference["note"]
    # EDM: 128 / 0.2 s = 640 img/s against 145 x 67 / 15.7 = 618.8 (V100 to H200, float32)
    reference = next(r for r in rows if r["config"] == "NVlabs/edm")
    assert "cm / reference = 1.03 (peak-scaled" in reference["note"]
    # The recipe at the config's precision (cifar10_edm: f32 highest): global batch 512 -> 64
    # per device, the step time scaled by
    # 64 / 128: 390,625 steps x 0.1 s = 39,062 s = 10.9 h; the XLA peak (8 GiB) is not scaled
    # down (an upper bound).
    (recipe,) = [r for r in rows if r["item"].startswith("recipe") and "edm" in r["config"]]
    assert recipe["config"] == "cifar10_edm" and "390,625 steps x 0.1 s" in recipe["note"]
    assert "= 10.9 h; XLA peak memory at most 8.00 GiB of 140.00 GiB" in recipe["note"]
    assert {r["item"] for r in rows} == {"train", "reference", "recipe on 8 devices"}
    # run_units skips what the results hold: nothing runs, nothing is saved
    saved = []
    spec = units["train/meanflow/f32 default"]["spec"]
    left = device_units.run_units([("train/meanflow/f32 default", spec)], results, "", None,
                                  lambda: saved.append(1))  # fmt: skip
    assert left == [] and saved == []


def test_compile_phase_stops_at_its_time_limit(tmp_path):
    recorded = []
    tasks = [("train/ict/bf16", {"kind": "train"})]
    summary = device_compile.run_phase(tasks, 2, str(tmp_path), 0, recorded.append)
    assert (summary["compiled"], summary["failed"], summary["cut"]) == (0, 0, 1)
    assert recorded == []  # no worker was started
    assert device_compile.auto_jobs(16) == 8 and device_compile.auto_jobs(2) == 1


def test_compile_workers_take_the_queue_and_a_failure_is_a_result(tmp_path, monkeypatch):
    """Two worker processes at once (the smoke run below has one on 2 cores), each program's
    failure recorded as its result."""
    monkeypatch.setenv("PYTHONPATH", ROOT)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    recorded = {}
    tasks = [("first", {"kind": "nothing"}), ("second", {"kind": "nothing"})]
    summary = device_compile.run_phase(tasks, 2, str(tmp_path), 300, recorded.__setitem__)
    assert (summary["compiled"], summary["failed"], summary["cut"], summary["jobs"]) == (0, 2, 0, 2)
    assert recorded == {uid: {"error": "KeyError: 'nothing'"} for uid, _ in tasks}


def test_a_bad_flag_is_one_line_and_exit_2():
    cmd = [sys.executable, "-m", "benchmarks.device_check", "--phase=report"]
    proc = subprocess.run(
        [*cmd, "--train_units=ict:f32"], cwd=ROOT, env=subprocess_env(1),
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: --train_units has ict:f32; write each as method:mode, a method of "
        f"{list(device_setup.METHODS)} and a mode of {list(device_setup.MODES)} ('_' for its "
        "space)."
    ]


# The smoke run's train units: every method once, every mode at least twice, the references'
# pairs and the profiled programs (iCT and MeanFlow at TF32) among them; a full quick run (all
# 24) takes about 7 minutes on the project's 2 cores, over the suite's budget.
COVER = (
    "meanflow:f32_default", "ect:f32_highest", "edm:f32_highest", "ict:f32_default",
    "sct:bf16", "cd:bf16", "scd:bf16", "trigflow:f32_highest",
)  # fmt: skip
CONTINUED = "train/ict/bf16"  # in a results file from an earlier run: never compiled or run
SMOKE_XLA_FLAGS = "--xla_cpu_use_fusion_emitters=false"  # XLA:CPU compiles ~30 % faster


@pytest.mark.slow
def test_the_device_script_in_its_cpu_smoke_mode(tmp_path):
    """benchmarks/device_check.sh with --quick: the compile phase (its default on 2 cores: one
    worker), the precision study beside it, the measure phase, the report; every kind of row,
    a continued unit."""
    state, out = tmp_path / "state", tmp_path / "out"
    earlier = _record("ict", "bf16", 0.5, 1e9, 2**20)
    earlier["spec"] |= {"quick": True, "batch": 4}
    earlier["result"] |= {"device_kind": "cpu", "platform": "cpu", "published_peak": None}
    (tmp_path / "earlier.json").write_text(json.dumps({"units": {CONTINUED: earlier}}))
    env = subprocess_env(1)
    env["XLA_FLAGS"] += " " + SMOKE_XLA_FLAGS
    env |= {"PYTHON": sys.executable, "OUT": str(out), "DEVICE_CHECK_STATE": str(state)}
    env |= {"BUDGET": "900", "RESULTS_FROM": str(tmp_path / "earlier.json")}
    flags = ["--quick", "--profile_precision=f32_default"]
    env["DEVICE_CHECK_FLAGS"] = " ".join([*flags, f"--train_units={','.join(COVER)},ict:bf16"])
    proc = subprocess.run(
        ["bash", "benchmarks/device_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    log = (out / "log.txt").read_text()
    assert proc.returncode == 0, log[-3000:] + proc.stderr[-2000:]
    assert sorted(os.listdir(out)) == [
        "device_check.txt", "log.txt", "precision_study.json", "precision_study.png",
        "precision_study.txt", "results.json",
    ]  # fmt: skip
    text = (out / "device_check.txt").read_text()
    assert text.startswith("device: cpu (cpu)") and "--quick: tiny networks" in text
    columns, rows = _table(text)
    assert tuple(columns) == device_rows.COLUMNS
    train = [r for r in rows if r["item"] == "train"]
    methods = {r["config"].removesuffix(" (tiny)").removeprefix("cifar10_") for r in train}
    assert methods == set(device_setup.METHODS)
    assert {r["precision"] for r in train} == set(device_setup.MODES)
    for r in train:
        assert float(r["seconds"]) > 0 and float(r["GFLOP"]) > 0 and r["MFU"] == "n/a"
        assert r["XLA peak memory"] != "n/a" and float(r["compile (s)"]) > 0, r
        assert "measuring process" not in r["note"]  # every program compiled once, stored
    continued = [
        r for r in train if r["config"] == "cifar10_ict (tiny)" and r["precision"] == "bf16"
    ]
    assert continued[0]["seconds"] == "0.5"  # the earlier file's, not run again
    assert f"compiling {CONTINUED}" not in log and f"running {CONTINUED}" not in log
    references = [r for r in rows if r["item"] == "reference"]
    assert len(references) == 3
    assert all("cm / reference = n/a (no published peak" in r["note"] for r in references)
    items = [r["item"] for r in rows]
    for item in ("sample 1-step", "sample 2-step", "inception"):
        assert items.count(item) == 1
        r = rows[items.index(item)]
        assert float(r["seconds"]) > 0 and float(r["GFLOP"]) > 0
    assert items.count("fid 50k, 1-step") == 1 and items.count("fid 50k, 2-step") == 1
    recipes = [r for r in rows if r["item"] == "recipe on 8 devices"]
    assert recipes and all(r["note"].startswith("ESTIMATE") for r in recipes)
    for method in ("ict", "meanflow"):  # the profiles: every category, convolutions > 0
        title = f"profile: cifar10_{method} (tiny), f32 default, batch 4, 1 steps;"
        section = text[text.index(title) :]
        _, categories = _table(section[section.index("\n") + 1 :])
        assert [r["category"] for r in categories] == list(profile_step.CATEGORIES)
        assert float(categories[1]["ms/step"]) > 0  # conv/matmul
    results = json.loads((out / "results.json").read_text())
    (phase,) = results["compile_phases"]
    assert (phase["programs"], phase["compiled"], phase["failed"]) == (11, 11, 0)
    study = (out / "precision_study.txt").read_text()
    assert "bf16" in study and "f32 default" in study and "tangent" in study
    assert json.loads((out / "precision_study.json").read_text())
    assert "elapsed" in log
