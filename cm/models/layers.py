"""Building blocks of the U-Nets: noise embeddings, norms, FIR resampling, attention, resblocks.

Layout is NHWC throughout. Parameters are float32; `dtype` is the compute dtype. Initializers
follow EDM's networks.py: Xavier-uniform weights, zero biases, exact zeros for the last layer of
every residual branch, so that a fresh block is the identity (up to the skip scale).
"""

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any

XAVIER = nn.initializers.xavier_uniform()
ZEROS = nn.initializers.zeros
ATTN_INIT = nn.initializers.variance_scaling(0.2, "fan_avg", "uniform")  # EDM: xavier * sqrt(0.2)


# ----------------------------------------------------------------------------------------------
# Noise embeddings: [B] float noise labels -> [B, num_channels] float32 features, no parameters.


def positional_embedding(x, num_channels: int, max_positions: int = 10000):
    """Sinusoids of DDPM++/ADM (EDM `PositionalEmbedding`, endpoint=True), ordered (sin, cos).

    The caller passes c_noise = 250 ln(sigma); frequencies go from 1 to 1/max_positions.
    """
    half = num_channels // 2
    freqs = (1.0 / max_positions) ** (np.arange(half) / max(half - 1, 1))  # [half]
    x = x[:, None] * jnp.asarray(freqs, jnp.float32)[None, :]  # [B, half]
    return jnp.concatenate([jnp.sin(x), jnp.cos(x)], axis=-1)


