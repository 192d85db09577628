"""Every random stream of a run, each with its own tag, so that no two purposes share a key.

A stream's key is fold_in(key(seed), TAG) and its i-th key is fold_in(stream key, i): the tag
comes before the index, so the init key can never equal a training step's key, nor image i's
posterior key the key of step i (which happened when both were fold_in(key(seed), index)).
Host-side numpy streams get the same treatment: their SeedSequence starts (seed, TAG, ...).
"""

import jax

# One tag per purpose (arbitrary distinct constants; changing one changes that stream).
JAX_STREAMS = {
    "init": 0x1417,  # network initialization
    "train": 0x7A11,  # per training step: noise levels, noise, dropout, augmentation
    "sample": 0x5A3E,  # per sampling batch: labels and sampler noise
    "vae_posterior": 0x0AE5,  # per image: the VAE posterior sample of --mode=encode
}
NUMPY_STREAMS = {
    "epoch_permutation": 0x9E12,  # data order of each epoch
    "flip": 0x466C6970,  # horizontal flips per global row
    "ot_noise": 0x07C0,  # sLCT's coupled noise per group
}


def stream(seed: int, name: str) -> jax.Array:
    """The base key of one purpose."""
    return jax.random.fold_in(jax.random.key(seed), JAX_STREAMS[name])


def indexed(seed: int, name: str, index) -> jax.Array:
    """Key number `index` (a step, a batch, an image; may be traced) of one purpose."""
    return jax.random.fold_in(stream(seed, name), index)


def numpy_seed(seed: int, name: str, *index: int) -> tuple:
    """A SeedSequence entropy (seed, tag, *index) for numpy's default_rng."""
    return (seed, NUMPY_STREAMS[name], *index)
