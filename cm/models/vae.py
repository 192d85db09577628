"""The Stable Diffusion VAE (AutoencoderKL, f = 8, 4 latent channels) as Flax linen modules.

The block structure and the module names follow diffusers' `AutoencoderKL`, so its
safetensors weights map onto these parameters name by name (cm/models/vae_weights.py):
    encoder: conv_in, down_blocks_i (resnets_j, downsamplers_0), mid_block, conv_norm_out, conv_out
    quant_conv (1x1) -> moments = (mean, log-variance) of the diagonal Gaussian posterior
    post_quant_conv (1x1) -> decoder: conv_in, mid_block, up_blocks_i (resnets_j, upsamplers_0), ...
Every norm is a GroupNorm with torch's two-pass variance; the mid blocks are resnet,
single-head self-attention, resnet. Arrays are NHWC; images are floats in [-1, 1]. Every
convolution and matmul runs at full float32 precision (HIGHEST) whatever the device default,
so encoding and decoding give the same latents and images on a GPU or TPU as on a CPU.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

LOGVAR_RANGE = (-30.0, 20.0)  # diffusers' clamp of the posterior log-variance
PRECISION = jax.lax.Precision.HIGHEST  # of every conv and matmul: float32 on any device


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """Architecture of an AutoencoderKL; the defaults are the Stable Diffusion VAE's."""

    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    image_channels: int = 3
    norm_num_groups: int = 32
    norm_eps: float = 1e-6

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


def vae_config(vae_section, image_channels: int = 3) -> VAEConfig:
    """The VAEConfig of the config's `vae` section."""
    return VAEConfig(
        block_out_channels=tuple(vae_section.block_out_channels),
        layers_per_block=vae_section.layers_per_block,
        latent_channels=vae_section.latent_channels,
        image_channels=image_channels,
        norm_num_groups=vae_section.norm_num_groups,
        norm_eps=vae_section.norm_eps,
    )


def _conv(features: int, kernel: int, name: str, stride: int = 1, padding="SAME") -> nn.Conv:
    return nn.Conv(
        features,
        (kernel, kernel),
        (stride, stride),
        padding=padding,
        precision=PRECISION,
        name=name,
    )


def _dense(features: int, name: str) -> nn.Dense:
    return nn.Dense(features, precision=PRECISION, name=name)


def _norm(cfg: VAEConfig, name: str) -> nn.GroupNorm:
    # Two-pass variance, as torch computes it, so the port matches diffusers closely.
    return nn.GroupNorm(
        cfg.norm_num_groups, epsilon=cfg.norm_eps, use_fast_variance=False, name=name
    )


class ResnetBlock(nn.Module):
    """norm, SiLU, conv3x3, norm, SiLU, conv3x3, plus a (1x1-projected) shortcut."""

    cfg: VAEConfig
    out_channels: int

    @nn.compact
    def __call__(self, x):  # [B, H, W, Cin] -> [B, H, W, out_channels]
        h = _conv(self.out_channels, 3, "conv1")(nn.silu(_norm(self.cfg, "norm1")(x)))
        h = _conv(self.out_channels, 3, "conv2")(nn.silu(_norm(self.cfg, "norm2")(h)))
        if x.shape[-1] != self.out_channels:
            x = _conv(self.out_channels, 1, "conv_shortcut")(x)
        return x + h


class Attention(nn.Module):
    """Single-head self-attention over all H*W positions, with a residual connection."""

    cfg: VAEConfig

    @nn.compact
    def __call__(self, x):  # [B, H, W, C] -> [B, H, W, C]
        b, h, w, c = x.shape
        t = _norm(self.cfg, "group_norm")(x).reshape(b, h * w, c)  # [B, T, C]
        q, k, v = _dense(c, "to_q")(t), _dense(c, "to_k")(t), _dense(c, "to_v")(t)  # [B, T, C]
        logits = jnp.einsum("btc,bsc->bts", q, k, precision=PRECISION) / jnp.sqrt(c)
        weights = jax.nn.softmax(logits, axis=-1)  # [B, T, T]
        mixed = jnp.einsum("bts,bsc->btc", weights, v, precision=PRECISION)  # [B, T, C]
        out = _dense(c, "to_out_0")(mixed)  # [B, T, C]
        return x + out.reshape(b, h, w, c)


class MidBlock(nn.Module):
    cfg: VAEConfig

    @nn.compact
    def __call__(self, x):  # [B, H, W, C] -> same
        c = x.shape[-1]
        x = ResnetBlock(self.cfg, c, name="resnets_0")(x)
        x = Attention(self.cfg, name="attentions_0")(x)
        return ResnetBlock(self.cfg, c, name="resnets_1")(x)


