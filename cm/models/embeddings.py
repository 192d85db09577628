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
import jax
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


def fourier_frequencies(num_channels: int, scale: float, seed: int) -> np.ndarray:
    """The [C/2] frozen frequencies of NCSN++'s Fourier features: numpy's draw from `seed`."""
    return np.random.RandomState(seed).randn(num_channels // 2) * scale


def fourier_features(x, angular):
    """[B] labels, [C/2] angular frequencies 2 pi f (float32) -> [B, C] features
    sin(2 pi f x), cos(2 pi f x)."""
    x = x[:, None] * angular[None, :]  # [B, C/2]
    return jnp.concatenate([jnp.sin(x), jnp.cos(x)], axis=-1)


def fourier_embedding(x, num_channels: int, scale: float, seed: int):
    """Random Fourier features of NCSN++ (EDM `FourierEmbedding`), ordered (sin, cos).

    The frequencies are frozen: drawn with numpy from `seed` when the function is traced, so they
    are compile-time constants, identical for every init key and never in the parameters (EDM
    keeps them in a buffer; score_sde's flax NCSN++ keeps them as a stop-gradient parameter 'W',
    which adds num_channels / 2 to its count). NoiseEmbedding.fourier_param keeps them in the
    parameters instead, for networks whose frequencies come from a file (cm/edm_import). The
    noise label is config.method.noise_label's.
    """
    freqs = fourier_frequencies(num_channels, scale, seed)  # [C/2] float64
    return fourier_features(x, jnp.asarray(2 * np.pi * freqs, jnp.float32))


EMBEDDINGS = {
    "positional": lambda x, ch, m: positional_embedding(
        x, ch, m.positional_endpoint, m.positional_cos_first
    ),
    "fourier": lambda x, ch, m: fourier_embedding(x, ch, m.fourier_scale, m.fourier_seed),
}


class NoiseEmbedding(nn.Module):
    """Parameter-free embedding of the noise label; a module so its output can be inspected.

    fourier_param: keep the Fourier frequencies as the parameter `freqs` [C/2] (initialized to
    the seeded draw, used under stop_gradient, so no gradient moves them; a coupled weight decay
    would) instead of a constant: an imported EDM NCSN++ brings its own frequencies (EDM draws
    them with torch at construction), which no seed reproduces.
    """

    kind: str
    num_channels: int
    fourier_scale: float = 16.0
    fourier_seed: int = 0
    positional_endpoint: bool = True
    positional_cos_first: bool = False
    fourier_param: bool = False

    @nn.compact
    def __call__(self, noise_labels):  # [B] -> [B, num_channels] float32
        x = noise_labels.astype(jnp.float32)  # sinusoids of 250 ln(sigma) need float32
        if self.kind == "fourier" and self.fourier_param:
            draw = fourier_frequencies(self.num_channels, self.fourier_scale, self.fourier_seed)
            init = lambda key, shape: jnp.asarray(draw, jnp.float32)
            freqs = self.param("freqs", init, draw.shape)  # [C/2]
            # 2 pi f in float32, as EDM's FourierEmbedding computes it from its float32 buffer.
            return fourier_features(x, 2 * np.pi * jax.lax.stop_gradient(freqs))
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
