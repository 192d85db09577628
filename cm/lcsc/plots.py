"""Small PNG charts drawn with pillow (no plotting library needed), returned as PNG bytes so
that the caller writes them through cm/io/fileio.py (atomically, on any path)."""

import io

import numpy as np
from PIL import Image, ImageDraw

WIDTH, HEIGHT, MARGIN = 640, 400, 60
COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]


def _frame(title: str, x_range, y_range, x_label: str):
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = MARGIN, 30, WIDTH - 20, HEIGHT - MARGIN
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text((left, 8), title, fill="black")
    draw.text((left, bottom + 30), x_label, fill="black")
    for frac in (0.0, 0.5, 1.0):
        y = y_range[0] + frac * (y_range[1] - y_range[0])
        draw.text((4, bottom - frac * (bottom - top) - 6), f"{y:.4g}", fill="black")
        x = x_range[0] + frac * (x_range[1] - x_range[0])
        draw.text((left + frac * (right - left) - 10, bottom + 6), f"{x:.4g}", fill="black")

    def to_pixel(x, y):
        fx = (x - x_range[0]) / max(x_range[1] - x_range[0], 1e-12)
        fy = (y - y_range[0]) / max(y_range[1] - y_range[0], 1e-12)
        return left + fx * (right - left), bottom - fy * (bottom - top)

    return image, draw, to_pixel


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _padded_range(values):
    lo, hi = float(np.min(values)), float(np.max(values))
    pad = 0.05 * (hi - lo) if hi > lo else 0.5
    return lo - pad, hi + pad


def line_plot(x, series: dict, title: str, x_label: str) -> bytes:
    """PNG: one line per entry of series {name: y [N]} against x [N], with a legend."""
    x = np.asarray(x, np.float64)
    ys = [np.asarray(y, np.float64) for y in series.values()]
    image, draw, to_pixel = _frame(
        title, _padded_range(x), _padded_range(np.concatenate(ys)), x_label
    )
    for i, (name, y) in enumerate(zip(series, ys, strict=True)):
        color = COLORS[i % len(COLORS)]
        points = [to_pixel(a, b) for a, b in zip(x, y, strict=True)]
        if len(points) > 1:
            draw.line(points, fill=color, width=2)
        for px, py in points:
            draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=color)
        draw.text((WIDTH - 200, 40 + 14 * i), name, fill=color)
    return _png(image)


def bar_plot(x, series: dict, title: str, x_label: str) -> bytes:
    """PNG: grouped bars of series {name: values [N]} at positions x [N], with a zero line."""
    x = np.asarray(x, np.float64)
    ys = [np.asarray(y, np.float64) for y in series.values()]
    y_range = _padded_range(np.concatenate([*ys, [0.0]]))
    spacing = float(np.min(np.diff(x))) if len(x) > 1 else 1.0
    x_range = (x[0] - spacing, x[-1] + spacing)
    image, draw, to_pixel = _frame(title, x_range, y_range, x_label)
    draw.line([to_pixel(x_range[0], 0.0), to_pixel(x_range[1], 0.0)], fill="gray")
    width = 0.8 * spacing / len(ys)
    for i, (name, y) in enumerate(zip(series, ys, strict=True)):
        color = COLORS[i % len(COLORS)]
        for xi, yi in zip(x, y, strict=True):
            x0 = xi - 0.4 * spacing + i * width
            (p0x, p0y), (p1x, p1y) = to_pixel(x0, 0.0), to_pixel(x0 + width, yi)
            draw.rectangle([p0x, min(p0y, p1y), p1x, max(p0y, p1y)], fill=color)
        draw.text((WIDTH - 200, 40 + 14 * i), name, fill=color)
    return _png(image)
