"""gs:// workdirs against a local GCS emulator (tests/gcs_emulator.py, fixture `gcs_bucket`).

Every run is a fresh process with the emulator's environment, as a user's would be: first each
storage library on its own (orbax, etils.epath, clu's TensorBoard writer), then launch.py.
"""

import subprocess
import sys
import textwrap

import pytest
from helpers import subprocess_env

pytestmark = pytest.mark.slow


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
