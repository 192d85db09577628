"""theta = sum_i a_i theta_i over snapshot trees, accumulated in float32.

Two ways, same numbers: `merge_streaming` reads one snapshot at a time from disk (host memory
holds one tree plus the sum: for models whose K snapshots do not fit anywhere), and
`StackedSnapshots` keeps the K trees stacked on the devices ([K, ...] per leaf) so that each
candidate of a search is one compiled contraction with the coefficients as a traced argument.
"""

import functools

import jax
import jax.numpy as jnp


@functools.partial(jax.jit, donate_argnums=(0,))
def _accumulate(total, a, tree):
    """total + a * tree in float32 (total donated)."""
    return jax.tree.map(lambda t, x: t + a * x.astype(jnp.float32), total, tree)


def _as_float32(tree):
    return jax.tree.map(lambda x: x.astype(jnp.float32), tree)


def merge_streaming(load, keys, coefficients):
    """sum_i coefficients[i] * load(keys[i]), loading one tree at a time (none for a zero
    coefficient); float32 leaves cast back to the snapshots' dtypes. load(key) -> parameter
    tree on the devices."""
    total, dtypes = None, None
    for key, a in zip(keys, coefficients, strict=True):
        if a == 0:
            continue
        tree = load(key)
        if total is None:
            dtypes = jax.tree.map(lambda x: x.dtype, tree)
            total = jax.jit(lambda t: jax.tree.map(jnp.zeros_like, _as_float32(t)))(tree)
        total = _accumulate(total, jnp.float32(a), tree)
        del tree
    return jax.tree.map(lambda t, d: t.astype(d), total, dtypes)


@functools.partial(jax.jit, donate_argnums=(0,))
def _put(stack, index, tree):
    return jax.tree.map(lambda s, x: s.at[index].set(x.astype(s.dtype)), stack, tree)


@jax.jit
def _contract(stack, coefficients):
    """[K] x [K, ...] -> [...] per leaf, in float32 at full precision (no TF32/bf16 passes)."""
    return jax.tree.map(
        lambda s: jnp.einsum("k,k...->...", coefficients, s, precision=jax.lax.Precision.HIGHEST),
        stack,
    )


class StackedSnapshots:
    """K snapshot trees stacked on the devices; merge(a) is one compiled call for every a."""

    def __init__(self, load, keys, sharding):
        first = load(keys[0])
        self.dtypes = jax.tree.map(lambda x: x.dtype, first)
        num = len(keys)
        make = jax.jit(
            lambda t: jax.tree.map(lambda x: jnp.zeros((num, *x.shape), jnp.float32), t),
            out_shardings=sharding,
        )
        self.stack = _put(make(first), 0, first)
        del first
        for i, key in enumerate(keys[1:], start=1):
            self.stack = _put(self.stack, i, load(key))
        self.num = num

    def merge(self, coefficients):
        a = jnp.asarray(coefficients, jnp.float32)  # [K]
        merged = _contract(self.stack, a)
        return jax.tree.map(lambda t, d: t.astype(d), merged, self.dtypes)
