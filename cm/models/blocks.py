"""Residual block with optional resampling and self-attention (EDM's `UNetBlock`).

One block type serves DDPM++, NCSN++ (BigGAN-style: the block itself resamples) and ADM; the
fields select the differences. Layout NHWC, parameters float32, `dtype` the compute dtype.
"""

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cm.models import inits
from cm.models.norms import make_norm
from cm.models.resample import downsample, upsample


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H*W positions; returns the residual branch only.

    Heads: max(1, C // head_channels) (ADM: 64 channels per head); head_channels <= 0: one head
    (DDPM++/NCSN++). Logits and softmax are computed in float32.
    """

    head_channels: int = 0
    norm: str = "group"
    num_groups: int = 32
    norm_eps: float = 1e-6
    init_scheme: str = "song"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):  # [B, H, W, C] -> [B, H, W, C]
        B, H, W, C = x.shape
        heads = max(1, C // self.head_channels) if self.head_channels > 0 else 1
        if C % heads:
            raise ValueError(f"{C} channels do not split into {heads} heads; set head_channels.")
        h = make_norm(self.norm, C, self.num_groups, self.norm_eps, self.dtype, "norm")(x)
        qkv = inits.dense(self.init_scheme, 3 * C, C, "attn", dtype=self.dtype, name="qkv")(h)
        qkv = qkv.reshape(B, H * W, 3, heads, C // heads)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # each [B, HW, heads, C/heads]
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        weights = jax.nn.softmax(logits / math.sqrt(C // heads), axis=-1)  # [B, heads, HW, HW]
        out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(self.dtype), v)  # [B, HW, heads, d]
        proj = inits.dense(self.init_scheme, C, C, "zero", dtype=self.dtype, name="proj")
        return proj(out.reshape(B, H, W, C))


class ResBlock(nn.Module):
    """x -> norm0, SiLU, [resample], conv0 -> + emb projection (or adaptive scale/shift) ->
    norm1, SiLU, dropout, conv1 (branch-closing init); skip path: [resample], then a 1x1 conv
    when the width changes or (`resample_proj`) when the block resamples; (branch + skip) *
    skip_scale, then optionally (x + attention(x)) * skip_scale.
    """

    out_channels: int
    up: bool = False
    down: bool = False
    attention: bool = False
    dropout: float = 0.0
    skip_scale: float = math.sqrt(0.5)  # DDPM++/NCSN++ sqrt(1/2); ADM 1
    adaptive_scale: bool = False  # False: add emb before norm1; True (ADM): x*(1+s)+t after it
    resample_filter: Sequence[int] = (1, 1)
    resample_proj: bool = True  # 1x1 conv on a resampled skip of equal width (ADM: False)
    head_channels: int = 0
    norm: str = "group"
    num_groups: int = 32
    norm_eps: float = 1e-6
    init_scheme: str = "song"
    dtype: jnp.dtype = jnp.float32

    def _resample(self, x):
        if self.up:
            x = upsample(x, self.resample_filter)
        if self.down:
            x = downsample(x, self.resample_filter)
        return x

    def _norm(self, channels: int, name: str):
        return make_norm(self.norm, channels, self.num_groups, self.norm_eps, self.dtype, name)

    @nn.compact
    def __call__(self, x, emb, train: bool):  # x: [B, H, W, Cin], emb: [B, E]
        C, cin = self.out_channels, x.shape[-1]
        conv = lambda n_in, kernel, role, name: inits.conv(
            self.init_scheme, C, kernel, n_in, role, dtype=self.dtype, name=name
        )
        h = nn.silu(self._norm(cin, "norm0")(x))
        h = conv(cin, 3, "default", "conv0")(self._resample(h))  # [B, H', W', C]
        width = C * (2 if self.adaptive_scale else 1)
        affine = inits.dense(
            self.init_scheme, width, emb.shape[-1], dtype=self.dtype, name="affine"
        )
        cond = affine(emb)[:, None, None, :]  # [B, 1, 1, C or 2C]
        if self.adaptive_scale:
            scale, shift = jnp.split(cond, 2, axis=-1)
            h = nn.silu(self._norm(C, "norm1")(h) * (scale + 1) + shift)
        else:
            h = nn.silu(self._norm(C, "norm1")(h + cond))
        h = nn.Dropout(self.dropout)(h, deterministic=not train)
        h = conv(C, 3, "zero", "conv1")(h)

        skip = self._resample(x)  # [B, H', W', Cin]
        if cin != C or ((self.up or self.down) and self.resample_proj):
            skip = conv(cin, 1, "default", "skip")(skip)
        x = (h + skip) * self.skip_scale  # [B, H', W', C]

        if self.attention:
            attn = SelfAttention(
                self.head_channels,
                self.norm,
                self.num_groups,
                self.norm_eps,
                self.init_scheme,
                self.dtype,
                name="attn",
            )
            x = (x + attn(x)) * self.skip_scale
        return x
