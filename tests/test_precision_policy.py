"""The precision policy (cm/precision.py, docs/methods.md section 11) in what
production calls: the training loss and its gradient of experiment.build.

Under model.dtype=bfloat16 only the network body computes in bfloat16: every value of the traced
loss and gradient outside the network (preconditioning, the student-teacher difference, the
tangent's assembly, the weighting, the loss) is float32, and every matmul outside it runs at
HIGHEST. method.jvp_dtype and method.jvp_matmul_precision move the JVP pass, and only it.

The tests read dtypes and precisions in the traced program (no compile; on a CPU a numeric test
of matmul precision could not fail). The network's equations are told apart by the name stack
Flax gives a module's calls (its class name); JAX adds jvp(...) for the forward pass under
value_and_grad, jvp(jvp(...)) for the method's own jax.jvp inside it and transpose(...) for the
backward pass.
"""

import collections
import functools

import jax
import jax.numpy as jnp
import pytest
from helpers import tiny_config

from cm import experiment, methods, precision
from cm.methods import meanflow, sct
from cm.models import build_model

HIGHEST = (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST)
MATMULS = ("conv_general_dilated", "dot_general")
JVP_PASS = "jvp(jvp("  # the method's jax.jvp under the gradient's forward pass


def _walk(jaxpr, prefix=""):
    """(full name stack, equation) of every equation, nested jaxprs (jit, custom_jvp, ...)
    included with their caller's name stack in front."""
    for eqn in jaxpr.eqns:
        stack = str(eqn.source_info.name_stack)
        full = f"{prefix}/{stack}" if prefix else stack
        yield full, eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple | list) else (value,):
                inner = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
                if hasattr(inner, "eqns"):
                    yield from _walk(inner, full)


def _is_bf16(eqn) -> bool:
    return any(getattr(v.aval, "dtype", None) == jnp.bfloat16 for v in eqn.outvars)


@functools.cache
def _loss_and_grad_jaxpr(method: str, **overrides):
    """The jaxpr of value_and_grad (network and auxiliary parameters) of the production loss of
    tiny_config(method, overrides), traced on abstract values, and the network module's class
    name. Cached: the tests share traces."""
    config = tiny_config(method__name=method, **overrides)
    exp = experiment.build(config)
    state = experiment.abstract_state(exp, config)
    aux, extra = getattr(state, "aux", ()), getattr(state, "extra", ())
    b, (h, w, c) = config.training.batch_size, experiment.image_shape(config)
    batch = {
        "image": jax.ShapeDtypeStruct((b, h, w, c), jnp.float32),
        "label": jax.ShapeDtypeStruct((b,), jnp.int32),
    }

    def loss(params, aux_params, batch):
        return exp.loss_fn(params, batch, jax.random.key(0), 3, aux_params, extra)[0]

    traced = jax.make_jaxpr(jax.value_and_grad(loss, argnums=(0, 1)))(state.params, aux, batch)
    return traced, type(exp.model).__name__


def _network_pass(stack: str) -> str:
    """Which pass of the network a name stack belongs to: jvp (the method's jax.jvp), backward
    (the gradient's transpose) or forward."""
    if stack.startswith(JVP_PASS):
        return "jvp"
    return "backward" if stack.startswith("transpose(") else "forward"


@pytest.mark.parametrize("method", ["ict", "sct", "meanflow"])
def test_under_bfloat16_only_the_network_body_is_bfloat16(method):
    traced, network = _loss_and_grad_jaxpr(method, model__dtype="bfloat16")
    inside, outside = [], []
    for stack, eqn in _walk(traced.jaxpr):
        (inside if network in stack else outside).append(eqn)
    # The network does compute in bfloat16, forward and backward (the test can fail) ...
    assert sum(map(_is_bf16, inside)) > 100
    # ... and nothing outside it does: preconditioning, difference, tangent, weighting, loss.
    assert len(outside) > 50 and not [e.primitive.name for e in outside if _is_bf16(e)]
    assert all(v.aval.dtype == jnp.float32 for v in traced.jaxpr.outvars)  # loss and gradients
    # Every matmul outside the network at full float32 (sCT's w(t) head; the others have none).
    dots = [e.params.get("precision") for e in outside if e.primitive.name in MATMULS]
    assert len(dots) >= (2 if method == "sct" else 0)  # the head's forward and its gradient
    assert all(p == HIGHEST for p in dots), dots


@pytest.mark.parametrize("method", ["sct", "meanflow"])
def test_jvp_dtype_moves_the_jvp_pass_and_only_it(method):
    def bf16_per_pass(**jvp_dtype) -> collections.Counter:
        traced, network = _loss_and_grad_jaxpr(method, model__dtype="bfloat16", **jvp_dtype)
        return collections.Counter(
            _network_pass(stack)
            for stack, eqn in _walk(traced.jaxpr)
            if network in stack and _is_bf16(eqn)
        )

    # The default ("model": the previous test's trace) and float32.
    merged, separate = bf16_per_pass(), bf16_per_pass(method__jvp_dtype="float32")
    assert merged["jvp"] > 100 and separate["jvp"] == 0  # the JVP pass: bfloat16, then float32
    assert merged["backward"] == separate["backward"] > 100  # the gradient's: bfloat16 in both


