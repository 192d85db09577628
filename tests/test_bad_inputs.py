"""Every bad input ends in one sentence: exit code 2, a last line `error: ...` naming the cause,
no traceback, and nothing written (issue 10). The catalog runs launch.py in fresh processes;
the checks of cm/config_checks.py are also pinned in-process, rule by rule."""

import dataclasses
import importlib
import math
import os
import subprocess
from collections.abc import Callable

import jax
import numpy as np
import pytest
from helpers import edm_source, launch_cmd, subprocess_env, tiny_config
from PIL import Image

from cm import config_checks, experiment, methods
from cm.io import fileio
from cm.lcsc import run as lcsc_run
from cm.lcsc.snapshots import SnapshotStream
from cm.workdir import run_record
from cm.workdir.checkpoint import Checkpointer
from cm.workdir.lock import lock_workdir
from configs import variants

MODES = ("train", "sample", "eval", "fid_stats", "summary", "encode", "lcsc")


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    args: Callable[[str], list]  # tmp dir -> extra launch.py flags (may write input files)
    expect: tuple  # substrings of the error line
    devices: int = 1


def _args(*flags):
    return lambda tmp: list(flags)


def _npz(images, labels, name="data.npz"):
    """Flags for an npz data source written to the tmp dir."""

    def make(tmp):
        path = os.path.join(tmp, name)
        np.savez(path, images=images, labels=labels)
        return ["--config.data.name=npz", f"--config.data.path={path}"]

    return make


def _folder_with_corrupt_png(tmp):
    """Four good 8x8 grayscale PNGs and one file named .png that holds no image."""
    root = os.path.join(tmp, "images")
    os.makedirs(root)
    for i in range(4):
        pixels = np.full((8, 8), 40 * i, np.uint8)
        Image.fromarray(pixels).save(os.path.join(root, f"good{i}.png"))
    with open(os.path.join(root, "corrupt.png"), "wb") as f:
        f.write(b"not a png at all")
    return ["--config.data.name=folder", f"--config.data.path={root}"]


def _encode_without_weights(tmp):
    """--mode=encode of the digits (8 px -> 1x1x4 latents with the SD VAE's f = 8)."""
    return [
        "--mode=encode",
        "--config.data.name=latents",
        f"--config.data.path={os.path.join(tmp, 'latents.npz')}",
        "--config.data.image_size=1",
        "--config.data.channels=4",
        "--config.vae.images.name=digits",
        "--config.vae.images.image_size=8",
        "--config.vae.images.channels=1",
        f"--config.vae.weights_path={os.path.join(tmp, 'no_vae.safetensors')}",
    ]


IMAGES = np.zeros((16, 8, 8, 1), np.uint8)
LABELS = np.arange(16, dtype=np.int32) % 10

CASES = [
    # Found failing in issue 10 (a traceback, an unhelpful message, or silently wrong).
    Case("batch_size_not_int", _args("--config.training.batch_size=abc"), ("batch_size", "abc")),
    Case(
        "checkpoint_every_0",
        _args("--config.training.checkpoint_every=0"),
        ("training.checkpoint_every=0",),
    ),
    Case("batch_size_0", _args("--config.training.batch_size=0"), ("training.batch_size=0",)),
    Case("num_steps_negative", _args("--config.training.num_steps=-5"), ("num_steps=-5",)),
    Case(
        "level_above_sigma_max",
        _args("--mode=sample", "--config.sampling.consistency_levels=((), (100.0,))"),
        ("sampling.consistency_levels", "100.0", "sigma_max"),
    ),
    Case("config_file_missing", _args("--config=configs/no_such.py"), ("configs/no_such.py",)),
    Case("config_argument_unknown", _args("--config=configs/demo_slct.py:zzz"), ("'zzz'",)),
    # Already clear before issue 10; kept here so that they stay clear.
    Case(
        "unknown_mode",
        _args("--mode=fly"),
        ("--mode 'fly'; valid: ['encode', 'eval', 'fid_stats', 'import', 'lcsc', 'sample'",),
    ),
    Case("misspelled_field", _args("--config.training.batch_sise=8"), ('"batch_size"',)),
    Case("unknown_method", _args("--mode=summary", "--config.method.name=nope"), ("method.name",)),
    Case("unknown_norm", _args("--config.model.norm=batch"), ("model.norm", "'batch'")),
    Case(
        "batch_not_multiple_of_devices",
        _args("--config.training.batch_size=6"),
        ("training.batch_size", "4 devices"),
        devices=4,
    ),
    Case(
        "npz_missing",
        lambda tmp: ["--config.data.name=npz", f"--config.data.path={tmp}/missing.npz"],
        ("data.path=", "missing.npz"),
    ),
    Case(
        "tfds_not_prepared",
        lambda tmp: [
            "--config.data.name=tfds",
            "--config.data.tfds_name=cifar10",
            f"--config.data.tfds_dir={tmp}/tfds",
        ],
        ("not prepared", "data.tfds_dir"),
    ),
    Case(
        "unknown_sampling_params",
        _args("--mode=sample", "--config.sampling.params=emma"),
        ("sampling.params", "'emma'"),
    ),
    Case("encode_without_vae_weights", _encode_without_weights, ("vae.weights_path",)),
]


