"""EDM's augmentation pipeline (docs/methods.md section 5) in pure JAX, for the jitted step.

The semantics of EDM's AugmentPipe (NVlabs/edm training/augment.py) for the transforms its
CIFAR-10 recipe enables, in its order: x-flip and y-flip (pixel blits), then isotropic scaling,
rotation, anisotropic scaling and fractional translation, composed into one inverse matrix per
sample and applied in one resampling: reflect padding, 2x upsampling with the sym6 wavelet
low-pass filter, bilinear sampling (zeros outside), sym6 downsampling, cropping. Each transform
is drawn with probability min(multiplier * p, 1); the labels record what was drawn, in EDM's
layout, and condition the network (model.augment_dim), so that sampling with zero labels gives
un-augmented images.

One deliberate difference: EDM pads by a margin computed over the whole batch (the farthest
transformed corner plus the filter's reach, at most the image size - 1); a jitted step needs a
static shape, so every sample is padded by that largest margin, H - 1 and W - 1. Reflect padding
by less is a prefix of reflect padding by more, so the outputs agree wherever EDM's margin
covers what is sampled (which is what its margin is for), and a sample no longer depends on the
other samples of its batch.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp

# Low-pass filter of the sym6 wavelet: EDM's up- and downsampling filter (sum sqrt(2); its even
# shifts are orthonormal, so upsampling then downsampling returns the input exactly).
SYM6 = (
    0.015404109327027373,
    0.0034907120842174702,
    -0.11799011114819057,
    -0.048311742585633,
    0.4910559419267466,
    0.787641141030194,
    0.3379294217276218,
    -0.07263752278646252,
    -0.021060292512300564,
    0.04472490177066578,
    0.0017677118642428036,
    -0.007800708325034148,
)
FILTER_PAD = len(SYM6) // 4  # 3: pixels the sampled area extends past the image on each side
UP_PAD = (len(SYM6) + 1) // 2  # 6: zero padding of the upsampling convolution
DOWN_PAD = (len(SYM6) - 1) // 2  # 5: zero padding of the downsampling convolution
AUGMENT_TAG = 0xA06  # fold_in tag of the augmentation key inside the train step's key

# EDM's order, which is also the order of the labels; each transform adds this many labels.
LABEL_WIDTHS = {
    "xflip": 1,  # 1 if flipped
    "yflip": 1,  # 1 if flipped
    "scale": 1,  # w, the scale being 2^(w * scale_std)
    "rotate_frac": 2,  # cos(angle) - 1, sin(angle)
    "aniso": 2,  # w cos(r), w sin(r): log2-stretch w * aniso_std along the axis at angle r
    "translate_frac": 2,  # wx, wy: the shift in units of translate_frac_std * (W, H)
}
TRANSFORMS = tuple(LABEL_WIDTHS)
GEOMETRIC = ("scale", "rotate_frac", "aniso", "translate_frac")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Probability multipliers (0 = never) and strengths: the fields of config.augment."""

    p: float = 0.0
    xflip: float = 0.0
    yflip: float = 0.0
    scale: float = 0.0
    rotate_frac: float = 0.0
    aniso: float = 0.0
    translate_frac: float = 0.0
    scale_std: float = 0.2
    rotate_frac_max: float = 1.0
    aniso_std: float = 0.2
    aniso_rotate_prob: float = 0.5
    translate_frac_std: float = 0.125

    def __post_init__(self):
        for f in dataclasses.fields(self):
            if getattr(self, f.name) < 0:
                raise ValueError(f"augment.{f.name} is negative; set it to 0 or more.")

    @classmethod
    def from_config(cls, augment_config) -> "Settings":
        return cls(**{f.name: float(augment_config[f.name]) for f in dataclasses.fields(cls)})

    def enabled(self) -> tuple:
        """The transforms that can happen (multiplier > 0, p > 0), in EDM's order."""
        if self.p <= 0:
            return ()
        return tuple(t for t in TRANSFORMS if getattr(self, t) > 0)


def label_dim(settings: Settings) -> int:
    """Width of the labels augment() returns (EDM's CIFAR-10 pipeline: 9)."""
    return sum(LABEL_WIDTHS[t] for t in settings.enabled())


