"""Image grids for humans: uint8 batches tiled into one picture and written as PNG."""

import io
import math

import numpy as np
from PIL import Image

from cm.io import fileio

DISPLAY_SIZE = 128  # small sample images are upscaled to at least this many pixels per cell


def display_upscale(image_size: int) -> int:
    """Integer nearest-neighbour factor that shows [image_size]^2 samples at >= DISPLAY_SIZE."""
    return max(1, DISPLAY_SIZE // image_size)


def make_grid(images, columns: int | None = None, pad: int = 1):
    """uint8 [N, H, W, C] -> uint8 [rows*(H+pad)+pad, cols*(W+pad)+pad, C] tiled grid."""
    n, h, w, c = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = np.zeros((rows * (h + pad) + pad, columns * (w + pad) + pad, c), np.uint8)
    for k in range(n):
        r, q = divmod(k, columns)
        grid[
            pad + r * (h + pad) : pad + r * (h + pad) + h,
            pad + q * (w + pad) : pad + q * (w + pad) + w,
        ] = images[k]
    return grid


def png_bytes(grid, upscale: int = 1) -> bytes:
    """A uint8 [H, W, C] image as PNG file bytes, nearest-neighbour upscaled so small images
    stay visible."""
    if upscale > 1:
        grid = grid.repeat(upscale, axis=0).repeat(upscale, axis=1)
    buffer = io.BytesIO()
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(buffer, format="PNG")
    return buffer.getvalue()


def save_png(path: fileio.PathLike, grid, upscale: int = 1):
    """Writes a uint8 [H, W, C] image as PNG to any path (gs:// too), atomically."""
    fileio.write_bytes_atomic(path, png_bytes(grid, upscale))
