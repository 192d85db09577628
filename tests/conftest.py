"""Test set-up: 4 simulated CPU devices, so every data-parallel path runs as on a real node;
and `gcs_bucket`, a local Google Cloud Storage emulator for the gs:// tests."""

import jax
import pytest

jax.config.update("jax_num_cpu_devices", 4)


@pytest.fixture(scope="session")
def gcs_bucket(tmp_path_factory):
    """gs://bucket on fake-gcs-server at 127.0.0.1 (tests/gcs_emulator.py); `.env` points a
    fresh process at it, `.list`/`.read`/`.download` look into it from the test process."""
    import gcs_emulator  # here: the other tests need none of its packages

    bucket = gcs_emulator.start(str(tmp_path_factory.mktemp("gcs")))
    yield bucket
    bucket.close()
