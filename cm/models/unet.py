"""The U-Net of EDM's networks.py, NHWC, in Flax linen: DDPM++, NCSN++ and (see adm.py) ADM.

Encoder: a 3x3 input conv, then per level `num_blocks` residual blocks, with a downsampling
residual block between levels. With `encoder_type="residual"` (NCSN++'s progressive input),
a second branch starts at the input image: at every downsampling it passes through a 3x3
conv fused with the FIR downsampling and is averaged into the features, (x + aux) * skip_scale;
that sum continues both the features and the branch. Decoder: at the lowest resolution two
blocks (the first with attention), then per level `num_blocks + 1` blocks that each consume
one encoder skip, with an upsampling block between levels. Output: norm, SiLU, 3x3 conv with
the branch-closing init, so a fresh network outputs (nearly, or for ADM exactly) zero.

Conditioning: noise embedding (+ augmentation labels through a bias-free layer, EDM's
map_augment) (+ class label) -> mapping network (embeddings.MAPPINGS) -> added to (or
scaling/shifting) the features inside every residual block.

The defaults are EDM's SongUNet (DDPM++ with the positional embedding; NCSN++ needs
embedding="fourier", noise_mult=2, encoder_type="residual", resample_filter=(1, 3, 3, 1)).
Module names follow EDM: `enc_16x16_block0`, `dec_8x8_up`, ... so the parameter table reads
like the reference code.
"""

import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cm.models import inits
from cm.models.blocks import ResBlock
from cm.models.embeddings import EMBEDDINGS, MAPPINGS, NoiseEmbedding
from cm.models.norms import NORMS, make_norm
from cm.models.resample import prefilter_for_strided_conv

ENCODERS = ("standard", "residual")
CONV_KERNEL = 3  # every spatial conv of the network, including the residual input branch