def _data_case(name, make, expect):
    """A bad data source in training on 4 devices with a batch of 6, which train.py rejects
    right after loading the data and before writing: the data error must come first, and a
    data check that does not fire at load costs seconds instead of a training run."""

    def args(tmp):
        return [*make(tmp), "--config.training.batch_size=6"]

    return Case(name, args, expect, devices=4)


# Bad data sources: refused when the source is opened (cm/data/sources.py), before anything else.
DATA_SOURCE_CASES = [
    _data_case("npz_fewer_labels", _npz(IMAGES, LABELS[:5]), ("label",)),
    _data_case("npz_label_-1", _npz(IMAGES, np.where(LABELS == 3, -1, LABELS)), ("label", "-1")),
    _data_case("npz_float_labels", _npz(IMAGES, LABELS + 0.5), ("label",)),
    _data_case("folder_corrupt_png", _folder_with_corrupt_png, ("corrupt.png",)),
]

# A read-only mode on a workdir without a checkpoint creates nothing.
RESTORE_CASES = [
    Case("sample_without_checkpoint", _args("--mode=sample"), ("No checkpoint", "--mode=train")),
    Case("eval_without_checkpoint", _args("--mode=eval"), ("No checkpoint", "--mode=train")),
]


def _workdir_a_file(tmp):
    path = os.path.join(tmp, "notes.txt")
    with open(path, "w") as f:
        f.write("a file, not a folder")
    return [f"--workdir={path}"]


def _config_with_syntax_error(tmp):
    path = os.path.join(tmp, "broken.py")
    with open(path, "w") as f:
        f.write("def get_config(:\n    pass\n")
    return [f"--config={path}"]


def _stats_of_another_dimension(tmp):
    """--mode=eval of a checkpointed tiny EDM run (helpers.edm_source: no training) against
    statistics of 64-d features: refused before the Inception weights and any sampling."""
    run = os.path.join(tmp, "run")
    edm_source(run)
    stats = os.path.join(tmp, "stats64.npz")
    np.savez(stats, mu=np.zeros(64), sigma=np.eye(64))
    return [
        f"--workdir={run}",
        "--mode=eval",
        "--config.method.name=edm",
        "--config.eval.metrics=inception",
        f"--config.eval.stats_path={stats}",
    ]


# Issue 21, section 3: the faults and bad inputs of the re-audit, and where each is pinned.
# - a damaged newest checkpoint moved aside and saved again, all three kinds of damage, the same
#   num_steps, then --mode=sample; and SIGTERM with one process: tests/test_checkpoint.py::
#   test_a_stopped_run_with_damaged_checkpoints_resumes_and_saves_them_again
# - SIGTERM with two processes, SIGINT: tests/test_preemption.py
# - a kill between a checkpoint's commit and its digest: tests/test_checkpoint.py::
#   test_the_digest_is_on_disk_before_the_save_starts (and the kill -9 test there)
# - a --workdir that is a file, a config file with a syntax error, statistics of another
#   dimension: WORKDIR_CASES below; a missing bucket, an LCSC snapshot of another model, the
#   incompatible-config message, temporaries of killed writes: the tests after the catalog.
WORKDIR_CASES = [
    Case("workdir_is_a_file", _workdir_a_file, ("notes.txt is an existing file", "--workdir")),
    Case(
        "config_syntax_error",
        _config_with_syntax_error,
        ("broken.py cannot be loaded (SyntaxError at", "broken.py line 1"),
    ),
    Case(
        "eval_stats_of_another_dimension",
        _stats_of_another_dimension,
        ("eval.stats_path", "stats64.npz", "'mu' [64]", "2048"),
    ),
]


