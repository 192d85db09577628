"""The precision policy of a run: what computes in which dtype and at which matmul precision
(docs/methods.md section 11).

Float32 convolutions and matmuls do not run in float32 everywhere by default: GPUs from Ampere
on use TF32 (10-bit mantissa inputs), TPUs one bfloat16 pass. The policy's config values:

  model.dtype                 the network body's compute dtype: float32 | bfloat16 (parameters,
                              and the network's output, stay float32)
  model.matmul_precision      the network body's convolutions and matmuls:
                                default  the device's (TF32 on NVIDIA GPUs, one bfloat16 pass on
                                         TPUs, float32 on CPUs)
                                high     GPUs: TF32; TPUs: three bfloat16 passes
                                highest  full float32 on every device (slowest on GPUs, TPUs)
  method.jvp_dtype            the JVP pass of sct, scd and meanflow (the tangent dF/dt, du/dt):
                              model (= model.dtype: one pass serves the JVP and the network's
                              forward pass) | float32 | bfloat16; FastGen's precision_amp_jvp
  method.jvp_matmul_precision that pass's matmuls: model (= model.matmul_precision) | default |
                              high | highest

A JVP pass whose precision differs from the network's is a separate pass of the same
parameters (one more forward pass per step). Everything outside the network body computes in
float32 whatever the policy, with no knob: the preconditioning, the student-teacher difference,
the tangent's assembly and normalization, the losses and their weightings (sCM's w(t) head at
HIGHEST, as the augmentation's matrices), the gradients of the float32 parameters, the optimizer
and the EMAs.

The matmul precision is applied by tracing the network under `jax.default_matmul_precision`,
which writes it into every dot and convolution of the traced program (forward, backward, JVP and
rematerialized forward alike), inside whatever jitted function calls it: the training step and
every sampler. The evaluation networks (FID Inception, SD VAE) set HIGHEST themselves.
"""

import functools

import jax

MATMUL_PRECISIONS = ("default", "high", "highest")
AS_MODEL = "model"  # a JVP field's value that takes the network's own setting
JVP_DTYPES = (AS_MODEL, "float32", "bfloat16")
JVP_MATMUL_PRECISIONS = (AS_MODEL, *MATMUL_PRECISIONS)
# The JVP methods' own policy fields (cm/methods/sct.py and meanflow.py merge them into their
# DEFAULTS): the JVP at the network's precision, one pass, as every reference code runs it.
JVP_DEFAULTS = {"jvp_dtype": AS_MODEL, "jvp_matmul_precision": AS_MODEL}


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


def check_jvp(config) -> None:
    """One ValueError sentence unless method.jvp_dtype and method.jvp_matmul_precision are
    valid."""
    m = config.method
    for field, valid in (
        ("jvp_dtype", JVP_DTYPES),
        ("jvp_matmul_precision", JVP_MATMUL_PRECISIONS),
    ):
        if m[field] not in valid:
            raise ValueError(
                f"method.{field}={m[field]!r} is invalid: valid are {list(valid)} ('model' "
                f"takes the network's model.{field.removeprefix('jvp_')}); set "
                f"--config.method.{field} to one of them."
            )


def jvp_policy(config) -> tuple[str, str]:
    """(dtype, matmul precision) of the JVP pass, each field's 'model' resolved."""
    check_jvp(config)
    m, model = config.method, config.model
    dtype = model.dtype if m.jvp_dtype == AS_MODEL else m.jvp_dtype
    matmul = (
        model.matmul_precision if m.jvp_matmul_precision == AS_MODEL else m.jvp_matmul_precision
    )
    return dtype, matmul


def jvp_config(config):
    """A copy of `config` whose model.dtype and model.matmul_precision are the JVP pass's, or
    None when they are the network's own (the JVP then shares the network's pass)."""
    dtype, matmul = jvp_policy(config)
    if (dtype, matmul) == (config.model.dtype, config.model.matmul_precision):
        return None
    c = config.copy_and_resolve_references()
    c.model.dtype, c.model.matmul_precision = dtype, matmul
    return c
