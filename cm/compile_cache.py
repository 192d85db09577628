"""JAX's persistent compilation cache, on by default (`training.compilation_cache_dir`).

A compiled program is written to the cache folder under a key of its HLO, compile options,
devices and JAX/XLA versions, and a later process that compiles the same program on the same
kind of devices loads it instead (a resumed run, `--mode=sample` after training, a benchmark
run twice). The folder is local to each host (default `~/.cache/cm/jax`, expanded through
cm/io/fileio.py); "" turns the cache off. `training.compilation_cache_min_compile_seconds`
(default 0) writes every program, also the small ones of CPU runs that compile in under
JAX's own 1 s threshold. Entries are never evicted: delete the folder at any time.

An explicit `JAX_COMPILATION_CACHE_DIR` in the environment wins over the config (JAX's own
setting, e.g. a cache shared by the processes of a test module).

JAX reads the setting at the first compilation of the process, so `configure` runs before
anything is compiled (cm/modes.py: first thing of every mode). A cache entry is trusted code:
keep the folder private to the user.
"""

import os

import jax

from cm.io import fileio

ENV_DIR = "JAX_COMPILATION_CACHE_DIR"  # JAX's own variable; when set it wins over the config


def configure(directory: str, min_compile_seconds: float = 0.0):
    """Turns the persistent cache on in `directory` (off for ""); returns the path or None."""
    directory = os.environ.get(ENV_DIR) or directory
    if not directory:
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    if min_compile_seconds < 0:
        raise ValueError(
            f"training.compilation_cache_min_compile_seconds is {min_compile_seconds}; "
            "set it to a number >= 0 (0 caches every program)."
        )
    path = fileio.path(directory)
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", os.fspath(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_seconds))
    return path


def configure_from(config):
    """`configure` with the config's training.compilation_cache_* fields."""
    t = config.training
    return configure(t.compilation_cache_dir, t.compilation_cache_min_compile_seconds)
