"""LPIPS (Zhang et al. 2018, VGG16 v0.1) as consistency distillation computes it
(docs/methods.md section 8): pure functions of (weights, images), per-sample values [B].

    images in [-1, 1], [B, H, W, C] (C = 3, or 1: gray, repeated to RGB)
    -> bilinear upsampling to resize x resize when a side is smaller (CM: 224)
    -> (x + 1) / 2, then ImageNet's per-channel mean and std
    -> VGG16's 13 conv3x3 + ReLU; a 2x2 pooling (max or average) after blocks 1 to 4
    -> at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3: each pixel's feature vector divided by
       its norm over the channels (+ 1e-10), the squared difference of the two images, a
       weighted sum over the channels with the non-negative lin weights, the spatial mean
    -> the sum over the five layers.

The weights (cm/models/lpips_weights.py reads them) are a pytree: {"vgg": {"conv1_1": {"kernel":
[3, 3, in, out], "bias": [out]}, ...}, "lin": {"relu1_2": [64], ...}}. The convolutions run at
the enclosing matmul precision (cd.py traces them under model.matmul_precision).
"""

import jax
import jax.numpy as jnp

# VGG16's convolutional part: (output channels, convolutions) per block.
VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
# The conv layers in order, named as in the VGG paper (block, index in block).
CONV_NAMES = tuple(
    f"conv{b + 1}_{i + 1}" for b, (_, n) in enumerate(VGG16_BLOCKS) for i in range(n)
)
# The ReLU that ends each block: LPIPS compares these five feature maps.
LAYERS = tuple(f"relu{b + 1}_{n}" for b, (_, n) in enumerate(VGG16_BLOCKS))
# ImageNet statistics on [0, 1] inputs (torchvision's VGG16 was trained with them). The lpips
# package's ScalingLayer on [-1, 1] inputs, shift -0.030 / -0.088 / -0.188 and scale 0.458 /
# 0.448 / 0.450, is the same map: shift = 2 mean - 1, scale = 2 std.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Added to each feature vector's norm before dividing (lpips' normalize_tensor, piq's EPS).
NORM_EPS = 1e-10
POOLINGS = ("max", "avg")  # max: the lpips package and CM's CIFAR-10 code; avg: CM's PyTorch
# relu5_3 sits behind four 2x2 poolings: the smallest input side that leaves it a pixel.
MIN_SIDE = 2 ** (len(VGG16_BLOCKS) - 1)


def upsample(images, size: int):
    """Bilinear resize of [B, H, W, C] to [B, size, size, C] when H or W is smaller than size
    (0 = never); unchanged otherwise. Half-pixel centres with edge clamping, as torch's
    F.interpolate(mode="bilinear", align_corners=False); only upsampling happens, where JAX's
    antialiasing has no effect."""
    b, h, w, c = images.shape
    if size <= 0 or min(h, w) >= size:
        return images
    return jax.image.resize(images, (b, size, size, c), method="bilinear", antialias=False)


def to_vgg_input(images):
    """[-1, 1] images [B, H, W, C] -> ImageNet-standardized RGB [B, H, W, 3] (float32); a
    single gray channel is repeated to three."""
    x = images.astype(jnp.float32)
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    mean, std = jnp.asarray(IMAGENET_MEAN), jnp.asarray(IMAGENET_STD)
    return ((x + 1.0) / 2.0 - mean) / std


def _conv3x3(x, layer):
    y = jax.lax.conv_general_dilated(
        x, layer["kernel"], (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return y + layer["bias"]


def _pool2x2(x, pooling: str):
    """2x2 window, stride 2, no padding (odd sides lose their last row / column, as torch)."""
    window = (1, 2, 2, 1)
    if pooling == "max":
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, window, "VALID")
    return jax.lax.reduce_window(x, 0.0, jax.lax.add, window, window, "VALID") / 4.0


def vgg_features(vgg: dict, x, pooling: str) -> list:
    """The five compared ReLU outputs of VGG16 for standardized input x [B, H, W, 3]:
    [B, H, W, 64], [B, H/2, W/2, 128], ..., [B, H/16, W/16, 512]."""
    if pooling not in POOLINGS:
        raise ValueError(f"Unknown LPIPS pooling {pooling!r}; valid: {list(POOLINGS)}.")
    names, features = iter(CONV_NAMES), []
    for block, (_, convs) in enumerate(VGG16_BLOCKS):
        if block > 0:
            x = _pool2x2(x, pooling)
        for _ in range(convs):
            x = jax.nn.relu(_conv3x3(x, vgg[next(names)]))
        features.append(x)
    return features


def unit_normalize(f):
    """Each pixel's feature vector over the channels divided by (its norm + NORM_EPS):
    [B, h, w, C] -> same."""
    norm = jnp.sqrt(jnp.sum(jnp.square(f), axis=-1, keepdims=True))
    return f / (norm + NORM_EPS)


def layer_distances(weights: dict, a, b, resize: int, pooling: str):
    """Each layer's term of LPIPS(a, b): the spatial mean of the lin-weighted squared
    difference of the unit-normalized features. a, b: [-1, 1] images [B, H, W, C] -> [B, 5]."""

    def features(images):
        return vgg_features(weights["vgg"], to_vgg_input(upsample(images, resize)), pooling)

    terms = []
    for name, fa, fb in zip(LAYERS, features(a), features(b), strict=True):
        diff = jnp.square(unit_normalize(fa) - unit_normalize(fb))  # [B, h, w, C]
        terms.append(jnp.mean(diff @ weights["lin"][name], axis=(1, 2)))  # [B]
    return jnp.stack(terms, axis=-1)


def lpips(weights: dict, a, b, resize: int, pooling: str):
    """LPIPS(a, b) per sample (module docstring): [-1, 1] images [B, H, W, C] -> [B]."""
    return jnp.sum(layer_distances(weights, a, b, resize, pooling), axis=-1)
