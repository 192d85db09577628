"""No two purposes share a random key (cm/keys.py)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from cm import keys


def _data(key) -> bytes:
    return np.asarray(jax.random.key_data(key)).tobytes()


def test_streams_differ_from_each_other_and_from_every_index_of_the_others():
    """The collisions the tags remove: fold_in(key(seed), 0x1417) (the old init key) was the
    training key of step 5143, and image i's posterior key was the training key of step i."""
    seed, indices = 0, jnp.arange(6000)
    seen = {}
    for name in keys.JAX_STREAMS:
        indexed = jax.vmap(lambda i, name=name: jax.random.key_data(keys.indexed(seed, name, i)))
        rows = np.asarray(indexed(indices))  # [6000, key words]
        for data in [_data(keys.stream(seed, name))] + [row.tobytes() for row in rows]:
            assert data not in seen, (name, seen.get(data))
            seen[data] = name
    assert len(seen) == len(keys.JAX_STREAMS) * (len(indices) + 1)
    old_init = _data(jax.random.fold_in(jax.random.key(seed), 0x1417))
    assert old_init != _data(keys.indexed(seed, "train", 0x1417))
    assert _data(keys.indexed(seed, "train", 7)) != _data(keys.indexed(seed, "vae_posterior", 7))


def test_numpy_streams_differ_for_equal_indices():
    draws = {
        name: np.random.default_rng(keys.numpy_seed(0, name, 3)).random(4)
        for name in keys.NUMPY_STREAMS
    }
    for a, b in itertools.combinations(draws, 2):
        assert not np.allclose(draws[a], draws[b]), (a, b)


def test_stream_tags_are_unique():
    assert len(set(keys.JAX_STREAMS.values())) == len(keys.JAX_STREAMS)
    assert len(set(keys.NUMPY_STREAMS.values())) == len(keys.NUMPY_STREAMS)
