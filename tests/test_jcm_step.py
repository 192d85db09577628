"""benchmarks/jcm_step.py without the reference code (it is never needed here): the one-line
error when --jcm_dir is not a checkout, jcm's config files loaded beside cm's `configs`
package, and the replicated state laid out as pmap lays out its outputs."""

import sys

import jax
import numpy as np
import pytest

from benchmarks import jcm_step


@pytest.mark.parametrize("where", ["missing", "not_a_checkout", "unset"])
def test_no_checkout_is_one_error_line_naming_the_fix(tmp_path, capsys, where):
    argv = {
        "missing": [f"--jcm_dir={tmp_path / 'nowhere'}"],
        "not_a_checkout": [f"--jcm_dir={tmp_path}"],  # a folder without jcm/losses.py
        "unset": [],
    }[where]
    assert jcm_step.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --jcm_dir=") and err.count("\n") == 1
    assert "git clone https://github.com/openai/consistency_models_cifar10 DIR" in err


def test_bad_count_is_one_error_line(capsys):
    assert jcm_step.main(["--steps=0", "--jcm_dir=/nowhere"]) == 2
    assert capsys.readouterr().err == "error: --steps=0; pass a count of at least 1.\n"


def test_jcm_config_files_load_beside_cm_configs(tmp_path):
    # The shape of jcm's configs/: a config importing another through `configs.<file>`.
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "defaults.py").write_text("def get():\n    return {'nf': 128}\n")
    (tmp_path / "configs" / "ct.py").write_text(
        "from configs.defaults import get\n\n\ndef get_config():\n    return get() | {'ct': 1}\n"
    )
    import configs.cifar10_ict as ours

    assert jcm_step.jcm_config_file(str(tmp_path), "ct") == {"nf": 128, "ct": 1}
    assert sys.modules["configs.cifar10_ict"] is ours  # cm's package is back
    assert not any(k in sys.modules for k in ("configs.ct", "configs.defaults"))
    assert sys.modules["configs"].__path__ != [str(tmp_path / "configs")]


def test_replicated_state_is_laid_out_as_pmap_outputs():
    # A pmapped step fed its own outputs must not compile again (the conftest's 4 devices).
    n = jax.local_device_count()
    state = {"step": 0, "w": np.arange(3.0, dtype=np.float32)}
    replicated = jcm_step.replicate(state, "batch")
    assert replicated["w"].shape == (n, 3) and replicated["step"].shape == (n,)
    np.testing.assert_array_equal(replicated["w"][n - 1], [0.0, 1.0, 2.0])
    step = jax.pmap(lambda s: {"step": s["step"] + 1, "w": 2 * s["w"]}, axis_name="batch")
    jax.monitoring.register_event_duration_secs_listener(jcm_step._on_duration)
    try:
        first = jcm_step.timed(lambda: step(replicated))
        out = step(replicated)
        second = jcm_step.timed(lambda: step(out))
    finally:
        jax.monitoring.unregister_event_duration_listener(jcm_step._on_duration)
    assert out["w"].sharding == replicated["w"].sharding
    assert first["compiles"] == 1 and second["compiles"] == 0
    np.testing.assert_array_equal(step(out)["step"], np.full(n, 2))
