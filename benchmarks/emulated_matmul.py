"""Accelerator matmul precisions emulated on any device, for benchmarks/precision_study.py.

XLA:CPU runs every float32 convolution and matmul in full float32 whatever precision a program
asks for (jax.default_matmul_precision("bfloat16") changes nothing there), so the defaults of
accelerators cannot be measured on a CPU directly. They differ from float32 only in how the
inputs of a convolution or matmul are rounded; products and sums stay float32:

  TF32 (NVIDIA GPUs' default from Ampere on)   inputs rounded to 10 explicit mantissa bits
  one bfloat16 pass (TPUs' default)             inputs rounded to 7 explicit mantissa bits

`with_rounded_matmul_inputs(fn, bits)` evaluates fn's traced program with the float32 operands
of every `conv_general_dilated` and `dot_general` rounded to nearest (ties to even) at `bits`
mantissa bits. It is meant for forward evaluation (it steps into custom_jvp functions' primal
body and drops their rule). Hardware may round ties differently, or truncate: truncation would
double the error.
"""

import jax
import jax.extend.core as jcore
import jax.numpy as jnp
import numpy as np

MATMULS = ("conv_general_dilated", "dot_general")
FLOAT32_MANTISSA_BITS = 23
TF32_BITS = 10
BFLOAT16_BITS = 7
# Call-like primitives whose body is evaluated in place (with its matmuls rounded), and the
# parameter that holds the body.
_CALLS = {
    "jit": "jaxpr",
    "pjit": "jaxpr",
    "closed_call": "call_jaxpr",
    "checkpoint": "jaxpr",
    "custom_jvp_call": "call_jaxpr",
    "custom_vjp_call": "call_jaxpr",
}


def round_mantissa(x, bits: int):
    """float32 `x` rounded to nearest, ties to even, at `bits` explicit mantissa bits.

    Integer arithmetic on the bit pattern: adding half an ulp of the target (minus one, plus the
    kept lowest bit, which breaks ties towards even) and clearing the dropped bits. A carry into
    the exponent is the correct rounding up to the next binade. (Inf and NaN are not handled.)
    """
    drop = FLOAT32_MANTISSA_BITS - bits
    u = jax.lax.bitcast_convert_type(jnp.asarray(x, jnp.float32), jnp.uint32)
    kept_lsb = (u >> np.uint32(drop)) & np.uint32(1)
    u = u + np.uint32((1 << (drop - 1)) - 1) + kept_lsb
    u = u & np.uint32(~((1 << drop) - 1) & 0xFFFFFFFF)
    return jax.lax.bitcast_convert_type(u, jnp.float32)


def _contains_matmul(value) -> bool:
    inner = getattr(value, "jaxpr", value)  # ClosedJaxpr -> Jaxpr
    if not hasattr(inner, "eqns"):
        return False
    for eqn in inner.eqns:
        if eqn.primitive.name in MATMULS:
            return True
        for v in eqn.params.values():
            for sub in v if isinstance(v, tuple | list) else (v,):
                if _contains_matmul(sub):
                    return True
    return False


def _evaluate(jaxpr, consts, args, bits: int):
    """Outputs of `jaxpr` on `args`, with every conv / dot float32 operand rounded."""
    env = {}

    def read(var):
        return var.val if isinstance(var, jcore.Literal) else env[var]

    env.update(zip(jaxpr.constvars, consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))
    for eqn in jaxpr.eqns:
        inputs = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        sub = eqn.params.get(_CALLS.get(name, ""))
        if name in MATMULS:
            lhs, rhs, *rest = inputs
            lhs, rhs = (
                round_mantissa(a, bits) if a.dtype == jnp.float32 else a for a in (lhs, rhs)
            )
            outputs = eqn.primitive.bind(lhs, rhs, *rest, **eqn.params)
        elif sub is not None:
            inner, inner_consts = getattr(sub, "jaxpr", sub), getattr(sub, "consts", ())
            outputs = _evaluate(inner, inner_consts, inputs, bits)
        else:
            if any(_contains_matmul(v) for v in eqn.params.values()):
                raise NotImplementedError(f"Cannot emulate matmuls inside {name!r}.")
            outputs = eqn.primitive.bind(*inputs, **eqn.params)
        if not (eqn.primitive.multiple_results or sub is not None):
            outputs = [outputs]
        env.update(zip(eqn.outvars, outputs, strict=True))
    return [read(v) for v in jaxpr.outvars]


def with_rounded_matmul_inputs(fn, bits: int):
    """`fn` evaluated with every float32 conv / matmul input rounded to `bits` mantissa bits."""

    def wrapped(*args):
        closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
        outputs = _evaluate(closed.jaxpr, closed.consts, jax.tree.leaves(args), bits)
        return jax.tree.unflatten(jax.tree.structure(out_shape), outputs)

    return wrapped
