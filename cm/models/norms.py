"""Normalization layers, selectable per network: GroupNorm (default) or sLCT's NsLN.

`make_norm` is used for every norm of every network (residual blocks, attention, output), so
`norm="nsln"` replaces them all, as sLCT prescribes. Statistics are always float32.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from cm.models.inits import Initializer

ZEROS: Initializer = nn.initializers.zeros
MIN_CHANNELS_PER_GROUP = 4  # EDM's GroupNorm: num_groups = min(num_groups, channels // 4)


# sLCT's NsLN (docs/methods.md section 3), whatever eps the host network's GroupNorms use.
NSLN_EPS = 1e-5


class NsLayerNorm(nn.Module):
    """Non-scaling LayerNorm (sLCT): per-sample normalization over all of (H, W, C), no scale,
    a learnable bias of shape (H, W, C) initialized to zero."""

    epsilon: float = NSLN_EPS
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):  # [B, H, W, C] -> [B, H, W, C]
        bias = self.param("bias", ZEROS, x.shape[1:], jnp.float32)  # [H, W, C]
        x = x.astype(jnp.float32)
        mean = x.mean(axis=(1, 2, 3), keepdims=True)  # [B, 1, 1, 1]
        var = jnp.square(x - mean).mean(axis=(1, 2, 3), keepdims=True)  # [B, 1, 1, 1]
        y = (x - mean) * jax.lax.rsqrt(var + self.epsilon)
        return (y + bias).astype(self.dtype)


def group_count(channels: int, num_groups: int) -> int:
    """Groups for GroupNorm: at most `num_groups`, at least 4 channels per group (as EDM), and a
    divisor of `channels`, so that narrow test networks work (the paper nets always divide)."""
    groups = max(1, min(num_groups, channels // MIN_CHANNELS_PER_GROUP))
    while channels % groups:
        groups -= 1
    return groups


def _group_norm(channels, num_groups, eps, dtype, name):
    """GroupNorm with the two-pass variance mean((x - mean)^2), as PyTorch computes it; flax's
    default one-pass E[x^2] - E[x]^2 loses digits when |mean| >> std (cancellation)."""
    groups = group_count(channels, num_groups)
    return nn.GroupNorm(
        groups,
        epsilon=eps,
        dtype=dtype,
        param_dtype=jnp.float32,
        use_fast_variance=False,
        name=name,
    )


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