def test_jvp_matmul_precision_reaches_the_jvp_pass_and_only_it():
    assert tiny_config().model.matmul_precision == "default"
    traced, network = _loss_and_grad_jaxpr("sct", method__jvp_matmul_precision="highest")
    found = collections.defaultdict(set)  # pass -> precisions of its matmuls
    for stack, eqn in _walk(traced.jaxpr):
        if network in stack and eqn.primitive.name in MATMULS:
            found[_network_pass(stack)].add(eqn.params.get("precision"))
    assert found == {"jvp": {HIGHEST}, "forward": {None}, "backward": {None}}


def test_the_jvp_form_exists_only_when_its_precision_differs():
    def jvp_form(method="sct", **overrides):
        config = tiny_config(method__name=method, **overrides)
        entry = methods.get(method)
        model = build_model(config, second_noise_label=entry.second_noise_label)
        return experiment.network_forms(config, entry, model).jvp

    assert jvp_form() is None  # the default: one pass, the program as before the policy
    assert jvp_form(method__jvp_dtype="float32") is None  # float32 already: the same pass
    assert jvp_form(method__jvp_matmul_precision="default") is None
    assert jvp_form(model__dtype="bfloat16", method__jvp_dtype="float32") is not None
    assert jvp_form("meanflow", method__jvp_matmul_precision="high") is not None
    assert jvp_form("ict", method__jvp_dtype="bfloat16") is None  # iCT takes no JVP


def test_jvp_policy_resolves_model_and_refuses_unknown_values_in_one_sentence():
    config = tiny_config(model__dtype="bfloat16", model__matmul_precision="high")
    assert precision.jvp_policy(config) == ("bfloat16", "high")
    config.method.jvp_dtype, config.method.jvp_matmul_precision = "float32", "highest"
    assert precision.jvp_policy(config) == ("float32", "highest")
    for field, value in (("jvp_dtype", "float16"), ("jvp_matmul_precision", "tf32")):
        bad = tiny_config(method__name="meanflow", **{f"method__{field}": value})
        with pytest.raises(ValueError, match=rf"^method\.{field}='{value}' is invalid: valid "):
            meanflow.check(bad, "train")
        bad.method.name = "sct"
        with pytest.raises(ValueError, match=rf"set --config\.method\.{field} to one of them\.$"):
            sct.check(bad, "train", distill=False)


def _masked_u(params, z, r, t, labels=None, train=False, dropout_rng=None, augment_labels=None):
    """A toy u with a dropout mask of its key and a label term, for the loss's wiring: a JVP
    pass or a prediction that got another key, labels or parameters gives another loss."""
    del augment_labels
    b4 = lambda s: s[:, None, None, None]  # noqa: E731
    mask = jax.random.bernoulli(dropout_rng, 0.5, z.shape) if train else 1.0
    gain = params["a"] * b4(jnp.cos(t - 0.5 * r)) + params["b"] * b4(labels)
    return mask * gain * z + params["b"] * b4(jnp.sin(t))


def test_meanflow_separate_jvp_pass_of_the_same_function_gives_the_same_loss_and_gradient():
    # The separate pass (Denoisers.jvp set) takes du/dt from a JVP of the stop-gradient
    # parameters with the step's dropout key and labels, and the prediction from the gradient's
    # own pass: with the same function, exactly the one pass's loss and gradient.
    params = {"a": jnp.float32(0.7), "b": jnp.float32(-0.2)}
    images = jax.random.uniform(jax.random.key(1), (4, 4, 4, 1), minval=-1.0, maxval=1.0)
    batch = {"image": images, "label": jnp.arange(4.0)}
    fields = dict(t_mean=-0.5, t_std=1.0, r_mean=-1.0, r_std=1.0, equal_fraction=0.25)
    fields |= dict(tr_order="sorted", norm_p=0.75, norm_eps=1e-3)

    def loss(p, separate):
        u_jvp = _masked_u if separate else None
        rng = jax.random.key(2)
        return meanflow.meanflow_loss(_masked_u, p, batch, rng, 0, **fields, u_jvp=u_jvp)[0]

    value_and_grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    one_pass, separate = value_and_grad(params, False), value_and_grad(params, True)
    for a, b in zip(jax.tree.leaves(one_pass), jax.tree.leaves(separate), strict=True):
        assert float(a) == pytest.approx(float(b), rel=1e-6)
    assert float(one_pass[1]["a"]) != 0  # the gradient reaches the parameters