def _tree(root) -> dict:
    """{relative path: (size, mtime)} of every file and folder under root."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            stat = os.stat(path)
            out[os.path.relpath(path, root)] = (stat.st_size, stat.st_mtime_ns)
    return out


@pytest.mark.slow
@pytest.mark.parametrize(
    "case",
    [pytest.param(c, id=c.id) for c in CASES + DATA_SOURCE_CASES + RESTORE_CASES + WORKDIR_CASES],
)
def test_bad_input_is_one_sentence_and_writes_nothing(tmp_path, case):
    workdir = tmp_path / "w"
    extra = case.args(str(tmp_path))
    before = _tree(tmp_path)
    # num_steps=0 first (a case's own flags override it): a check that stops failing costs a
    # zero-step run, not the demo's 3000 steps.
    cmd = launch_cmd(workdir, "--config.training.num_steps=0", *extra)
    proc = subprocess.run(
        cmd, env=subprocess_env(case.devices), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: "), last
    for part in case.expect:
        assert part in last, last
    assert not workdir.exists()
    assert _tree(tmp_path) == before  # nothing written anywhere, input files untouched


@pytest.mark.slow
@pytest.mark.xdist_group("gcs")  # the gs:// tests' emulator (tests/test_gcs.py)
def test_missing_bucket_is_named_with_how_to_create_it(gcs_bucket):
    cmd = launch_cmd("gs://nosuchbucket/run", "--config.training.num_steps=0")
    env = {**subprocess_env(), **gcs_bucket.env}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "error: the bucket gs://nosuchbucket of --workdir=gs://nosuchbucket/run does not exist"
    ), last
    assert "gcloud storage buckets create gs://nosuchbucket" in last, last


# --- issue 21, section 3, in-process --------------------------------------------------------


def _zeros(config):
    shapes = experiment.param_shapes(experiment.build(config), config)
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def test_lcsc_snapshot_of_another_model_says_how_to_leave_it_out(tmp_path):
    """A snapshot of a wider network (an earlier run in the same workdir): the step, how to
    leave it out, and none of Orbax's advice (strict=False) or "the run's own config"."""
    wide = _zeros(tiny_config(model__channels=16))
    ckpt = Checkpointer(str(tmp_path), 1)
    ckpt.save_snapshot(5, wide, (wide,), (wide, wide))  # 1 EMA and 2 power EMAs, as tiny's
    ckpt.close()
    c = tiny_config()
    stream = SnapshotStream(str(tmp_path), c, experiment.build(c))
    with pytest.raises(ValueError) as info:
        stream.load(5)
    message = str(info.value)
    assert message.startswith(f"The snapshot at step 5 in {tmp_path} does not match"), message
    assert "--config.lcsc.first_step / --config.lcsc.last_step" in message
    assert f"move {tmp_path / 'snapshots' / '5'} out of snapshots/." in message
    assert "strict" not in message and "own config" not in message


def test_incompatible_config_names_only_the_differing_fields():
    saved = tiny_config().to_dict()
    current = tiny_config(model__channels=16, model__dropout=0.1).to_dict()
    with pytest.raises(ValueError) as info:
        run_record.check_compatible(saved, current, "/w")
    message = str(info.value)
    assert message == (
        "The workdir /w holds a run of an incompatible config (model.channels: 8 there, 16 now; "
        "model.dropout: 0.0 there, 0.1 now); use a new --workdir or set back "
        "--config.model.channels, --config.model.dropout."
    )


def test_temporaries_of_killed_writes_are_removed_at_the_next_start(tmp_path):
    """Training's start (once it holds the lock) clears the workdir's record folders; LCSC's
    start clears its output folder. Only the atomic writes' own names are removed."""
    left = [".config.json.tmp-0123abcd", "digests/.4.json.tmp-89abcdef", "starts/.s.tmp-00ff00ff"]
    kept = [".config.json.tmp-mine", "starts/step2.json", "lcsc/notes.tmp-01234567"]
    for name in [*left, *kept, "lcsc/.state.json.tmp-deadbeef"]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("{")
    lock_workdir(str(tmp_path), tiny_config().training).release()
    assert not any((tmp_path / name).exists() for name in left)
    c = tiny_config()
    params = _zeros(c)
    ckpt = Checkpointer(str(tmp_path), 1)
    for step in (2, 4):
        ckpt.save_snapshot(step, params, (params,), (params, params))
    ckpt.close()
    (tmp_path / "lcsc" / "state.json").write_text("{")  # refused right after the cleanup
    with pytest.raises(ValueError, match="is not a state file"):
        lcsc_run.lcsc(c, str(tmp_path))
    assert fileio.listdir(tmp_path / "lcsc") == ["notes.tmp-01234567", "state.json"]
    assert all((tmp_path / name).exists() for name in kept)


