"""--mode=fid_stats and --mode=eval end to end on a tiny trained model, and periodic evaluation.

The Inception runs with random weights (written as an .npz of pytorch-fid's state dict) and at
75x75 instead of 299x299, so that the whole Inception path runs in seconds on a CPU.
"""

import json
import math
import os

import jax
import numpy as np
import pytest
from helpers import tiny_config

from cm import modes, train
from cm.evaluation import inception, reference_stats
from cm.evaluation import run as evaluation

pytestmark = pytest.mark.slow  # trains or launches processes


def _random_weights_npz(path: str) -> str:
    """Random FID Inception weights under pytorch-fid's names and layouts (numpy, instant):
    kernels ~ N(0, 1 / fan_in), BatchNorm statistics 0 and 1, scales 1, biases 0."""
    rng = np.random.default_rng(0)
    shapes = jax.eval_shape(inception.init_variables, jax.random.key(0))
    fill = {"kernel": "weight", "scale": "weight", "bias": "bias"}
    fill |= {"mean": "running_mean", "var": "running_var"}
    state = {}
    for keys, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]:
        *modules, name = [k.key for k in keys[1:]]
        shape = leaf.shape
        if name == "kernel":  # Flax HWIO / [in, out] -> torch OIHW / [out, in]
            fan_in = int(np.prod(shape[:-1]))
            shape = shape[::-1] if len(shape) == 2 else (shape[3], shape[2], shape[0], shape[1])
            value = rng.normal(0.0, fan_in**-0.5, shape).astype(np.float32)
        else:
            value = np.full(shape, 1.0 if name in ("scale", "var") else 0.0, np.float32)
        state[".".join([*modules, fill[name]])] = value
    np.savez(path, **state)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A workdir with a 2-step tiny run whose periodic evaluation (digits) ran at step 2.

    One sampler (1 step) and one checkpoint keep the compile and write times down."""
    workdir = tmp_path_factory.mktemp("run")
    c = tiny_config()
    c.training.num_steps = 2
    c.training.snapshot_every = 0
    c.sampling.consistency_levels = ((),)
    c.eval.digits_classifier_path = str(workdir / "digits_classifier.npz")
    c.eval.every = 2
    c.eval.train_num_samples = 16
    recorded = []

    def recording_periodic(*args):
        evaluate = evaluation.periodic(*args)
        return lambda params: recorded.append(evaluate(params)) or recorded[-1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, "periodic_eval", recording_periodic)
        train.train_and_evaluate(c, str(workdir))
    return c, workdir, recorded


def test_periodic_evaluation_during_training(trained):
    _, _, recorded = trained
    assert len(recorded) == 1
    assert set(recorded[0]) == {f"eval/1step/digits_{m}" for m in ("fd", "fd_matched", "accuracy")}
    assert all(math.isfinite(v) for v in recorded[0].values())


def test_fid_stats_and_eval_modes(trained, tmp_path, monkeypatch):
    c, workdir, _ = trained
    monkeypatch.setattr(inception, "INPUT_SIZE", inception.MIN_INPUT_SIZE)  # speed only
    c = c.copy_and_resolve_references()
    c.data.split = "test"  # 297 reference images
    c.eval.metrics = "digits,inception"
    c.eval.inception_path = _random_weights_npz(str(tmp_path / "inception.npz"))
    c.eval.num_samples = 24
    c.eval.batch_size = 16
    c.eval.is_splits = 2
    c.eval.pr_samples = 8
    c.eval.grid_samples = 10

    stats = modes.fid_stats(c, str(workdir))
    with np.load(workdir / "fid_stats" / "digits-digits-test-8px.npz") as f:
        assert f["mu"].shape == (2048,) and f["sigma"].shape == (2048, 2048)
        assert f["mu"].dtype == np.float64 and int(f["count"]) == 297
        assert f["features"].shape == (8, 2048)
        np.testing.assert_array_equal(f["sigma"], stats["sigma"])

    results = modes.evaluate(c, str(workdir))
    with open(workdir / "eval" / "metrics_step00000002.json") as f:
        saved = json.load(f)
    assert saved == pytest.approx(results)
    per_sampler = ["digits_fd", "digits_fd_matched", "digits_accuracy", "fid", "is_mean"]
    per_sampler += ["is_std", "precision", "recall"]
    expected = {f"1step/{m}" for m in per_sampler}
    expected |= {"real_test/digits_fd", "real_test/digits_accuracy", "step", "num_samples"}
    assert set(saved) == expected
    assert all(math.isfinite(v) for v in saved.values())
    assert saved["real_test/digits_accuracy"] > 0.9  # the classifier itself is good
    assert saved["step"] == 2 and saved["num_samples"] == 24
    assert os.path.exists(workdir / "eval" / "1step_step00000002.png")

    # Statistics of other data than the config's are refused.
    with pytest.raises(ValueError, match="statistics of digits-digits-test-8px, but the config"):
        stats_file = str(workdir / "fid_stats" / "digits-digits-test-8px.npz")
        reference_stats.load(stats_file, "digits-digits-train-8px")


def test_unknown_metric_and_missing_weights_are_one_sentence(trained, tmp_path):
    c = trained[0].copy_and_resolve_references()
    c.eval.metrics = "kid"
    with pytest.raises(ValueError, match=r"Unknown eval.metrics \['kid'\]; valid: \['digits'"):
        modes.evaluate(c, str(trained[1]))
    c.eval.inception_path = str(tmp_path / "nowhere.pth")
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05-6726825d.pth"):
        modes.fid_stats(c, str(tmp_path))