def draw(key, n: int, s: Settings) -> dict:
    """Per-sample parameters of each enabled transform, zero where it was not drawn.

    xflip, yflip: [N] 0/1; scale: [N] w; rotate_frac: [N] angle; aniso: [2, N] (w, r);
    translate_frac: [2, N] (wx, wy). Drawn on the whole (global) batch from `key`, so the result
    does not depend on how the batch is sharded; each transform has its own subkey.
    """
    keys = dict(zip(TRANSFORMS, jax.random.split(key, len(TRANSFORMS)), strict=True))
    u = lambda k, shape=(n,): jax.random.uniform(k, shape)  # noqa: E731
    out = {}
    for name in s.enabled():
        k_value, k_gate, k_extra, k_extra_gate = jax.random.split(keys[name], 4)
        drawn = u(k_gate) < getattr(s, name) * s.p  # [N]
        if name in ("xflip", "yflip"):
            value = jax.random.randint(k_value, (n,), 0, 2).astype(jnp.float32)
        elif name == "scale":
            value = jax.random.normal(k_value, (n,))
        elif name == "rotate_frac":
            value = (u(k_value) * 2 - 1) * (math.pi * s.rotate_frac_max)
        elif name == "aniso":
            r = (u(k_extra) * 2 - 1) * math.pi  # the axis is rotated with its own probability
            r = jnp.where(u(k_extra_gate) < s.aniso_rotate_prob, r, 0.0)
            value = jnp.stack([jax.random.normal(k_value, (n,)), r])
            drawn = jnp.stack([drawn, jnp.ones_like(drawn)])  # r is kept when w is not drawn
        else:  # translate_frac: one draw decides both axes
            value = jax.random.normal(k_value, (2, n))
        out[name] = jnp.where(drawn, value, 0.0)
    return out


def labels(params: dict, s: Settings) -> jax.Array:
    """[N, label_dim] float32 in EDM's layout (LABEL_WIDTHS order)."""
    cols = []
    for name in s.enabled():
        v = params[name]
        if name == "rotate_frac":
            cols += [jnp.cos(v) - 1, jnp.sin(v)]
        elif name == "aniso":
            cols += [v[0] * jnp.cos(v[1]), v[0] * jnp.sin(v[1])]
        elif name == "translate_frac":
            cols += [v[0], v[1]]
        else:
            cols.append(v)
    return jnp.stack(cols, axis=1).astype(jnp.float32)


def _matrices(entries) -> jax.Array:
    """3x3 nested lists of [N] arrays or numbers -> [N, 3, 3]."""
    n = max([jnp.shape(e)[0] for row in entries for e in row if jnp.ndim(e)] or [1])
    rows = [
        jnp.stack([jnp.broadcast_to(jnp.asarray(e, jnp.float32), (n,)) for e in r], -1)
        for r in entries
    ]
    return jnp.stack(rows, axis=1)


def matmul(*matrices) -> jax.Array:
    """Product of [N, 3, 3] matrices in full float32 (GPU/TPU default matmuls round the
    operands to TF32/bfloat16, which would move the sample points by a fraction of a pixel)."""
    out = matrices[0]
    for m in matrices[1:]:
        out = jnp.matmul(out, m, precision=jax.lax.Precision.HIGHEST)
    return out


def translation(tx, ty):
    return _matrices([[1, 0, tx], [0, 1, ty], [0, 0, 1]])


def scaling(sx, sy):
    return _matrices([[sx, 0, 0], [0, sy, 0], [0, 0, 1]])


