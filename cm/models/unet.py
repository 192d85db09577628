"""The DDPM++/NCSN++ family U-Net (EDM's `SongUNet` structure), NHWC, in Flax linen.

Encoder: a 3x3 input conv, then per level `num_blocks` residual blocks, with a downsampling
residual block between levels. Decoder: at the lowest resolution two blocks (the first with
attention), then per level `num_blocks + 1` blocks that each consume one encoder skip, with an
upsampling block between levels. Output: norm, SiLU, zero-initialized 3x3 conv, so a fresh
network outputs exactly zero. Attention at the heights listed in `attn_resolutions`.

Conditioning: noise embedding (+ linear map of the one-hot class) -> Dense, SiLU, Dense, SiLU
-> added to (or scaling/shifting) the features inside every residual block.

Module names follow EDM: `enc_16x16_block0`, `dec_8x8_up`, ... so the parameter table reads like
the reference code. Options the reference NCSN++/ADM variants need (FIR `resample_filter`,
`adaptive_scale`, `noise_mult`, `head_channels`) are fields; new encoder/decoder types belong here.
"""

import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cm.models.layers import EMBEDDINGS, NORMS, XAVIER, ZEROS, NoiseEmbedding, ResBlock, make_norm


class UNet(nn.Module):
    """Configurable DDPM++-style U-Net. See the module docstring for the structure."""

    out_channels: int
    channels: int = 128
    channel_mult: Sequence[int] = (2, 2, 2)
    num_blocks: int = 4
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.0
    embedding: str = "positional"  # positional | fourier (keys of layers.EMBEDDINGS)
    fourier_scale: float = 16.0
    fourier_seed: int = 0  # seed of the frozen Fourier frequencies
    norm: str = "group"  # group | nsln (keys of layers.NORMS); used for every norm
    num_groups: int = 32
    norm_eps: float = 1e-5
    num_classes: int = 0  # 0 = unconditional
    head_channels: int = 64  # attention heads = max(1, C // head_channels); <= 0: one head
    emb_mult: int = 4  # conditioning embedding width = emb_mult * channels
    noise_mult: int = 1  # noise embedding width = noise_mult * channels (NCSN++ uses 2)
    adaptive_scale: bool = False  # False: add the embedding; True: scale and shift
    resample_filter: Sequence[int] = (1, 1)  # FIR filter of up/down blocks; NCSN++: (1, 3, 3, 1)
    skip_scale: float = math.sqrt(0.5)
    dtype: Any = jnp.float32  # compute dtype; parameters always float32

    def __post_init__(self):
        """Reject unknown option strings when the network is built, not at first call."""
        if self.norm not in NORMS:
            raise ValueError(f"Unknown model.norm {self.norm!r}; valid: {sorted(NORMS)}.")
        if self.embedding not in EMBEDDINGS:
            raise ValueError(
                f"Unknown model.embedding {self.embedding!r}; valid: {sorted(EMBEDDINGS)}."
            )
        super().__post_init__()

    def _embed(self, noise_labels, class_labels, batch: int):
        """[B] noise labels (+ [B] class labels) -> [B, emb_mult * channels] in `dtype`."""
        noise_labels = jnp.broadcast_to(
            jnp.asarray(noise_labels, jnp.float32).reshape(-1), (batch,)
        )
        width = self.noise_mult * self.channels
        emb = NoiseEmbedding(
            self.embedding, width, self.fourier_scale, self.fourier_seed, name="map_noise"
        )(noise_labels)  # [B, width] float32
        if self.num_classes:
            if class_labels is None:
                raise ValueError("This network is class-conditional: pass class_labels.")
            onehot = jax.nn.one_hot(class_labels, self.num_classes) * math.sqrt(self.num_classes)
            emb = emb + nn.Dense(width, kernel_init=XAVIER, name="map_label")(onehot)
        dense = functools.partial(
            nn.Dense, self.emb_mult * self.channels, dtype=self.dtype, kernel_init=XAVIER
        )
        emb = nn.silu(dense(name="map_layer0")(emb.astype(self.dtype)))
        return nn.silu(dense(name="map_layer1")(emb))  # [B, E]

    @nn.compact
    def __call__(self, x, noise_labels, class_labels=None, *, train: bool):
        """x: [B, H, W, C]; noise_labels: [B] (c_noise, or a scalar for all); class_labels: [B]
        int or None (ignored by an unconditional net). Returns [B, H, W, out_channels] float32."""
        B, H, W, _ = x.shape
        levels = len(self.channel_mult)
        if H % 2 ** (levels - 1) or W % 2 ** (levels - 1):
            raise ValueError(f"Image size {H}x{W} must be divisible by 2^{levels - 1}.")
        emb = self._embed(noise_labels, class_labels, B)
        block = functools.partial(
            ResBlock,
            dropout=self.dropout,
            skip_scale=self.skip_scale,
            adaptive_scale=self.adaptive_scale,
            resample_filter=tuple(self.resample_filter),
            head_channels=self.head_channels,
            norm=self.norm,
            num_groups=self.num_groups,
            norm_eps=self.norm_eps,
            dtype=self.dtype,
        )

        # Encoder: every output is kept as a skip connection.
        x = x.astype(self.dtype)
        skips = []
        for level, mult in enumerate(self.channel_mult):
            h, w = H >> level, W >> level
            if level == 0:
                conv = nn.Conv(
                    self.channels,
                    (3, 3),
                    dtype=self.dtype,
                    kernel_init=XAVIER,
                    name=f"enc_{h}x{w}_conv",
                )
                x = conv(x)
            else:
                x = block(x.shape[-1], down=True, name=f"enc_{h}x{w}_down")(x, emb, train)
            skips.append(x)
            for i in range(self.num_blocks):
                attn = h in self.attn_resolutions
                x = block(self.channels * mult, attention=attn, name=f"enc_{h}x{w}_block{i}")(
                    x, emb, train
                )
                skips.append(x)

        # Decoder: each block{i} consumes the most recent unused skip.
        for level, mult in reversed(list(enumerate(self.channel_mult))):
            h, w = H >> level, W >> level
            c = x.shape[-1]
            if level == levels - 1:
                x = block(c, attention=True, name=f"dec_{h}x{w}_in0")(x, emb, train)
                x = block(c, name=f"dec_{h}x{w}_in1")(x, emb, train)
            else:
                x = block(c, up=True, name=f"dec_{h}x{w}_up")(x, emb, train)
            for i in range(self.num_blocks + 1):
                attn = i == self.num_blocks and h in self.attn_resolutions
                x = jnp.concatenate([x, skips.pop()], axis=-1)
                x = block(self.channels * mult, attention=attn, name=f"dec_{h}x{w}_block{i}")(
                    x, emb, train
                )

        c = x.shape[-1]
        x = nn.silu(
            make_norm(self.norm, c, self.num_groups, self.norm_eps, self.dtype, "out_norm")(x)
        )
        out_conv = nn.Conv(
            self.out_channels, (3, 3), dtype=self.dtype, kernel_init=ZEROS, name="out_conv"
        )
        x = out_conv(x)
        return x.astype(jnp.float32)  # [B, H, W, out_channels]
