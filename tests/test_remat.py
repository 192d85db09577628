"""model.remat: rematerialized residual / attention blocks give the same network, parameters,
outputs and gradients, and the backward pass really recomputes them (a `checkpoint` in the
program and the FLOPs of one more forward pass).

Temporary memory is not asserted: XLA:CPU's scheduler places the recomputation early, so on
the CPU the compiled program is not smaller (BENCHMARKS.md, "Rematerialization"); the saving
is an accelerator's, to measure there with benchmarks/train_throughput.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_config

from cm.models import build_model

# Names of jax.checkpoint's primitive across JAX versions ("remat2" in 0.10).
REMAT_PRIMITIVES = {"checkpoint", "remat", "remat2"}


def _tiny(remat: bool):
    """The tiny U-Net with attention at 4x4 and dropout, labels on."""
    c = tiny_config()
    c.model.attn_resolutions = (4,)
    c.model.dropout = 0.2
    c.model.remat = remat
    return c


def _primitives(jaxpr) -> set[str]:
    """Names of every primitive in a jaxpr and the jaxprs nested in it."""
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple | list) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    names |= _primitives(inner)
    return names


@pytest.mark.slow
def test_remat_gives_identical_outputs_and_gradients_and_recomputes_the_forward():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((16, 8, 8, 1)), jnp.float32)
    c_noise = jnp.asarray(rng.uniform(-1, 1, 16), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 10, 16), jnp.int32)
    plain, remat = build_model(_tiny(False)), build_model(_tiny(True))
    params = jax.jit(lambda k: plain.init(k, x[:1], c_noise[:1], labels[:1], train=False))(
        jax.random.key(0)
    )
    # The same parameter tree (names, shapes): remat changes how, not what, is computed.
    shapes = jax.eval_shape(lambda: remat.init(jax.random.key(0), x, c_noise, labels, train=False))
    assert jax.tree.structure(shapes) == jax.tree.structure(params)

    results = {}
    for name, model in (("plain", plain), ("remat", remat)):

        def loss(p, model=model):
            rngs = {"dropout": jax.random.key(3)}
            out = model.apply(p, x, c_noise, labels, train=True, rngs=rngs)
            return jnp.mean(jnp.square(out - x)), out  # out: [16, 8, 8, 1]

        grad_fn = jax.value_and_grad(loss, has_aux=True)
        primitives = _primitives(jax.make_jaxpr(grad_fn)(params).jaxpr)
        compiled = jax.jit(grad_fn).lower(params).compile()
        results[name] = (primitives, compiled.cost_analysis()["flops"], compiled(params))

    assert not REMAT_PRIMITIVES & results["plain"][0]
    assert REMAT_PRIMITIVES & results["remat"][0]  # the backward pass recomputes the blocks
    (loss0, out0), grads0 = results["plain"][2]
    (loss1, out1), grads1 = results["remat"][2]
    assert float(jnp.abs(out0).max()) > 0  # a non-trivial output (dropout and attention ran)
    # Equal up to float32 rounding, not bitwise: XLA fuses the recomputed forward differently,
    # so sums may associate in another order (measured: 1.7 % of the outputs differ, by at most
    # 4e-7 relative; gradients 1.2e-6). Tolerance: 1e-5 of each tensor's largest entry.
    want, got = jax.tree.leaves((loss0, out0, grads0)), jax.tree.leaves((loss1, out1, grads1))
    for a, b in zip(want, got, strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * float(np.abs(a).max()))
    # One more forward pass of the blocks: value_and_grad costs about 3 forwards (the forward,
    # and twice its FLOPs backward), remat about 4, so at most 4/3 (measured 1.23 here: the
    # stem, output conv and embedding are outside the blocks and not recomputed).
    assert results["remat"][1] > 1.15 * results["plain"][1]
