"""gs:// workdirs against a local GCS emulator (tests/gcs_emulator.py, fixture `gcs_bucket`).

Every run is a fresh process with the emulator's environment, as a user's would be: first each
storage library on its own (orbax, etils.epath, clu's TensorBoard writer), then launch.py.
"""

import io
import json
import os
import pathlib
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from helpers import ROOT, launch_cmd, subprocess_env

from cm.lcsc import search_state

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("gcs")]  # one emulator, one worker


def _env(bucket, devices: int = 1) -> dict:
    return {**subprocess_env(devices), **bucket.env}


def _python(bucket, code: str) -> str:
    """Runs `code` in a fresh Python process pointed at the emulator; returns its stdout."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=_env(bucket),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


# ---------------------------------------------------------------- each library reaches it


def test_orbax_saves_and_restores_on_the_bucket(gcs_bucket):
    out = _python(
        gcs_bucket,
        """
        import numpy as np, orbax.checkpoint as ocp
        tree = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([7], np.int32)}
        options = ocp.CheckpointManagerOptions(create=True)
        with ocp.CheckpointManager("gs://bucket/smoke/orbax", options=options) as m:
            m.save(3, args=ocp.args.StandardSave(tree))
        with ocp.CheckpointManager("gs://bucket/smoke/orbax") as m:
            back = m.restore(m.latest_step(), args=ocp.args.StandardRestore(tree))
        print(m.latest_step(), back["a"].tolist(), back["b"].tolist())
        """,
    )
    assert out.split("\n")[-2] == "3 [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]] [7]"
    names = gcs_bucket.list("smoke/orbax/")
    assert "smoke/orbax/3/commit_success.txt" in names  # orbax's commit marker on GCS
    assert "smoke/orbax/3/default/manifest.ocdbt" in names


def test_epath_writes_reads_renames_and_deletes_on_the_bucket(gcs_bucket):
    out = _python(
        gcs_bucket,
        """
        from etils import epath
        root = epath.Path("gs://bucket/smoke/epath")
        (root / "a.txt").write_text("hello")
        print((root / "a.txt").read_text())
        (root / "a.txt").rename(root / "b.txt")
        (root / "gone" / "c.txt").write_bytes(b"x")
        (root / "gone").rmtree()
        print(sorted(p.name for p in root.iterdir()))
        """,
    )
    assert out.split("\n")[-3:] == ["hello", "['b.txt']", ""]
    assert gcs_bucket.list("smoke/epath/") == ["smoke/epath/b.txt"]
    assert gcs_bucket.read("smoke/epath/b.txt") == b"hello"


def test_clu_writer_puts_tensorboard_events_on_the_bucket(gcs_bucket, tmp_path):
    _python(
        gcs_bucket,
        """
        from clu import metric_writers
        writer = metric_writers.create_default_writer("gs://bucket/smoke/clu")
        writer.write_scalars(5, {"loss": 0.25})
        writer.close()
        """,
    )
    (name,) = gcs_bucket.list("smoke/clu/")
    assert name.startswith("smoke/clu/events.out.tfevents.")
    from tensorboard.backend.event_processing import event_file_loader
    from tensorboard.util import tensor_util

    gcs_bucket.download("smoke/clu", str(tmp_path))
    events = event_file_loader.EventFileLoader(str(tmp_path / name)).Load()
    scalars = [
        (e.step, v.tag, float(tensor_util.make_ndarray(v.tensor)))
        for e in events
        for v in e.summary.value
    ]
    assert scalars == [(5, "loss", 0.25)]


# ---------------------------------------------------------------- launch.py on gs://bucket

STEPS = 10
RUN = (  # the tiny demo of helpers.launch_cmd, smaller still: each run compiles from scratch
    f"--config.training.num_steps={STEPS}",
    "--config.training.checkpoint_every=2",
    "--config.training.snapshot_every=2",
    "--config.model.channel_mult=(1,)",  # one level
    "--config.sampling.consistency_levels=((),)",  # the 1-step sampler only
)
LCSC = (
    "--mode=lcsc",
    "--config.lcsc.population=4",
    "--config.lcsc.generations=2",
    "--config.lcsc.search_samples=16",
    "--config.lcsc.heldout_samples=16",
    "--config.lcsc.uniform_last_k=(2,)",
    "--config.lcsc.ema_rates=(0.5,)",
    "--config.lcsc.posthoc_stds=(0.075,)",
)
# Local files a run may write: its caches under ~/.cache/cm (the digits classifier), the
# Keras settings file that `import tensorflow` creates, and matplotlib's cache and config, which a
# third-party import creates when matplotlib is installed (requirements-dev.txt has it for the
# precision study's plot); neither is cm's doing.
DECLARED_CACHE = "home/.cache/cm"
DECLARED = (
    DECLARED_CACHE,
    "home/.keras/keras.json",
    "home/.cache/matplotlib",
    "home/.config/matplotlib",
)
_TIMEOUT_S = 600


def _declared(path: str) -> bool:
    """A declared file, inside one, or a folder above one."""
    return any(d == path or d.startswith(f"{path}/") or path.startswith(f"{d}/") for d in DECLARED)


class Local:
    """Fresh local folders for a run's cwd, HOME and TMPDIR; cwd and HOME are checked
    afterwards: a run on a bucket writes nothing to local disk but its declared caches.
    (TMPDIR is scratch space: TensorFlow's GCS writer buffers each upload in a file there,
    which a kill -9 leaves behind.)"""

    def __init__(self, root: pathlib.Path):
        self.root = root
        for name in ("cwd", "home", "tmp"):
            (root / name).mkdir(parents=True)

    def env(self) -> dict:
        return {"HOME": str(self.root / "home"), "TMPDIR": str(self.root / "tmp")}

    def undeclared(self) -> list[str]:
        """Every file or folder written outside the declared caches."""
        found = [
            str(p.relative_to(self.root))
            for name in ("cwd", "home")
            for p in (self.root / name).rglob("*")
        ]
        return sorted(p for p in found if not _declared(p))


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory) -> dict:
    """JAX's persistent compilation cache, shared by the runs of this module (outside the
    checked folders): the same tiny programs are compiled once, not in every process."""
    return {
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax_cache")),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }


def _launch_env(bucket, local: Local, compile_cache: dict) -> dict:
    env = {k: v for k, v in subprocess_env(1).items() if not k.startswith("XDG_")}
    return {**env, **bucket.env, **local.env(), **compile_cache}


def _argv(workdir: str, *args: str) -> list[str]:
    """helpers.launch_cmd with `args` replacing its flags of the same name (a repeated tuple
    override would extend the tuple, not replace it)."""
    config = os.path.join(ROOT, "configs", "demo.py")  # the cwd is not the repository
    names = {a.split("=")[0] for a in args}
    return [a for a in launch_cmd(workdir, config=config) if a.split("=")[0] not in names] + [*args]


def _start(bucket, local, compile_cache, workdir, *args) -> subprocess.Popen:
    """launch.py on the tiny demo config in a fresh process in local's cwd, output to
    local.root/log."""
    with open(local.root / "log", "ab") as log:  # the child keeps its own copy
        return subprocess.Popen(
            _argv(f"{bucket.url}/{workdir}", *args),
            env=_launch_env(bucket, local, compile_cache),
            cwd=local.root / "cwd",
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _finish(process: subprocess.Popen, local: Local):
    code = process.wait(timeout=_TIMEOUT_S)
    assert code == 0, (local.root / "log").read_text()[-4000:]


def _launch(bucket, local, compile_cache, workdir, *args):
    _finish(_start(bucket, local, compile_cache, workdir, *args), local)


def _kill_when(ready, process: subprocess.Popen, local: Local):
    """SIGKILL (kill -9) the run as soon as ready() is true."""
    deadline = time.monotonic() + _TIMEOUT_S
    while not ready():
        assert process.poll() is None, (local.root / "log").read_text()[-4000:]
        assert time.monotonic() < deadline, "the run did not get there in time"
        time.sleep(0.05)
    process.kill()
    process.wait()


def _restore(bucket, step_dir: str, folder: pathlib.Path):
    """The train state saved in `step_dir` of the bucket, as numpy arrays (restored from a
    local copy of its objects, in this process)."""
    local = bucket.download(step_dir, str(folder))
    state = ocp.StandardCheckpointer().restore(os.path.join(local, "default"))
    return jax.tree.map(np.asarray, state)


@pytest.fixture(scope="module")
def trained(gcs_bucket, compile_cache, tmp_path_factory) -> Local:
    """gs://bucket/run: STEPS tiny steps, uninterrupted; its local folders."""
    local = Local(tmp_path_factory.mktemp("trained"))
    _launch(gcs_bucket, local, compile_cache, "run", *RUN)
    return local


