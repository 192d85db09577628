"""Matmul precision of the diffusion / consistency network (`model.matmul_precision`).

Float32 convolutions and matmuls do not run in float32 everywhere by default: GPUs from Ampere
on use TF32 (10-bit mantissa inputs), TPUs one bfloat16 pass. The config names what the
network's convolutions and matmuls may use:

  default   the device's default (TF32 on NVIDIA GPUs, one bfloat16 pass on TPUs, float32 on CPUs)
  high      GPUs: TF32; TPUs: three bfloat16 passes (about float32 accuracy)
  highest   full float32 on every device (slowest on GPUs and TPUs)

It is applied by tracing the network under `jax.default_matmul_precision`, which writes the
precision into every dot and convolution of the traced program (forward, backward and the
rematerialized forward alike), inside whatever jitted function calls it: the training step and
every sampler. The evaluation networks (FID Inception, SD VAE) set HIGHEST themselves and are
not affected.
"""

import functools

import jax

MATMUL_PRECISIONS = ("default", "high", "highest")


def check(name: str) -> str:
    """`name` if it is a valid model.matmul_precision, else one ValueError."""
    if name not in MATMUL_PRECISIONS:
        raise ValueError(
            f"Unknown model.matmul_precision {name!r}; valid: {list(MATMUL_PRECISIONS)}."
        )
    return name


def with_matmul_precision(fn, name: str):
    """`fn` traced under matmul precision `name`; "default" returns `fn` itself (the device's
    default, or an enclosing jax.default_matmul_precision, applies)."""
    if check(name) == "default":
        return fn

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with jax.default_matmul_precision(name):
            return fn(*args, **kwargs)

    return wrapped