def fourier_embedding(x, num_channels: int, scale: float, seed: int):
    """Random Fourier features of NCSN++ (EDM `FourierEmbedding`), ordered (sin, cos).

    The frequencies are frozen: drawn with numpy from `seed` when the function is traced, so they
    are compile-time constants, identical for every init key and never in the parameters.
    The caller passes c_noise = 0.25 ln(sigma).
    """
    freqs = np.random.RandomState(seed).randn(num_channels // 2) * scale  # [C/2]
    x = x[:, None] * jnp.asarray(2 * np.pi * freqs, jnp.float32)[None, :]  # [B, C/2]
    return jnp.concatenate([jnp.sin(x), jnp.cos(x)], axis=-1)


EMBEDDINGS = {
    "positional": lambda x, ch, scale, seed: positional_embedding(x, ch),
    "fourier": fourier_embedding,
}


class NoiseEmbedding(nn.Module):
    """Parameter-free embedding of the noise label; a module so its output can be inspected."""

    kind: str
    num_channels: int
    fourier_scale: float = 16.0
    fourier_seed: int = 0

    def __call__(self, noise_labels):  # [B] -> [B, num_channels] float32
        x = noise_labels.astype(jnp.float32)  # sinusoids of 250 ln(sigma) need float32
        return EMBEDDINGS[self.kind](x, self.num_channels, self.fourier_scale, self.fourier_seed)


# ----------------------------------------------------------------------------------------------
# Norms. Statistics are always computed in float32.


class NsLayerNorm(nn.Module):
    """Non-scaling LayerNorm (sLCT): per-sample normalization over all of (H, W, C), no scale,
    a learnable bias of shape (H, W, C) initialized to zero."""

    epsilon: float = 1e-5
    dtype: Dtype = jnp.float32

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
    divisor of `channels`, so that narrow test networks work."""
    groups = max(1, min(num_groups, channels // 4))
    while channels % groups:
        groups -= 1
    return groups


def _group_norm(channels, num_groups, eps, dtype, name):
    groups = group_count(channels, num_groups)
    return nn.GroupNorm(groups, epsilon=eps, dtype=dtype, param_dtype=jnp.float32, name=name)


def _ns_layer_norm(channels, num_groups, eps, dtype, name):
    del channels, num_groups
    return NsLayerNorm(epsilon=eps, dtype=dtype, name=name)


NORMS = {"group": _group_norm, "nsln": _ns_layer_norm}


def make_norm(kind: str, channels: int, num_groups: int, eps: float, dtype: Dtype, name: str):
    """The norm module named by `kind` (a key of NORMS) for a `channels`-wide input."""
    if kind not in NORMS:
        raise ValueError(f"Unknown norm {kind!r}; valid: {sorted(NORMS)}.")
    return NORMS[kind](channels, num_groups, eps, dtype, name)


# ----------------------------------------------------------------------------------------------
# FIR resampling (EDM's non-fused path): a separable, normalized filter applied per channel.
# (1, 1) is 2x2 average pooling / nearest-neighbour upsampling; NCSN++ uses (1, 3, 3, 1).
# Filters must have even length so that sizes halve / double exactly.


def _fir_kernel(resample_filter: Sequence[int], channels: int, gain: float, dtype):
    f = np.asarray(resample_filter, np.float64)
    f = np.outer(f, f) / np.square(f.sum()) * gain  # [k, k]
    return jnp.asarray(np.tile(f[:, :, None, None], (1, 1, 1, channels)), dtype)  # [k, k, 1, C]


def downsample(x, resample_filter: Sequence[int] = (1, 1)):
    """[B, H, W, C] -> [B, H/2, W/2, C]: filter, then keep every second pixel."""
    pad = (len(resample_filter) - 1) // 2
    return jax.lax.conv_general_dilated(
        x,
        _fir_kernel(resample_filter, x.shape[-1], 1.0, x.dtype),
        window_strides=(2, 2),
        padding=((pad, pad), (pad, pad)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=x.shape[-1],
    )


def upsample(x, resample_filter: Sequence[int] = (1, 1)):
    """[B, H, W, C] -> [B, 2H, 2W, C]: transposed convolution with 4 * filter, stride 2."""
    k = len(resample_filter)
    pad = k - 1 - (k - 1) // 2
    return jax.lax.conv_general_dilated(  # symmetric filter: no flip needed
        x,
        _fir_kernel(resample_filter, x.shape[-1], 4.0, x.dtype),
        window_strides=(1, 1),
        padding=((pad, pad), (pad, pad)),
        lhs_dilation=(2, 2),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=x.shape[-1],
    )


# ----------------------------------------------------------------------------------------------
# Attention and residual blocks.


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H*W positions; returns the residual branch only.

    Heads: max(1, C // head_channels) (head_channels <= 0: one head). The output projection is
    zero-initialized. Logits and softmax are computed in float32.
    """

    head_channels: int = 64
    norm: str = "group"
    num_groups: int = 32
    norm_eps: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):  # [B, H, W, C] -> [B, H, W, C]
        B, H, W, C = x.shape
        heads = max(1, C // self.head_channels) if self.head_channels > 0 else 1
        if C % heads:
            raise ValueError(f"{C} channels do not split into {heads} heads; set head_channels.")
        dense = lambda n, init, name: nn.Dense(
            n, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=init, name=name
        )
        h = make_norm(self.norm, C, self.num_groups, self.norm_eps, self.dtype, "norm")(x)
        qkv = dense(3 * C, ATTN_INIT, "qkv")(h).reshape(B, H * W, 3, heads, C // heads)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # each [B, HW, heads, C/heads]
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        weights = jax.nn.softmax(logits / math.sqrt(C // heads), axis=-1)  # [B, heads, HW, HW]
        out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(self.dtype), v)  # [B, HW, heads, d]
        return dense(C, ZEROS, "proj")(out.reshape(B, H, W, C))


class ResBlock(nn.Module):
    """Residual block of DDPM++ (EDM `UNetBlock`), optionally resampling and with attention.

    x -> norm0, SiLU, [resample], conv0 -> + emb projection (or adaptive scale/shift) -> norm1,
    SiLU, dropout, conv1 (zero init); skip path: [resample, 1x1 conv when shape changes];
    (branch + skip) * skip_scale, then optionally (x + attention(x)) * skip_scale.
    """

    out_channels: int
    up: bool = False
    down: bool = False
    attention: bool = False
    dropout: float = 0.0
    skip_scale: float = math.sqrt(0.5)
    adaptive_scale: bool = False  # False: add emb before norm1; True: norm1 then x*(1+s)+t
    resample_filter: Sequence[int] = (1, 1)
    head_channels: int = 64
    norm: str = "group"
    num_groups: int = 32
    norm_eps: float = 1e-5
    dtype: Dtype = jnp.float32

    def _conv(self, features, kernel, init, name):
        return nn.Conv(
            features,
            (kernel, kernel),
            padding="SAME",
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=init,
            name=name,
        )

    def _resample(self, x):
        if self.up:
            x = upsample(x, self.resample_filter)
        if self.down:
            x = downsample(x, self.resample_filter)
        return x

    @nn.compact
    def __call__(self, x, emb, train: bool):  # x: [B, H, W, Cin], emb: [B, E]
        C = self.out_channels
        norm = lambda ch, name: make_norm(
            self.norm, ch, self.num_groups, self.norm_eps, self.dtype, name
        )
        h = nn.silu(norm(x.shape[-1], "norm0")(x))
        h = self._conv(C, 3, XAVIER, "conv0")(self._resample(h))  # [B, H', W', C]
        cond = nn.Dense(
            C * (2 if self.adaptive_scale else 1),
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=XAVIER,
            name="affine",
        )(emb)[:, None, None, :]  # [B, 1, 1, C or 2C]
        if self.adaptive_scale:
            scale, shift = jnp.split(cond, 2, axis=-1)
            h = nn.silu(norm(C, "norm1")(h) * (scale + 1) + shift)
        else:
            h = nn.silu(norm(C, "norm1")(h + cond))
        h = nn.Dropout(self.dropout)(h, deterministic=not train)
        h = self._conv(C, 3, ZEROS, "conv1")(h)

        skip = x
        if x.shape[-1] != C or self.up or self.down:
            skip = self._conv(C, 1, XAVIER, "skip")(self._resample(x))
        x = (h + skip) * self.skip_scale  # [B, H', W', C]

        if self.attention:
            attn = SelfAttention(
                self.head_channels,
                self.norm,
                self.num_groups,
                self.norm_eps,
                self.dtype,
                name="attn",
            )
            x = (x + attn(x)) * self.skip_scale
        return x
