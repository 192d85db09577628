"""model.matmul_precision reaches every convolution and matmul of the compiled training step
and of the samplers; it and model.remat may change between a run and its resume.

On a CPU every float32 matmul is exact float32 whatever the setting, so a numeric test could
not fail here: the tests read the precision each dot and convolution carries in the traced and
lowered programs, which is what a GPU (TF32 by default) or a TPU (bfloat16 passes) honours.
"""

import re

import jax
import jax.numpy as jnp
import pytest
from helpers import tiny_config
from test_precision import _matmul_precisions  # the jaxpr walk of the evaluation networks

from cm import experiment, sampling, train_step
from cm.workdir import run_record

P = jax.lax.Precision
EXPECTED = {"default": None, "high": (P.HIGH, P.HIGH), "highest": (P.HIGHEST, P.HIGHEST)}


def _config(setting: str):
    c = tiny_config()
    c.model.attn_resolutions = (4,)  # attention adds the einsum dots
    c.model.matmul_precision = setting
    return c


def _step_and_inputs(config):
    """The jitted training step and abstract (state, batch) to trace it with."""
    exp = experiment.build(config)
    b, (h, w, ch) = config.training.batch_size, experiment.image_shape(config)
    batch = {
        "image": jax.ShapeDtypeStruct((b, h, w, ch), jnp.float32, sharding=exp.data_sharded),
        "label": jax.ShapeDtypeStruct((b,), jnp.int32, sharding=exp.data_sharded),
    }
    step = train_step.make_train_step(exp, tuple(config.training.ema_rates), config.seed)
    return exp, step, experiment.abstract_state(exp, config), batch


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["default", "high", "highest"])
def test_training_step_and_samplers_carry_the_configured_precision(setting):
    config = _config(setting)
    exp, step, state, batch = _step_and_inputs(config)
    found = _matmul_precisions(jax.make_jaxpr(step)(state, batch).jaxpr)
    # Student and teacher forwards and the student's backward: many convs, the attention dots.
    assert len(found) > 50, found
    assert {p for _, p in found} == {EXPECTED[setting]}, {str(p) for _, p in found}

    params = experiment.param_shapes(exp, config)
    labels = jax.ShapeDtypeStruct((4,), jnp.int32)
    for kind, build in (
        ("consistency", sampling.consistency_from_config),
        ("heun", sampling.heun_from_config),
    ):
        sample = build(config, exp.denoise, (0.821,))
        jaxpr = jax.make_jaxpr(lambda p, k, y, s=sample: s(p, k, y, (4, 8, 8, 1)))(
            params, jax.random.key(0), labels
        )
        found = _matmul_precisions(jaxpr.jaxpr)
        assert len(found) > 10 and {p for _, p in found} == {EXPECTED[setting]}, kind


def test_highest_reaches_the_lowered_training_step():
    _, step, state, batch = _step_and_inputs(_config("highest"))
    text = step.lower(state, batch).as_text()
    convs = text.count("stablehlo.convolution")
    dots = text.count("stablehlo.dot_general")
    assert convs > 30 and dots > 2
    # Every conv and dot_general names HIGHEST for both operands.
    ops = [
        line
        for line in text.splitlines()
        if re.search(r"stablehlo\.(convolution|dot_general)", line)
    ]
    assert len(ops) == convs + dots
    # dot_general: `precision = [HIGHEST, HIGHEST]`; convolution: `precision_config =
    # [#stablehlo<precision HIGHEST>, #stablehlo<precision HIGHEST>]`.
    assert all(line.count("HIGHEST") == 2 for line in ops), ops[:3]
    _, step, state, batch = _step_and_inputs(_config("default"))
    assert "HIGHEST" not in step.lower(state, batch).as_text()


def test_unknown_precision_is_one_sentence():
    with pytest.raises(ValueError, match=r"model.matmul_precision 'fp8'; valid: \['default'"):
        experiment.build(_config("fp8"))


def test_precision_and_remat_may_change_on_resume_and_old_records_lack_them():
    saved = tiny_config().to_dict()
    current = tiny_config(model__matmul_precision="highest", model__remat=True).to_dict()
    run_record.check_compatible(saved, current, "W")  # no error
    for name in ("matmul_precision", "remat"):
        del saved["model"][name]  # a run recorded before the fields existed
    run_record.check_compatible(saved, current, "W")
    current["model"]["channels"] = 16  # a structural change is still refused
    with pytest.raises(ValueError, match="model"):
        run_record.check_compatible(saved, current, "W")
