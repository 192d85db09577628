"""Test set-up: 4 simulated CPU devices, so every data-parallel path runs as on a real node;
XLA:CPU's fast-compiling backend and one persistent compilation cache for the run; and
`gcs_bucket`, a local Google Cloud Storage emulator for the gs:// tests."""

import os
import shutil
import tempfile

import jax
import pytest

from cm import compile_cache

# XLA:CPU's LLVM backend at -O0, for this process, the xdist workers and every process a test
# starts (they inherit the environment; helpers.subprocess_env keeps it): the suite is mostly
# compilation of tiny networks, which this makes about 40 % faster. Results differ from -O2 in
# the last bits, so the suite's bitwise comparisons are between programs compiled alike, and
# tests/data fixtures are written under the same flag.
FAST_COMPILE = "--xla_backend_optimization_level=0"
if FAST_COMPILE not in os.environ.get("XLA_FLAGS", ""):  # read when the backend starts
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()

jax.config.update("jax_num_cpu_devices", 4)

_OWNED_CACHE = pytest.StashKey[str]()  # the cache folder this process made (the controller)


def pytest_configure(config):
    """One JAX compilation cache per test run, shared by the xdist workers (they inherit the
    controller's environment) and by every launch.py process a test starts: the suite compiles
    the same tiny programs in many tests, and the cache compiles each once. A new, empty folder
    per run, so that a run's time is what a fresh machine sees; removed at the end."""
    if compile_cache.ENV_DIR not in os.environ:
        os.environ[compile_cache.ENV_DIR] = tempfile.mkdtemp(prefix="cm-tests-jax-cache-")
        config.stash[_OWNED_CACHE] = os.environ[compile_cache.ENV_DIR]
    compile_cache.configure(os.environ[compile_cache.ENV_DIR])


def pytest_unconfigure(config):
    owned = config.stash.get(_OWNED_CACHE, None)
    if owned:
        shutil.rmtree(owned, ignore_errors=True)


@pytest.fixture(scope="session")
def gcs_bucket(tmp_path_factory):
    """gs://bucket on fake-gcs-server at 127.0.0.1 (tests/gcs_emulator.py); `.env` points a
    fresh process at it, `.list`/`.read`/`.download` look into it from the test process."""
    import gcs_emulator  # here: the other tests need none of its packages

    bucket = gcs_emulator.start(str(tmp_path_factory.mktemp("gcs")))
    yield bucket
    bucket.close()
