"""FIR resampling (EDM's Conv2d resample path): a separable, normalized filter per channel.

The 2D kernel is outer(f, f) / sum(f)^2, so a constant image stays constant away from the
border. (1, 1) is 2x2 average pooling / nearest-neighbour upsampling (DDPM++, ADM); NCSN++ uses
(1, 3, 3, 1). Filters must be symmetric and of even length, so that sizes halve / double
exactly and the transposed convolution needs no flip.

The filter is applied one axis at a time as a weighted sum of shifted (strided) slices, the same
arithmetic as EDM's depthwise convolution: XLA fuses the slices into one elementwise loop,
where a depthwise convolution runs 10-200x slower on XLA:CPU (BENCHMARKS.md, "Networks").
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

UP_GAIN = 4.0  # upsampling by 2 in 2D spreads each pixel over 4: the kernel sums to 4
SPATIAL_AXES = (1, 2)  # H, W of NHWC
NAME_SCOPE = "resample"  # the ops' name-stack entry (benchmarks/profile_step.py reads it)


def _taps(resample_filter: Sequence[int], gain: float) -> list[float]:
    """1D taps f / sum(f) * sqrt(gain): their outer product is the 2D kernel."""
    f = np.asarray(resample_filter, np.float64)
    if len(f) % 2 or not np.array_equal(f, f[::-1]):
        raise ValueError(
            f"resample_filter {tuple(resample_filter)} must be symmetric, even length."
        )
    return list(f / f.sum() * np.sqrt(gain))


def _dilate(x, axis: int):
    """Insert a zero between neighbours along `axis`: n -> 2n - 1 (transposed-conv input)."""
    n = x.shape[axis]
    x = jnp.stack([x, jnp.zeros_like(x)], axis=axis + 1)  # [..., n, 2, ...]
    x = x.reshape(x.shape[:axis] + (2 * n,) + x.shape[axis + 2 :])
    return jax.lax.slice_in_dim(x, 0, 2 * n - 1, axis=axis)


def _filter_axis(x, taps: list[float], axis: int, padding: int, stride: int):
    """Correlate `x` with `taps` along `axis` after zero padding, keeping every stride-th output."""
    pad = [(padding, padding) if d == axis else (0, 0) for d in range(x.ndim)]
    x = jnp.pad(x, pad)
    n = (x.shape[axis] - len(taps)) // stride + 1
    out = 0.0
    for offset, tap in enumerate(taps):
        shifted = jax.lax.slice_in_dim(x, offset, offset + (n - 1) * stride + 1, stride, axis)
        out = out + tap * shifted
    return out


def fir(
    x,
    resample_filter: Sequence[int],
    *,
    padding: int,
    stride: int = 1,
    dilation: int = 1,
    gain: float = 1.0,
):
    """Per-channel FIR filter of [B, H, W, C], as EDM's depthwise conv2d / conv_transpose2d:
    input dilation `dilation` (1 or 2: transposed convolution), zero-pad by `padding`, output
    stride `stride`. The result keeps x's dtype."""
    taps = _taps(resample_filter, gain)
    with jax.named_scope(NAME_SCOPE):  # profiles attribute these ops to resampling
        for axis in SPATIAL_AXES:
            if dilation == 2:
                x = _dilate(x, axis)
            elif dilation != 1:
                raise ValueError(f"dilation must be 1 or 2, got {dilation}.")
            x = _filter_axis(x, taps, axis, padding, stride).astype(x.dtype)
    return x


def downsample(x, resample_filter: Sequence[int] = (1, 1)):
    """[B, H, W, C] -> [B, H/2, W/2, C]: filter, keep every second pixel (EDM: padding f_pad)."""
    return fir(x, resample_filter, padding=(len(resample_filter) - 1) // 2, stride=2)


def upsample(x, resample_filter: Sequence[int] = (1, 1)):
    """[B, H, W, C] -> [B, 2H, 2W, C]: transposed convolution with UP_GAIN * filter, stride 2
    (EDM's conv_transpose2d with padding f_pad = a dilated conv padded by k - 1 - f_pad)."""
    k = len(resample_filter)
    pad = k - 1 - (k - 1) // 2
    return fir(x, resample_filter, padding=pad, dilation=2, gain=UP_GAIN)


def prefilter_for_strided_conv(x, resample_filter: Sequence[int], conv_kernel: int):
    """The filter half of EDM's fused 'conv then FIR down' (NCSN++'s residual input branch).

    conv(pad w) -> FIR(stride 2) equals FIR(pad f + w) -> conv(stride 2, VALID): both are the
    composite kernel on the input padded by f_pad + w_pad, but filtering first lets the conv
    compute only the kept pixels. [B, H, W, C] -> [B, H + 2 w_pad - 1, W + 2 w_pad - 1, C].
    """
    pad = (len(resample_filter) - 1) // 2 + conv_kernel // 2
    return fir(x, resample_filter, padding=pad)