class Downsample(nn.Module):
    """Zero-pad one row and column at the bottom/right, then a 3x3 convolution of stride 2."""

    @nn.compact
    def __call__(self, x):  # [B, H, W, C] -> [B, H/2, W/2, C]
        x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return _conv(x.shape[-1], 3, "conv", stride=2, padding="VALID")(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 convolution."""

    @nn.compact
    def __call__(self, x):  # [B, H, W, C] -> [B, 2H, 2W, C]
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return _conv(x.shape[-1], 3, "conv")(x)


class DownBlock(nn.Module):
    """`layers` resnets, then (unless last) a stride-2 downsampling."""

    cfg: VAEConfig
    out_channels: int
    layers: int
    downsample: bool

    @nn.compact
    def __call__(self, x):  # [B, H, W, Cin] -> [B, H/2 or H, ..., out_channels]
        for j in range(self.layers):
            x = ResnetBlock(self.cfg, self.out_channels, name=f"resnets_{j}")(x)
        return Downsample(name="downsamplers_0")(x) if self.downsample else x


class UpBlock(nn.Module):
    """`layers` resnets, then (unless last) a x2 upsampling."""

    cfg: VAEConfig
    out_channels: int
    layers: int
    upsample: bool

    @nn.compact
    def __call__(self, x):  # [B, H, W, Cin] -> [B, 2H or H, ..., out_channels]
        for j in range(self.layers):
            x = ResnetBlock(self.cfg, self.out_channels, name=f"resnets_{j}")(x)
        return Upsample(name="upsamplers_0")(x) if self.upsample else x


class Encoder(nn.Module):
    cfg: VAEConfig

    @nn.compact
    def __call__(self, x):  # [B, H, W, image_channels] -> [B, H/f, W/f, 2 * latent_channels]
        cfg = self.cfg
        x = _conv(cfg.block_out_channels[0], 3, "conv_in")(x)
        last = len(cfg.block_out_channels) - 1
        for i, ch in enumerate(cfg.block_out_channels):
            block = DownBlock(cfg, ch, cfg.layers_per_block, i < last, name=f"down_blocks_{i}")
            x = block(x)
        x = MidBlock(cfg, name="mid_block")(x)
        x = nn.silu(_norm(cfg, "conv_norm_out")(x))
        return _conv(2 * cfg.latent_channels, 3, "conv_out")(x)


class Decoder(nn.Module):
    cfg: VAEConfig

    @nn.compact
    def __call__(self, z):  # [B, h, w, latent_channels] -> [B, f h, f w, image_channels]
        cfg = self.cfg
        channels = tuple(reversed(cfg.block_out_channels))
        x = _conv(channels[0], 3, "conv_in")(z)
        x = MidBlock(cfg, name="mid_block")(x)
        last = len(channels) - 1
        for i, ch in enumerate(channels):
            block = UpBlock(cfg, ch, cfg.layers_per_block + 1, i < last, name=f"up_blocks_{i}")
            x = block(x)
        x = nn.silu(_norm(cfg, "conv_norm_out")(x))
        return _conv(cfg.image_channels, 3, "conv_out")(x)


class AutoencoderKL(nn.Module):
    """`encode(x) -> (mean, logvar)` of the posterior and `decode(z) -> image`, unscaled latents.

    Parameters: {'encoder', 'quant_conv', 'post_quant_conv', 'decoder'}; `init` runs both ways.
    """

    cfg: VAEConfig = VAEConfig()

    def setup(self):
        self.encoder = Encoder(self.cfg)
        self.quant_conv = _conv(2 * self.cfg.latent_channels, 1, None)
        self.post_quant_conv = _conv(self.cfg.latent_channels, 1, None)
        self.decoder = Decoder(self.cfg)

    def encode(self, x):  # [B, H, W, 3] in [-1, 1] -> mean, logvar [B, H/f, W/f, latent]
        moments = self.quant_conv(self.encoder(x))
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return mean, jnp.clip(logvar, *LOGVAR_RANGE)

    def decode(self, z):  # [B, h, w, latent] -> [B, f h, f w, 3], about [-1, 1]
        return self.decoder(self.post_quant_conv(z))

    def __call__(self, x):
        """Reconstruction from the posterior mean (used by `init` to create every parameter)."""
        return self.decode(self.encode(x)[0])


def posterior_sample(mean, logvar, noise):
    """One draw of the diagonal Gaussian posterior: mean + exp(logvar / 2) * noise."""
    return mean + jnp.exp(0.5 * logvar) * noise


def init_params(cfg: VAEConfig, rng, image_size: int | None = None):
    """Random parameters of the VAE (shapes do not depend on the image size)."""
    size = image_size or 2 * cfg.downsampling_factor
    x = jnp.zeros((1, size, size, cfg.image_channels), jnp.float32)
    return jax.jit(AutoencoderKL(cfg).init)(rng, x)["params"]  # eager init is far slower