def test_train_writes_the_run_to_the_bucket(gcs_bucket, trained):
    names = gcs_bucket.list("run/")
    steps = lambda folder: {n.split("/")[2] for n in names if n.startswith(f"run/{folder}/")}
    assert steps("checkpoints") == {"6", "8", "10"}  # training.keep_checkpoints = 3
    assert steps("snapshots") == {"2", "4", "6", "8", "10"}
    assert f"run/checkpoints/{STEPS}/commit_success.txt" in names
    assert any(n.startswith("run/events.out.tfevents.") for n in names)
    config = json.loads(gcs_bucket.read("run/config.json"))
    assert config["training"]["num_steps"] == STEPS and config["model"]["channel_mult"] == [1]
    assert trained.undeclared() == []


def test_run_killed_mid_run_resumes_bitwise(gcs_bucket, trained, compile_cache, tmp_path):
    """kill -9 after the second checkpoint, the same command again == the uninterrupted run."""
    local = Local(tmp_path / "local")
    process = _start(gcs_bucket, local, compile_cache, "killed", *RUN)
    second = "killed/checkpoints/4/commit_success.txt"  # orbax's commit marker on GCS
    _kill_when(lambda: gcs_bucket.exists(second), process, local)
    assert not gcs_bucket.exists(f"killed/checkpoints/{STEPS}/commit_success.txt")
    _launch(gcs_bucket, local, compile_cache, "killed", *RUN)
    resumed = _restore(gcs_bucket, f"killed/checkpoints/{STEPS}", tmp_path / "resumed")
    straight = _restore(gcs_bucket, f"run/checkpoints/{STEPS}", tmp_path / "straight")
    assert jax.tree.structure(resumed) == jax.tree.structure(straight)
    assert int(resumed["step"]) == STEPS
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight), strict=True):
        np.testing.assert_array_equal(a, b)
    assert local.undeclared() == []


