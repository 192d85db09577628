"""The persistent compilation cache (training.compilation_cache_dir, cm/compile_cache.py): set
through the file layer, off for "", the environment's JAX setting wins; a second fresh process
with the same cache folder loads the training step instead of compiling it."""

import os
import subprocess

import jax
import pytest
from helpers import launch_cmd, subprocess_env

from cm import compile_cache

SETTINGS = (
    "jax_enable_compilation_cache",
    "jax_compilation_cache_dir",
    "jax_persistent_cache_min_compile_time_secs",
)


@pytest.fixture
def restore_jax_settings(monkeypatch):
    """The test process's cache settings come back after the test (nothing compiles inside)."""
    monkeypatch.delenv(compile_cache.ENV_DIR, raising=False)
    saved = {name: getattr(jax.config, name) for name in SETTINGS}
    yield
    for name, value in saved.items():
        jax.config.update(name, value)


def test_configure_expands_through_the_file_layer(restore_jax_settings, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    path = compile_cache.configure("~/.cache/cm/jax", 0.0)
    assert str(path) == str(tmp_path / ".cache" / "cm" / "jax")
    assert jax.config.jax_compilation_cache_dir == str(path)
    assert jax.config.jax_enable_compilation_cache is True
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0


def test_empty_directory_turns_the_cache_off(restore_jax_settings):
    assert compile_cache.configure("", 0.0) is None
    assert jax.config.jax_enable_compilation_cache is False


def test_environment_wins_and_negative_threshold_is_refused(restore_jax_settings, monkeypatch):
    monkeypatch.setenv(compile_cache.ENV_DIR, "/tmp/elsewhere")
    assert str(compile_cache.configure("~/.cache/cm/jax", 2.5)) == "/tmp/elsewhere"
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 2.5
    with pytest.raises(ValueError, match="compilation_cache_min_compile_seconds is -1"):
        compile_cache.configure("/tmp/x", -1)


def _train(workdir, cache_dir) -> str:
    """stderr of a 1-step tiny training run in a fresh process, compile logging on."""
    env = subprocess_env(1)
    env.pop(compile_cache.ENV_DIR, None)
    env["JAX_LOG_COMPILES"] = "1"  # a cache hit is logged as a warning
    cmd = launch_cmd(
        str(workdir),
        "--config.training.num_steps=1",
        f"--config.training.compilation_cache_dir={cache_dir}",
    )
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


@pytest.mark.slow
def test_second_fresh_process_loads_the_training_step_from_the_cache(tmp_path):
    cache = tmp_path / "cache"
    hit = "Persistent compilation cache hit for 'jit_step_fn'"
    first = _train(tmp_path / "first", cache)
    assert hit not in first
    entries = [name for name in os.listdir(cache) if name.endswith("-cache")]
    assert any("jit_step_fn" in name for name in entries), entries
    second = _train(tmp_path / "second", cache)  # a new workdir: a fresh run, same program
    assert hit in second