# --- config_checks in-process --------------------------------------------------------------

SHIPPED = variants.specs()  # every config file and variant in configs/


@pytest.mark.parametrize("spec", SHIPPED)
def test_every_shipped_config_passes_every_mode(spec):
    name, _, arg = spec.partition(":")
    config = importlib.import_module(f"configs.{name}").get_config(*([arg] if arg else []))
    if methods.get(config.method.name).requires_init_from:
        config.method.init_from = "gs://bucket/edm_run"  # the checks want a source named
    for mode in (*MODES, "no_such_mode"):
        config_checks.check(config, mode)


def _all_on(method: str):
    """A tiny config in which every rule's condition holds for some mode."""
    c = tiny_config()
    c.method.name = method
    c.method.ot_coupling = True
    c.training.sample_every = 1
    c.eval.every = 1
    return c


def _bad_value(rule, value):
    if rule.each:
        return (math.nan,)
    if isinstance(value, int):
        return int(rule.requirement.split(">= ")[1]) - 1  # just below the integer bound
    return math.nan  # fails every number rule


@pytest.mark.parametrize("rule", config_checks.RULES, ids=lambda r: r.path)
def test_each_rule_names_field_value_and_fix(rule):
    for method in ("ict", "edm"):
        config = _all_on(method)
        entry = methods.get(config.method.name)
        mode = next((m for m in MODES if rule.applies(config, m, entry)), None)
        if mode:
            break
    assert mode, f"{rule.path} applies in no mode"
    config_checks.check(config, mode)  # the tiny config itself is fine
    section, field = rule.path.split(".")
    bad = _bad_value(rule, config[section][field])
    config[section][field] = bad
    with pytest.raises(ValueError) as info:
        config_checks.check(config, mode)
    message = str(info.value)
    assert message.startswith(f"{rule.path}={bad!r} is invalid: "), message
    assert f"set --config.{rule.path} " in message and message.count(". ") == 0, message


@pytest.mark.parametrize(
    "levels,accepted",
    [
        (((), (0.821,)), True),
        (((), (80.0, 0.002)), True),  # both bounds are allowed
        (((), (80.001,)), False),  # above sigma_max = 80
        (((), (0.001,)), False),  # below sigma_min = 0.002: sqrt(t^2 - sigma_min^2) is NaN
        (((), (0.5, 0.5)), False),  # not strictly decreasing
        (((0.5,), (0.8,)), False),  # two samplers named '2step'
        ((), False),  # no sampler
        ((0.8,), False),  # an entry that is not a tuple of levels
    ],
)
def test_consistency_levels(levels, accepted):
    config = tiny_config()
    config.sampling.consistency_levels = levels
    if accepted:
        config_checks.check(config, "sample")
    else:
        with pytest.raises(ValueError, match=r"^sampling\.consistency_levels=.* is invalid: "):
            config_checks.check(config, "sample")
    config.method.name = "edm"  # EDM samples with Heun and never reads the levels
    config_checks.check(config, "sample")


def test_cross_field_checks():
    config = tiny_config()
    config.method.sigma_max = 0.001  # below sigma_min = 0.002
    with pytest.raises(ValueError, match=r"^method\.sigma_max=0\.001 .* method\.sigma_min"):
        config_checks.check(config, "sample")
    config = tiny_config()
    config.method.s1 = 5  # below s0 = 10
    with pytest.raises(ValueError, match=r"^method\.s1=5 .* method\.s0=10"):
        config_checks.check(config, "train")
    config_checks.check(config, "sample")  # sampling never reads the curriculum
    config = tiny_config(eval__metrics="inception", eval__num_samples=5, eval__is_splits=10)
    with pytest.raises(ValueError, match=r"^eval\.num_samples=5 .* set --config\.eval\."):
        config_checks.check(config, "eval")
    config_checks.check(config, "train")  # eval.every = 0: training never evaluates


def test_fields_a_mode_does_not_read_are_not_checked():
    config = tiny_config()
    config.training.checkpoint_every = 0
    config.training.num_steps = -1
    config.sampling.num_samples = 0
    for mode in ("summary", "fid_stats"):
        config_checks.check(config, mode)
    with pytest.raises(ValueError, match="sampling.num_samples=0"):
        config_checks.check(config, "sample")