def test_sample_mode_writes_to_the_bucket(gcs_bucket, trained, compile_cache, tmp_path):
    local = Local(tmp_path)
    flags = ("--mode=sample", "--config.sampling.num_samples=8", "--config.sampling.batch_size=8")
    _launch(gcs_bucket, local, compile_cache, "run", *RUN, *flags)
    stem = f"run/samples/1step_step{STEPS:08d}"
    with np.load(io.BytesIO(gcs_bucket.read(stem + ".npz"))) as f:
        assert f["images"].dtype == np.uint8 and f["images"].shape == (8, 8, 8, 1)
        assert f["labels"].shape == (8,)
    assert gcs_bucket.read(stem + ".png").startswith(b"\x89PNG")
    assert local.undeclared() == []


def test_eval_mode_on_digits_writes_to_the_bucket(gcs_bucket, trained, compile_cache, tmp_path):
    local = Local(tmp_path)
    flags = ("--mode=eval", "--config.eval.num_samples=16", "--config.eval.grid_samples=16")
    _launch(gcs_bucket, local, compile_cache, "run", *RUN, *flags)
    metrics = json.loads(gcs_bucket.read(f"run/eval/metrics_step{STEPS:08d}.json"))
    assert metrics["step"] == STEPS and metrics["num_samples"] == 16
    assert np.isfinite(metrics["1step/digits_fd"]) and 0 <= metrics["1step/digits_accuracy"] <= 1
    assert gcs_bucket.exists(f"run/eval/1step_step{STEPS:08d}.png")
    assert local.undeclared() == []
    cached = [p.name for p in (local.root / DECLARED_CACHE).iterdir()]
    assert any(name.startswith("digits_classifier_") for name in cached)


