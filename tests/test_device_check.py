"""benchmarks/device_check.py: the largest-batch search (device_max_batch), the published peaks,
the tiny networks' overrides (tiny), and the --quick table (rows and columns) from a fresh
process, in this process and in worker processes."""

import json
import subprocess
import sys

import ml_collections
import pytest
from helpers import ROOT, subprocess_env

from benchmarks import device_max_batch, device_rows, device_setup, perf, tiny


def _search(limit: int, start=128, cap=4096, multiple=8, tolerance=0.0):
    calls = []

    def fits(b):
        calls.append(b)
        return b <= limit

    largest, probes = device_max_batch.largest_fitting(fits, start, cap, multiple, tolerance)
    assert [b for b, _ in probes] == calls  # every probe is recorded, in order
    return largest, probes


def test_largest_fitting_doubles_then_bisects():
    largest, probes = _search(300)
    # 128, 256 fit; 512 does not; bisection 384 x, 320 x, 288 ok, 304 x, 296 ok (bracket 8).
    assert probes == [
        (128, True),
        (256, True),
        (512, False),
        (384, False),
        (320, False),
        (288, True),
        (304, False),
        (296, True),
    ]
    assert largest == 296
    # A tolerance of 1/8 stops once the bracket is within 12.5 % of what fits: 256..320 at
    # 288 ok -> bracket 288..320 (32 <= 36).
    assert _search(300, tolerance=0.125)[0] == 288


def test_largest_fitting_halves_caps_and_gives_zero():
    assert _search(50)[0] == 48  # 128 x, 64 x, 32 ok, 48 ok, 56 x
    assert _search(10**9, cap=1000)[0] == 1000  # capped: 128, 256, 512, 1000
    assert _search(10**9, cap=1000)[1][-1] == (1000, True)
    assert _search(0)[0] == 0  # nothing fits: 128, 64, 32, 16, 8 all fail


def test_published_peaks_by_device_kind():
    assert perf.published_peak("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert perf.published_peak("NVIDIA H100 PCIe", "f32 default") == 378e12  # TF32
    assert perf.published_peak("NVIDIA H200", "f32 highest") == 67e12
    assert perf.published_peak("NVIDIA A100-SXM4-80GB", "f32 default") == 156e12
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


def _table(stdout: str) -> tuple[list[str], list[dict]]:
    """(columns, rows as dicts) of the markdown table printed last."""
    lines = [line for line in stdout.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    columns, rows = cells[0], cells[2:]
    return columns, [dict(zip(columns, row, strict=True)) for row in rows]


NETWORKS = ("cifar10_ict", "cifar10_edm")  # of device_setup.NETWORK_NAMES


def _run(*flags) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "benchmarks.device_check", "--quick", *flags]
    proc = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(1), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_quick_check_prints_one_table_with_every_row():
    """Every kind of row and column, on the two CIFAR-10 networks (the samplers' networks; the
    ImageNet and latent ADMs run the same code with other shapes, and would double the time)."""
    assert set(NETWORKS) < set(device_setup.NETWORK_NAMES)
    proc = _run(f"--networks={','.join(NETWORKS)}")
    assert proc.stdout.splitlines()[0].startswith("device: cpu")
    columns, rows = _table(proc.stdout)
    assert tuple(columns) == device_rows.COLUMNS
    items = [r["item"] for r in rows]
    assert items.count("train") == 3 * len(NETWORKS) and items.count("max batch") == len(NETWORKS)
    assert items.count("recipe on 8 devices") == len(NETWORKS) and items.count("inception") == 1
    assert {i for i in items if i.startswith("sample")} == {
        "sample 1-step",
        "sample Heun (3 evals)",  # --quick: 2 Heun steps (tiny.TINY_PAPER_NETWORK)
    }
    assert sum(i.startswith("fid 50k") for i in items) == 2
    train = [r for r in rows if r["item"] == "train"]
    networks = {r["network"] for r in train}
    assert networks == {f"{n} (tiny)" for n in NETWORKS}
    for name in networks:  # every network in every precision mode
        modes = {r["precision"] for r in train if r["network"] == name}
        assert modes == {"f32 highest", "f32 default", "bf16"}
    for r in train + [r for r in rows if r["item"].startswith(("sample", "inception"))]:
        assert float(r["seconds"]) > 0 and float(r["images/s"]) > 0 and float(r["GFLOP"]) > 0
        assert r["MFU"] == "n/a"  # no published peak for a CPU
        assert 0 < float(r["of measured peak"]) < 10
        assert r["peak memory"] == "n/a"  # XLA:CPU keeps no memory statistics
    for r in rows:
        if r["item"] == "max batch":  # --quick: up to twice the batch of the train rows
            assert int(r["batch"]) in (4, 8) and "ok" in r["note"]
        if r["item"].startswith(("fid", "recipe")):
            assert float(r["seconds"]) > 0
    assert all("ESTIMATE" in r["note"] for r in rows if r["item"].startswith("recipe"))


@pytest.mark.slow
def test_worker_processes_and_results_file(tmp_path):
    """One unit in a worker process (a train unit of the quick check above, so the suite's
    compilation cache has its program), kept in the results file and printed by --report."""
    results = tmp_path / "results.json"
    unit = ("--sections=train", "--networks=cifar10_ict", "--precisions=bf16")
    proc = _run("--isolate=true", *unit, f"--results={results}")
    saved = json.loads(results.read_text())
    assert list(saved) == ["train/cifar10_ict/bf16"]
    assert "error" not in saved["train/cifar10_ict/bf16"]["result"]
    _, rows = _table(proc.stdout)
    assert [r["item"] for r in rows if not r["item"].startswith(("recipe", "fid"))] == ["train"]
    again = _run(*unit, f"--results={results}", "--report")
    assert "running" not in again.stderr  # --report only prints what the file holds
    assert again.stdout.splitlines()[1:] == proc.stdout.splitlines()[1:]
