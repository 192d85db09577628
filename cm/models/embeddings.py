"""Conditioning: noise-level embeddings and the mapping networks that turn them into `emb`.

Noise embeddings map [B] float noise labels to [B, C] float32 features without parameters.
The mapping network (`MAPPINGS`) adds the class label and applies two dense layers; the two
reference families differ in where the label enters:

  song  (DDPM++ / NCSN++): emb = noise + map_label(onehot * sqrt(classes)), then
        SiLU(map_layer1(SiLU(map_layer0(emb)))).
  adm   emb = map_layer1(SiLU(map_layer0(noise))) + map_label(onehot), then SiLU.

The mapping functions create their layers inside the calling module's compact method, so the
parameters sit at the network's top level under EDM's names (map_layer0, map_label, ...).
"""

import math

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from cm.models import inits

MAX_POSITIONS = 10000  # lowest sinusoid frequency is 1 / MAX_POSITIONS (DDPM, ADM, EDM)


def positional_embedding(x, num_channels: int, endpoint: bool = True, cos_first: bool = False):
    """Sinusoids of DDPM++/ADM (EDM `PositionalEmbedding`), ordered (sin, cos) or (cos, sin).

    Frequencies (1 / MAX_POSITIONS)^(i / (C/2 - endpoint)), i < C/2: with `endpoint` (DDPM++)
    the last one is exactly 1 / MAX_POSITIONS, without it (ADM) one step above. EDM's SongUNet
    swaps its features to (sin, cos); its DhariwalUNet (ADM) keeps (cos, sin), as guided-diffusion
    does. The noise label (ln(sigma)/4 or 250 ln(sigma)) is config.method.noise_label's.
    """
    half = num_channels // 2
    freqs = (1.0 / MAX_POSITIONS) ** (np.arange(half) / max(half - int(endpoint), 1))  # [C/2]
    x = x[:, None] * jnp.asarray(freqs, jnp.float32)[None, :]  # [B, C/2]
    parts = [jnp.cos(x), jnp.sin(x)] if cos_first else [jnp.sin(x), jnp.cos(x)]
    return jnp.concatenate(parts, axis=-1)


def fourier_embedding(x, num_channels: int, scale: float, seed: int):
    """Random Fourier features of NCSN++ (EDM `FourierEmbedding`), ordered (sin, cos).

    The frequencies are frozen: drawn with numpy from `seed` when the function is traced, so they
    are compile-time constants, identical for every init key and never in the parameters (EDM
    keeps them in a buffer; score_sde's flax NCSN++ keeps them as a stop-gradient parameter 'W',
    which adds num_channels / 2 to its count). The noise label is config.method.noise_label's.
    """
    freqs = np.random.RandomState(seed).randn(num_channels // 2) * scale  # [C/2]
    x = x[:, None] * jnp.asarray(2 * np.pi * freqs, jnp.float32)[None, :]  # [B, C/2]
    return jnp.concatenate([jnp.sin(x), jnp.cos(x)], axis=-1)


EMBEDDINGS = {
    "positional": lambda x, ch, m: positional_embedding(
        x, ch, m.positional_endpoint, m.positional_cos_first
    ),
    "fourier": lambda x, ch, m: fourier_embedding(x, ch, m.fourier_scale, m.fourier_seed),
}


class NoiseEmbedding(nn.Module):
    """Parameter-free embedding of the noise label; a module so its output can be inspected."""

    kind: str
    num_channels: int
    fourier_scale: float = 16.0
    fourier_seed: int = 0
    positional_endpoint: bool = True
    positional_cos_first: bool = False

    def __call__(self, noise_labels):  # [B] -> [B, num_channels] float32
        x = noise_labels.astype(jnp.float32)  # sinusoids of 250 ln(sigma) need float32
        return EMBEDDINGS[self.kind](x, self.num_channels, self)


def song_mapping(noise, onehot, emb_channels: int, init: str, dtype):
    """DDPM++/NCSN++ mapping: [B, Cn] noise features (+ [B, K] one-hot) -> [B, emb_channels]."""
    width = noise.shape[-1]
    if onehot is not None:
        classes = onehot.shape[-1]
        label = inits.label_embedding(init, width, name="map_label")
        noise = noise + label(onehot * math.sqrt(classes))  # [B, Cn] float32
    layer0 = inits.dense(init, emb_channels, width, dtype=dtype, name="map_layer0")
    layer1 = inits.dense(init, emb_channels, emb_channels, dtype=dtype, name="map_layer1")
    return nn.silu(layer1(nn.silu(layer0(noise.astype(dtype)))))


def adm_mapping(noise, onehot, emb_channels: int, init: str, dtype):
    """ADM mapping: [B, Cn] noise features (+ [B, K] one-hot) -> [B, emb_channels]."""
    layer0 = inits.dense(init, emb_channels, noise.shape[-1], dtype=dtype, name="map_layer0")
    layer1 = inits.dense(init, emb_channels, emb_channels, dtype=dtype, name="map_layer1")
    emb = layer1(nn.silu(layer0(noise.astype(dtype))))  # [B, E]
    if onehot is not None:
        label = inits.label_embedding(init, emb_channels, name="map_label")
        emb = emb + label(onehot).astype(dtype)
    return nn.silu(emb)


MAPPINGS = {"song": song_mapping, "adm": adm_mapping}
