"""Initializers of the two reference families, chosen by the role a layer plays in the network.

EDM's networks.py initializes its two U-Nets differently, and so do we (`UNet.init`):

  song  (SongUNet: DDPM++ / NCSN++; the same as score_sde's NCSN++ with init_scale=0)
        weights Xavier-uniform, biases zero; the layers that close a residual branch (the second
        conv of a block, the attention output, the output conv) Xavier * 1e-5; the attention
        q/k/v projection Xavier * sqrt(0.2); the class embedding a Xavier layer with a bias;
        the augmentation-label layer Xavier without a bias.
  adm   (DhariwalUNet = guided-diffusion's ADM): PyTorch's default, weights and biases uniform
        in +-1/sqrt(fan_in); the branch-closing layers exactly zero; the class embedding
        N(0, 1) without bias (an embedding table); the augmentation-label layer zero, no bias.

Layers are built with `dense` / `conv` below, which need the input width to set the fan-in
biases of the adm scheme (a Flax bias initializer only sees the bias shape).
"""

import dataclasses
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]

ROLES = ("default", "zero", "attn")  # ordinary layer | closes a residual branch | attention qkv
SONG_ZERO_GAIN = 1e-5  # EDM SongUNet `init_zero`: Xavier * 1e-5 (variance * 1e-10)
SONG_ATTN_GAIN = math.sqrt(0.2)  # EDM SongUNet `init_attn`: Xavier * sqrt(0.2)


def _xavier(gain: float) -> Initializer:
    """Xavier-uniform scaled by `gain` (variance_scaling's scale is a variance factor)."""
    return nn.initializers.variance_scaling(gain**2, "fan_avg", "uniform")


def _fan_in_uniform(fan_in: int) -> Initializer:
    """Uniform in +-1/sqrt(fan_in): PyTorch's default bias, EDM's kaiming_uniform * sqrt(1/3)."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


@dataclasses.dataclass(frozen=True)
class InitScheme:
    """Kernel initializer per role, and whether biases are fan-in uniform (else zero)."""

    kernels: dict  # role -> Initializer
    fan_in_bias: bool  # True: biases of default/attn layers are U(+-1/sqrt(fan_in))
    label_kernel: Initializer  # class embedding (input: one-hot labels)
    label_bias: bool
    augment_kernel: Initializer  # augmentation labels -> noise embedding (EDM's map_augment)

    def kernel(self, role: str) -> Initializer:
        if role not in ROLES:
            raise ValueError(f"Unknown layer role {role!r}; valid: {ROLES}.")
        return self.kernels[role]

    def bias(self, role: str, fan_in: int) -> Initializer:
        if self.fan_in_bias and role != "zero":
            return _fan_in_uniform(fan_in)
        return nn.initializers.zeros


INITS = {
    "song": InitScheme(
        kernels={
            "default": _xavier(1.0),
            "zero": _xavier(SONG_ZERO_GAIN),
            "attn": _xavier(SONG_ATTN_GAIN),
        },
        fan_in_bias=False,
        label_kernel=_xavier(1.0),
        label_bias=True,
        augment_kernel=_xavier(1.0),
    ),
    "adm": InitScheme(
        kernels={
            "default": nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
            "zero": nn.initializers.zeros,
            "attn": nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
        },
        fan_in_bias=True,
        label_kernel=nn.initializers.normal(1.0),
        label_bias=False,
        augment_kernel=nn.initializers.zeros,
    ),
}


def scheme(name: str) -> InitScheme:
    if name not in INITS:
        raise ValueError(f"Unknown init scheme {name!r}; valid: {sorted(INITS)}.")
    return INITS[name]


def dense(init: str, features: int, fan_in: int, role: str = "default", *, dtype, name: str):
    """nn.Dense with the `init` scheme's initializers for `role`; `fan_in` = input width."""
    s = scheme(init)
    return nn.Dense(
        features,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=s.kernel(role),
        bias_init=s.bias(role, fan_in),
        name=name,
    )


def conv(
    init: str,
    features: int,
    kernel: int,
    in_channels: int,
    role: str = "default",
    *,
    strides: int = 1,
    padding="SAME",
    dtype,
    name: str,
):
    """kernel x kernel nn.Conv with the `init` scheme's initializers; fan-in = in * kernel^2."""
    s = scheme(init)
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(strides, strides),
        padding=padding,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=s.kernel(role),
        bias_init=s.bias(role, in_channels * kernel * kernel),
        name=name,
    )


def label_embedding(init: str, features: int, *, name: str):
    """The class-label layer (input one-hot, computed in float32) of the `init` scheme."""
    s = scheme(init)
    return nn.Dense(
        features,
        use_bias=s.label_bias,
        param_dtype=jnp.float32,
        kernel_init=s.label_kernel,
        name=name,
    )


def augment_embedding(init: str, features: int, *, name: str):
    """The bias-free layer from augmentation labels (float32) into the noise embedding."""
    return nn.Dense(
        features,
        use_bias=False,
        param_dtype=jnp.float32,
        kernel_init=scheme(init).augment_kernel,
        name=name,
    )
