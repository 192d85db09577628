"""The FID input pipeline: uint8 images -> TF1 bilinear resize to 299 -> (x - 128) / 128.

The published FID numbers come from TensorFlow 1's graph, which resizes with the legacy
ResizeBilinear kernel (align_corners=False, no half-pixel centers): output pixel i reads the
source coordinate i * in / out, interpolates between floor and floor + 1 (clamped to the
last pixel), x first, then y. jax.image.resize and torch's interpolate use half-pixel
centers instead, which shifts the image by up to half a source pixel and changes FID.
"""

import jax.numpy as jnp
import numpy as np

PIXEL_CENTER = 128.0  # the graph maps uint8 v to (v - 128) / 128, in [-1, 127/128]


def _axis_weights(in_size: int, out_size: int):
    """Per output index: (low index, high index, fraction) int32 [out], int32 [out], f32 [out].

    Computed in float32 as TF does: scale = in / out, source = index * scale.
    """
    scale = np.float32(in_size / out_size)
    src = np.arange(out_size, dtype=np.float32) * scale  # [out]
    low = np.floor(src).astype(np.int32)
    high = np.minimum(low + 1, in_size - 1).astype(np.int32)
    return low, high, (src - low).astype(np.float32)


def resize_bilinear_tf1(images, size: int):
    """images [B, H, W, C] (any real dtype) -> float32 [B, size, size, C], TF1 legacy bilinear."""
    x = jnp.asarray(images, jnp.float32)
    y_lo, y_hi, dy = _axis_weights(x.shape[1], size)
    x_lo, x_hi, dx = _axis_weights(x.shape[2], size)
    top, bottom = x[:, y_lo], x[:, y_hi]  # [B, size, W, C] each
    dx = dx[None, None, :, None]
    top = top[:, :, x_lo] + (top[:, :, x_hi] - top[:, :, x_lo]) * dx  # [B, size, size, C]
    bottom = bottom[:, :, x_lo] + (bottom[:, :, x_hi] - bottom[:, :, x_lo]) * dx
    return top + (bottom - top) * dy[None, :, None, None]


def preprocess(images, size: int):
    """uint8 [B, H, W, C] with C in (1, 3) -> Inception input float32 [B, size, size, 3].

    Grayscale images are repeated to three channels (as for MNIST-style FID).
    """
    if images.shape[-1] == 1:
        images = jnp.repeat(images, 3, axis=-1)
    return (resize_bilinear_tf1(images, size) - PIXEL_CENTER) / PIXEL_CENTER