class UNet(nn.Module):
    """Configurable U-Net of the DDPM++/NCSN++/ADM family. See the module docstring."""

    out_channels: int
    channels: int = 128
    channel_mult: Sequence[int] = (2, 2, 2)
    num_blocks: int = 4
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.0
    dropout_max_resolution: int = 0  # dropout only in blocks whose output height <= this; 0: all
    embedding: str = "positional"  # positional | fourier (keys of embeddings.EMBEDDINGS)
    fourier_scale: float = 16.0  # NCSN++ 16; iCT 0.02
    fourier_seed: int = 0  # seed of the frozen Fourier frequencies
    fourier_param: bool = False  # frequencies as a stop-gradient parameter (imported NCSN++)
    positional_endpoint: bool = True  # DDPM++ True, ADM False (see positional_embedding)
    positional_cos_first: bool = False  # DDPM++ (sin, cos), ADM (cos, sin)
    mapping: str = "song"  # song | adm (keys of embeddings.MAPPINGS): where the label enters
    encoder_type: str = "standard"  # standard (DDPM++, ADM) | residual (NCSN++)
    attn_every_dec_block: bool = False  # ADM: attention in every decoder block of a listed height
    stem_uses_mult: bool = False  # ADM: the input conv outputs channels * channel_mult[0]
    norm: str = "group"  # group | nsln (keys of norms.NORMS); used for every norm
    num_groups: int = 32
    norm_eps: float = 1e-6  # SongUNet 1e-6, ADM 1e-5
    num_classes: int = 0  # 0 = unconditional
    augment_dim: int = 0  # width of the augmentation labels (cm/methods/augment.py); 0 = none
    head_channels: int = 0  # attention heads = max(1, C // head_channels); <= 0: one head
    emb_mult: int = 4  # conditioning embedding width = emb_mult * channels
    noise_mult: int = 1  # noise embedding width = noise_mult * channels (NCSN++ uses 2)
    # A second noise label (MeanFlow's t - r or r, cm/methods/meanflow.py) embedded like the first
    # and
    # concatenated with it, as the MeanFlow authors' CIFAR-10 U-Net does: the mapping network
    # then reads 2 * noise_mult * channels features. False keeps every other network unchanged.
    second_noise_label: bool = False
    adaptive_scale: bool = False  # False: add the embedding; True (ADM): scale and shift
    resample_filter: Sequence[int] = (1, 1)  # FIR filter of up/down blocks; NCSN++: (1, 3, 3, 1)
    resample_proj: bool = True  # 1x1 conv on the skip of resampling blocks (ADM: False)
    skip_scale: float = math.sqrt(0.5)  # SongUNet sqrt(1/2), ADM 1
    init_scheme: str = "song"  # song | adm (keys of inits.INITS)
    dtype: Any = jnp.float32  # compute dtype; parameters always float32
    remat: bool = False  # recompute every residual block (and its attention) in the backward pass

    def __post_init__(self):
        """Reject unknown option strings when the network is built, not at first call."""
        for field, valid in [
            ("norm", NORMS),
            ("embedding", EMBEDDINGS),
            ("mapping", MAPPINGS),
            ("encoder_type", ENCODERS),
            ("init_scheme", inits.INITS),
        ]:
            if getattr(self, field) not in valid:
                raise ValueError(
                    f"Unknown model.{field} {getattr(self, field)!r}; valid: {sorted(valid)}."
                )
        super().__post_init__()

    def _embed(self, noise_labels, class_labels, augment_labels, batch: int, second=None):
        """[B] noise labels (+ [B] second labels, [B] class labels, [B, augment_dim] augmentation
        labels) -> [B, emb_mult * channels] in `dtype`."""
        if self.second_noise_label != (second is not None):
            raise ValueError(
                "Pass second_noise_labels exactly when the network has second_noise_label=True "
                "(MeanFlow's networks)."
            )
        labels = lambda v: jnp.broadcast_to(jnp.asarray(v, jnp.float32).reshape(-1), (batch,))
        embed = NoiseEmbedding(
            self.embedding,
            self.noise_mult * self.channels,
            self.fourier_scale,
            self.fourier_seed,
            self.positional_endpoint,
            self.positional_cos_first,
            self.fourier_param,
            name="map_noise",
        )
        noise = embed(labels(noise_labels))  # [B, noise_mult * channels] float32
        if second is not None:  # [B, 2 * noise_mult * channels]
            noise = jnp.concatenate([noise, embed(labels(second))], axis=-1)
        if self.augment_dim:
            if augment_labels is None:  # not augmented (sampling): zero labels
                augment_labels = jnp.zeros((batch, self.augment_dim), jnp.float32)
            layer = inits.augment_embedding(self.init_scheme, noise.shape[-1], name="map_augment")
            noise = noise + layer(jnp.asarray(augment_labels, jnp.float32))
        onehot = None
        if self.num_classes:
            if class_labels is None:
                raise ValueError("This network is class-conditional: pass class_labels.")
            onehot = jax.nn.one_hot(class_labels, self.num_classes)  # [B, K]
        mapping = MAPPINGS[self.mapping]
        return mapping(noise, onehot, self.emb_mult * self.channels, self.init_scheme, self.dtype)

    def _dropout(self, height: int) -> float:
        limit = self.dropout_max_resolution
        return self.dropout if limit <= 0 or height <= limit else 0.0

    def _conv(self, features, in_channels, role, name, **kwargs):
        return inits.conv(
            self.init_scheme,
            features,
            CONV_KERNEL,
            in_channels,
            role,
            dtype=self.dtype,
            name=name,
            **kwargs,
        )

    def _residual_input(self, aux, features: int, name: str):
        """NCSN++'s input branch, a 3x3 conv fused with FIR downsampling: [B, H, W, C] ->
        [B, H/2, W/2, features]."""
        aux = prefilter_for_strided_conv(aux, self.resample_filter, CONV_KERNEL)
        return self._conv(features, aux.shape[-1], "default", name, strides=2, padding="VALID")(aux)

    @nn.compact
    def __call__(
        self,
        x,
        noise_labels,
        class_labels=None,
        augment_labels=None,
        *,
        train: bool,
        second_noise_labels=None,
    ):
        """x: [B, H, W, C]; noise_labels: [B] (c_noise, or a scalar for all); class_labels: [B]
        int or None (ignored by an unconditional net); augment_labels: [B, augment_dim] or None
        (zeros); second_noise_labels: [B] or a scalar, only with second_noise_label=True.
        Returns [B, H, W, out_channels] float32."""
        B, H, W, _ = x.shape
        levels = len(self.channel_mult)
        if H % 2 ** (levels - 1) or W % 2 ** (levels - 1):
            raise ValueError(f"Image size {H}x{W} must be divisible by 2^{levels - 1}.")
        emb = self._embed(noise_labels, class_labels, augment_labels, B, second_noise_labels)
        # Rematerialized blocks keep only their inputs for the backward pass; `train` (argument
        # 3, counting self) is a Python bool, so it stays static.
        block_type = nn.remat(ResBlock, static_argnums=(3,)) if self.remat else ResBlock
        block = functools.partial(
            block_type,
            skip_scale=self.skip_scale,
            adaptive_scale=self.adaptive_scale,
            resample_filter=tuple(self.resample_filter),
            resample_proj=self.resample_proj,
            head_channels=self.head_channels,
            norm=self.norm,
            num_groups=self.num_groups,
            norm_eps=self.norm_eps,
            init_scheme=self.init_scheme,
            dtype=self.dtype,
        )

        # Encoder: every output is kept as a skip connection.
        x = x.astype(self.dtype)
        aux = x  # the residual input branch
        skips = []
        for level, mult in enumerate(self.channel_mult):
            h, w = H >> level, W >> level
            if level == 0:
                stem = self.channels * (mult if self.stem_uses_mult else 1)
                x = self._conv(stem, x.shape[-1], "default", f"enc_{h}x{w}_conv")(x)
            else:
                c, rate = x.shape[-1], self._dropout(h)
                x = block(c, down=True, dropout=rate, name=f"enc_{h}x{w}_down")(x, emb, train)
                if self.encoder_type == "residual":
                    aux = self._residual_input(aux, c, f"enc_{h}x{w}_aux_residual")
                    x = aux = (x + aux) * self.skip_scale  # [B, h, w, c]
            skips.append(x)
            for i in range(self.num_blocks):
                x = block(
                    self.channels * mult,
                    attention=h in self.attn_resolutions,
                    dropout=self._dropout(h),
                    name=f"enc_{h}x{w}_block{i}",
                )(x, emb, train)
                skips.append(x)

        # Decoder: each block{i} consumes the most recent unused skip.
        for level, mult in reversed(list(enumerate(self.channel_mult))):
            h, w = H >> level, W >> level
            c, rate = x.shape[-1], self._dropout(h)
            if level == levels - 1:
                x = block(c, attention=True, dropout=rate, name=f"dec_{h}x{w}_in0")(x, emb, train)
                x = block(c, dropout=rate, name=f"dec_{h}x{w}_in1")(x, emb, train)
            else:
                x = block(c, up=True, dropout=rate, name=f"dec_{h}x{w}_up")(x, emb, train)
            for i in range(self.num_blocks + 1):
                last = i == self.num_blocks
                attn = h in self.attn_resolutions and (last or self.attn_every_dec_block)
                x = jnp.concatenate([x, skips.pop()], axis=-1)
                x = block(
                    self.channels * mult, attention=attn, dropout=rate, name=f"dec_{h}x{w}_block{i}"
                )(x, emb, train)

        c = x.shape[-1]
        norm = make_norm(self.norm, c, self.num_groups, self.norm_eps, self.dtype, "out_norm")
        x = self._conv(self.out_channels, c, "zero", "out_conv")(nn.silu(norm(x)))
        return x.astype(jnp.float32)  # [B, H, W, out_channels]