def test_lcsc_mode_killed_and_resumed_on_the_bucket(gcs_bucket, trained, compile_cache, tmp_path):
    local = Local(tmp_path)
    state = f"run/lcsc/{search_state.FILE}"  # rewritten after every evaluation
    evaluated = lambda: gcs_bucket.exists(state) and json.loads(gcs_bucket.read(state))["others"]
    process = _start(gcs_bucket, local, compile_cache, "run", *RUN, *LCSC)
    _kill_when(evaluated, process, local)
    killed = json.loads(gcs_bucket.read(state))
    assert not gcs_bucket.exists("run/lcsc/heldout.json")
    _launch(gcs_bucket, local, compile_cache, "run", *RUN, *LCSC)
    final = json.loads(gcs_bucket.read(state))
    assert killed["others"] and killed["others"].items() <= final["others"].items()
    generations = json.loads(gcs_bucket.read("run/lcsc/generations.json"))
    assert [g["generation"] for g in generations] == [1, 2]
    heldout = json.loads(gcs_bucket.read("run/lcsc/heldout.json"))
    assert "lcsc" in json.dumps(heldout)
    for name in ("coefficients.json", "fitness.png", "coefficients.png"):
        assert gcs_bucket.exists(f"run/lcsc/{name}")
    assert gcs_bucket.exists(f"run/lcsc/merged/checkpoints/{STEPS}/commit_success.txt")
    assert local.undeclared() == []


def test_encode_mode_writes_latents_to_the_bucket(gcs_bucket, compile_cache, tmp_path):
    """A tiny random VAE and 12 images (as in test_latent_workflow.py), read from the bucket;
    the latent dataset written to it."""
    from test_latent_workflow import NUM_IMAGES, _config, _write_inputs

    c = _config(tmp_path / "inputs")
    _, labels = _write_inputs(c)
    gcs_bucket.write("enc/vae.safetensors", pathlib.Path(c.vae.weights_path).read_bytes())
    gcs_bucket.write("enc/images.npz", pathlib.Path(c.vae.images.path).read_bytes())
    v, d = c.vae, c.data
    flags = [
        "--mode=encode",
        f"--config.vae.block_out_channels={tuple(v.block_out_channels)}",
        f"--config.vae.layers_per_block={v.layers_per_block}",
        f"--config.vae.norm_num_groups={v.norm_num_groups}",
        "--config.vae.weights_path=gs://bucket/enc/vae.safetensors",
        f"--config.vae.batch_size={v.batch_size}",
        f"--config.vae.part_images={v.part_images}",
        "--config.vae.images.name=npz",
        "--config.vae.images.path=gs://bucket/enc/images.npz",
        f"--config.vae.images.image_size={v.images.image_size}",
        f"--config.vae.images.channels={v.images.channels}",
        f"--config.vae.images.num_classes={v.images.num_classes}",
        "--config.data.name=latents",
        "--config.data.path=gs://bucket/enc/latents.npz",
        f"--config.data.image_size={d.image_size}",
        f"--config.data.channels={d.channels}",
        f"--config.data.num_classes={d.num_classes}",
    ]
    local = Local(tmp_path / "local")
    _launch(gcs_bucket, local, compile_cache, "enc", *flags)
    with np.load(io.BytesIO(gcs_bucket.read("enc/latents.npz"))) as f:
        stored = {k: f[k] for k in f.files}
    assert stored["latents"].shape == (NUM_IMAGES, 4, 4, 4)
    assert np.isfinite(stored["latents"]).all()
    np.testing.assert_array_equal(stored["labels"], labels)
    np.testing.assert_allclose(stored["mean"], stored["latents"].mean(0), atol=1e-6)
    assert gcs_bucket.list("enc/latents.npz.parts") == []  # the parts are removed at the end
    assert local.undeclared() == []