def rotation(theta):
    """By theta from the x axis towards the y axis (with rows downwards: clockwise)."""
    c, s = jnp.cos(theta), jnp.sin(theta)
    return _matrices([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def inverse_matrix(params: dict, s: Settings, height: int, width: int) -> jax.Array:
    """[N, 3, 3] G_inv: output pixel offset from the image centre (x right, y down) -> the input
    offset it samples. The inverses of EDM's transforms, multiplied in EDM's order."""
    n = next(iter(params.values())).shape[-1]
    g = jnp.broadcast_to(jnp.eye(3, dtype=jnp.float32), (n, 3, 3))
    if "scale" in params:
        inv = 2.0 ** (-params["scale"] * s.scale_std)  # 1 / 2^(w std)
        g = matmul(g, scaling(inv, inv))
    if "rotate_frac" in params:
        g = matmul(g, rotation(params["rotate_frac"]))  # EDM: rotate2d_inv(-angle)
    if "aniso" in params:
        w, r = params["aniso"]
        a = 2.0 ** (w * s.aniso_std)
        g = matmul(g, rotation(-r), scaling(1 / a, a), rotation(r))  # inverse stretch along r
    if "translate_frac" in params:
        tx, ty = params["translate_frac"]
        shift = translation(-tx * width * s.translate_frac_std, -ty * height * s.translate_frac_std)
        g = matmul(g, shift)
    return g


def _filter_1d(x, taps, axis: int, *, stride: int = 1, dilate: int = 1, pad: int = 0):
    """Per-channel 1-D correlation of [N, H, W, C] along axis 1 or 2 with zero padding; `dilate`
    inserts zeros between input pixels first (EDM's zero-interleaved upsampling)."""
    c = x.shape[-1]
    k = jnp.asarray(taps, jnp.float32)
    shape = (len(taps), 1) if axis == 1 else (1, len(taps))
    kernel = jnp.tile(k.reshape(*shape, 1, 1), (1, 1, 1, c))  # [kh, kw, 1, C]
    spatial = lambda v, other: (v, other) if axis == 1 else (other, v)  # noqa: E731
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=spatial(stride, 1),
        padding=spatial((pad, pad), (0, 0)),
        lhs_dilation=spatial(dilate, 1),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=c,
        precision=jax.lax.Precision.HIGHEST,
    )


def upsample(x):
    """[N, H, W, C] -> [N, 2H, 2W, C]: zeros between pixels (2H - 1), then sym6 (as a true
    convolution) with 6 zeros of padding on each side, along W then H."""
    for axis in (2, 1):
        x = _filter_1d(x, SYM6[::-1], axis, dilate=2, pad=UP_PAD)
    return x


def downsample(x):
    """[N, 2H', 2W', C] -> [N, H', W', C]: sym6 correlation with stride 2 and 5 zeros of
    padding, along W then H."""
    for axis in (2, 1):
        x = _filter_1d(x, SYM6, axis, stride=2, pad=DOWN_PAD)
    return x


def pixel_map(g_inv, in_hw: tuple, out_hw: tuple) -> jax.Array:
    """[N, 3, 3]: output pixel (column, row, 1) of the upsampled output -> input pixel
    coordinates (x, y, 1) of the upsampled padded input.

    EDM hands torch's affine_grid / grid_sample (align_corners=False) the matrix
    S(2/Wi, 2/Hi) T(-1/2) S(2) G_inv S(1/2) T(1/2) S(Wo/2, Ho/2) on normalised coordinates;
    those map pixel j to (2j + 1)/Wo - 1 and normalised g back to ((g + 1) Wi - 1)/2. In pixels:
    j -> j + 1/2 - Wo/2 (upsampled offset from the centre) -> + 1/2, / 2 (original pixels)
    -> G_inv -> * 2, - 1/2 (upsampled) -> + (Wi - 1)/2 (input pixel).
    """
    (hi, wi), (ho, wo) = in_hw, out_hw
    to_centre = translation(0.5 - wo / 2 + 0.5, 0.5 - ho / 2 + 0.5)[0]  # j + 1 - Wo/2
    from_centre = translation((wi - 1) / 2 - 0.5, (hi - 1) / 2 - 0.5)[0]
    half, double = scaling(0.5, 0.5)[0], scaling(2.0, 2.0)[0]
    return matmul(from_centre, double, g_inv, half, to_centre)


def sample_bilinear(images, coords_map, out_hw: tuple):
    """Bilinear samples of [N, Hi, Wi, C] at coords_map @ (column, row, 1) for every pixel of an
    [Ho, Wo] grid; neighbours outside the image count as zero (grid_sample's 'zeros')."""
    n, hi, wi, _ = images.shape
    rows, cols = jnp.meshgrid(
        jnp.arange(out_hw[0], dtype=jnp.float32),
        jnp.arange(out_hw[1], dtype=jnp.float32),
        indexing="ij",
    )  # [Ho, Wo]
    m = coords_map[:, :, :, None, None]  # [N, 3, 3, 1, 1]
    px = m[:, 0, 0] * cols + m[:, 0, 1] * rows + m[:, 0, 2]  # [N, Ho, Wo]
    py = m[:, 1, 0] * cols + m[:, 1, 1] * rows + m[:, 1, 2]
    x0, y0 = jnp.floor(px), jnp.floor(py)
    fx, fy = (px - x0)[..., None], (py - y0)[..., None]  # [N, Ho, Wo, 1]

    def corner(dy, dx):
        yi, xi = (y0 + dy).astype(jnp.int32), (x0 + dx).astype(jnp.int32)
        inside = (yi >= 0) & (yi < hi) & (xi >= 0) & (xi < wi)  # [N, Ho, Wo]
        pick = jax.vmap(lambda img, y, x: img[y, x])
        values = pick(images, jnp.clip(yi, 0, hi - 1), jnp.clip(xi, 0, wi - 1))
        return values * inside[..., None]  # [N, Ho, Wo, C]

    top = corner(0, 0) * (1 - fx) + corner(0, 1) * fx
    bottom = corner(1, 0) * (1 - fx) + corner(1, 1) * fx
    return top * (1 - fy) + bottom * fy


def resample(images, g_inv):
    """[N, H, W, C] float32 transformed by the per-sample [N, 3, 3] G_inv, EDM's way."""
    _, h, w, _ = images.shape
    padded = jnp.pad(images, ((0, 0), (h - 1, h - 1), (w - 1, w - 1), (0, 0)), mode="reflect")
    up = upsample(padded)  # [N, 2(3H - 2), 2(3W - 2), C]
    out_hw = (2 * (h + 2 * FILTER_PAD), 2 * (w + 2 * FILTER_PAD))
    coords_map = pixel_map(g_inv, up.shape[1:3], out_hw)
    down = downsample(sample_bilinear(up, coords_map, out_hw))  # [N, H + 6, W + 6, C]
    return down[:, FILTER_PAD:-FILTER_PAD, FILTER_PAD:-FILTER_PAD]


def apply(images, params: dict, s: Settings):
    """[N, H, W, C] images with the drawn `params` applied (flips, then one resampling)."""
    x = images.astype(jnp.float32)
    flip = lambda name: params[name][:, None, None, None] == 1  # noqa: E731
    if "xflip" in params:
        x = jnp.where(flip("xflip"), x[:, :, ::-1], x)
    if "yflip" in params:
        x = jnp.where(flip("yflip"), x[:, ::-1], x)
    if any(t in params for t in GEOMETRIC):
        x = resample(x, inverse_matrix(params, s, x.shape[1], x.shape[2]))
    return x.astype(images.dtype)


def augment(key, images, s: Settings):
    """(augmented [N, H, W, C], labels [N, label_dim]); the identity with no labels when off."""
    if not s.enabled():
        return images, jnp.zeros((images.shape[0], 0), jnp.float32)
    params = draw(key, images.shape[0], s)
    return apply(images, params, s), labels(params, s)


def for_step(rng, images, s: Settings | None):
    """The training step's augmentation, shared by every augmenting objective: (augmented
    [B, H, W, C], labels [B, label_dim]) drawn from fold_in(rng, AUGMENT_TAG) on the global
    batch (one draw per sample, independent of the sharding), or (images, None) when off, so
    that the network then gets no augmentation labels and rng's other uses are unchanged."""
    if s is None or not s.enabled():
        return images, None
    return augment(jax.random.fold_in(rng, AUGMENT_TAG), images, s)


def check_model(s: Settings, augment_dim: int, method: str, augmenting_methods):
    """Raises one sentence when the augmentation cannot reach the network as configured;
    augmenting_methods: the method names whose objective applies it (the method table's)."""
    if not s.enabled():
        return
    if method not in augmenting_methods:
        raise ValueError(
            f"augment.p > 0 is implemented for method.name {sorted(augmenting_methods)} only, "
            f"not {method!r}; set --config.augment.p=0."
        )
    if augment_dim != label_dim(s):
        raise ValueError(
            f"The augmentation gives {label_dim(s)} labels but model.augment_dim is "
            f"{augment_dim}; set --config.model.augment_dim={label_dim(s)}."
        )
