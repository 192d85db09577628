"""Normalization layers, selectable per network: GroupNorm (default) or sLCT's NsLN.

`make_norm` is used for every norm of every network (residual blocks, attention, output), so
`norm="nsln"` replaces them all, as sLCT prescribes. Statistics are always float32.

Both standardize groups of values with `standardize_groups`: the two-pass variance
mean((x - mean)^2) that PyTorch computes (flax's fast E[x^2] - E[x]^2 loses digits when
|mean| >> std), and a forward-mode derivative written out (a `custom_jvp`), from which JAX also
derives the backward pass: two reductions and one elementwise pass instead of autodiff's chain
through the two moments (a GroupNorm's forward + backward on the CPU: 24 instead of 32 ms of
CPU time, BENCHMARKS.md "CPU speed"). Unlike a `custom_vjp`, it keeps `jax.jvp` working (sCT,
sCD, MeanFlow) and its gradient.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from cm.models.inits import Initializer

ZEROS: Initializer = nn.initializers.zeros
ONES: Initializer = nn.initializers.ones
MIN_CHANNELS_PER_GROUP = 4  # EDM's GroupNorm: num_groups = min(num_groups, channels // 4)


# sLCT's NsLN (docs/methods.md section 3), whatever eps the host network's GroupNorms use.
NSLN_EPS = 1e-5


def _group_view(x, groups: int):
    """[B, H, W, C] -> [B, H * W, G, C / G]: the values of each (sample, group) on axes 1, 3."""
    b, h, w, c = x.shape
    return x.reshape(b, h * w, groups, c // groups)


GROUP_AXES = (1, 3)  # of _group_view


def _standardized(xg, epsilon: float):
    """(xhat, rstd) of grouped float32 values [B, N, G, K]: (x - mean) / sqrt(var + eps), the
    moments over each group; rstd is [B, 1, G, 1]."""
    centered = xg - xg.mean(axis=GROUP_AXES, keepdims=True)
    rstd = jax.lax.rsqrt(jnp.square(centered).mean(axis=GROUP_AXES, keepdims=True) + epsilon)
    return centered * rstd, rstd


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _standardize_grouped(xg, epsilon: float):
    return _standardized(xg, epsilon)[0]


@_standardize_grouped.defjvp
def _standardize_grouped_jvp(epsilon, primals, tangents):
    """d xhat = rstd (dx - mean(dx) - xhat mean(xhat dx)), means over each group (d of
    (x - mu) / sigma with d mu = mean(dx), d sigma = mean(xhat dx)); linear in dx, so JAX
    transposes it into the backward pass."""
    (xg,), (dx,) = primals, tangents
    xhat, rstd = _standardized(xg, epsilon)
    mean_dx = dx.mean(axis=GROUP_AXES, keepdims=True)
    mean_xhat_dx = (xhat * dx).mean(axis=GROUP_AXES, keepdims=True)
    return xhat, rstd * (dx - mean_dx - xhat * mean_xhat_dx)


def standardize_groups(x, groups: int, epsilon: float):
    """[B, H, W, C] -> float32 [B, H, W, C], each of `groups` channel groups of each sample to
    zero mean and unit variance (biased variance + epsilon, as PyTorch's GroupNorm)."""
    xg = _group_view(x.astype(jnp.float32), groups)
    return _standardize_grouped(xg, float(epsilon)).reshape(x.shape)


class GroupNorm(nn.Module):
    """GroupNorm with a per-channel scale and bias (flax's `GroupNorm` parameters: "scale"
    ones, "bias" zeros, float32), statistics and affine in float32, output in `dtype`."""

    num_groups: int
    epsilon: float
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):  # [B, H, W, C] -> [B, H, W, C]
        c = x.shape[-1]
        scale = self.param("scale", ONES, (c,), jnp.float32)  # [C]
        bias = self.param("bias", ZEROS, (c,), jnp.float32)  # [C]
        y = standardize_groups(x, self.num_groups, self.epsilon)
        return (y * scale + bias).astype(self.dtype)


class NsLayerNorm(nn.Module):
    """Non-scaling LayerNorm (sLCT): per-sample normalization over all of (H, W, C), no scale,
    a learnable bias of shape (H, W, C) initialized to zero."""

    epsilon: float = NSLN_EPS
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):  # [B, H, W, C] -> [B, H, W, C]
        bias = self.param("bias", ZEROS, x.shape[1:], jnp.float32)  # [H, W, C]
        y = standardize_groups(x, 1, self.epsilon)  # one group: the whole sample
        return (y + bias).astype(self.dtype)


def group_count(channels: int, num_groups: int) -> int:
    """Groups for GroupNorm: at most `num_groups`, at least 4 channels per group (as EDM), and a
    divisor of `channels`, so that narrow test networks work (the paper nets always divide)."""
    groups = max(1, min(num_groups, channels // MIN_CHANNELS_PER_GROUP))
    while channels % groups:
        groups -= 1
    return groups


def _group_norm(channels, num_groups, eps, dtype, name):
    """GroupNorm over group_count(channels, num_groups) groups."""
    return GroupNorm(group_count(channels, num_groups), epsilon=eps, dtype=dtype, name=name)


def _ns_layer_norm(channels, num_groups, eps, dtype, name):
    """NsLN with its own eps: the network's `eps` (1e-6 in SongUNet) belongs to its GroupNorms."""
    del channels, num_groups, eps
    return NsLayerNorm(dtype=dtype, name=name)


NORMS = {"group": _group_norm, "nsln": _ns_layer_norm}


def make_norm(kind: str, channels: int, num_groups: int, eps: float, dtype, name: str):
    """The norm module named by `kind` (a key of NORMS) for a `channels`-wide input."""
    if kind not in NORMS:
        raise ValueError(f"Unknown norm {kind!r}; valid: {sorted(NORMS)}.")
    return NORMS[kind](channels, num_groups, eps, dtype, name)
