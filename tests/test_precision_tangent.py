"""benchmarks/precision_tangent.py (issue 22), the precision study of sCT's and MeanFlow's JVP
tangent: its times, inputs and metrics against hand values, and the quick study end to end."""

import numpy as np
import pytest

from benchmarks import precision_inputs as pi
from benchmarks import precision_tangent as pt


def _config(method: str):
    return pi.paper_config(pt.METHOD_CONFIGS[method], quick=True)


def test_times_are_quantiles_of_each_method_time_law():
    # sCT (Pm, Ps, sd) = (-1.0, 1.4, 0.5): t = arctan(e^(-1 + 1.4 z) / 0.5); z = -2.5, 0, 2.5
    # give e^-4.5 / 0.5 = 0.022218, e^-1 / 0.5 = 0.735759, e^2.5 / 0.5 = 24.3650, whose
    # arctangents are 0.022218 - 0.022218^3 / 3 = 0.0222143, 0.634324 and pi/2 - arctan(1 /
    # 24.365) = 1.570796 - 0.041019 = 1.529777.
    z, t = pt.study_times(_config("sct"), 3)
    np.testing.assert_allclose(z, [-2.5, 0.0, 2.5])
    np.testing.assert_allclose(t, [0.0222143, 0.634324, 1.529777], rtol=1e-5)
    # MeanFlow's t law logit-normal(-2, 2): logit t = -7, -2, 3, so t = 1 / (1 + e^7) =
    # 0.000911, 1 / (1 + e^2) = 0.119203, 1 / (1 + e^-3) = 0.952574.
    _, t = pt.study_times(_config("meanflow"), 3)
    np.testing.assert_allclose(t, [0.000911, 0.119203, 0.952574], rtol=1e-3)


def test_inputs_follow_each_method_path_per_time():
    images = np.array([[[[0.5]]], [[[-1.0]]]], np.float32)  # [B=2, 1, 1, 1]
    noise = np.array([[[[2.0]]], [[[1.0]]]], np.float32)
    times = np.array([np.pi / 2, np.pi / 3])  # level 0: rows 0-1, level 1: rows 2-3
    x_t, t, dxdt = pt.study_inputs(_config("sct"), images, noise, times)
    # z = sd n = (1.0, 0.5). t = pi/2: x_t = z, dx_t/dt = -x0. t = pi/3 (cos 1/2, sin
    # sqrt(3)/2): x_t = x0 / 2 + sqrt(3) z / 2, dx_t/dt = z / 2 - sqrt(3) x0 / 2.
    s3 = np.sqrt(3.0) / 2
    np.testing.assert_allclose(x_t.ravel(), [1.0, 0.5, 0.25 + s3, -0.5 + s3 * 0.5], atol=1e-6)
    np.testing.assert_allclose(dxdt.ravel(), [-0.5, 1.0, 0.5 - s3 * 0.5, 0.25 + s3], atol=1e-6)
    np.testing.assert_allclose(t, [np.pi / 2, np.pi / 2, np.pi / 3, np.pi / 3], rtol=1e-6)
    z_t, r, t, v = pt.study_inputs(_config("meanflow"), images, noise, np.array([0.25, 1.0]))
    # z_t = (1 - t) x + t e, v = e - x, r = 0: t = 0.25 gives 0.875, -0.5; t = 1 gives e.
    np.testing.assert_allclose(z_t.ravel(), [0.875, -0.5, 2.0, 1.0])
    np.testing.assert_allclose(v.ravel(), [1.5, 2.0, 1.5, 2.0])
    np.testing.assert_array_equal(r, 0.0)


def _sample(*values):
    """One sample [1, 1, 1, n] of the given values."""
    return np.asarray(values, np.float32).reshape(1, 1, 1, -1)


def test_meanflow_metrics_hand_values():
    # One sample of 2 elements at t = 0.5, r = 0: v = (1, 0), du = (0, 2), so T = v - 0.5 du
    # = (1, -1), ||T|| = sqrt(2). The variant's du is off by (0.2, 0): ||du|| = 2, tangent
    # error 0.1, target error 0.5 * 0.2 / sqrt(2) = 0.0707; its u is off by (0, 0.3) against
    # u = (3, 4): u error 0.3 / 5 = 0.06.
    inputs = (None, np.zeros(1), np.full(1, 0.5), _sample(1.0, 0.0))
    ref = (_sample(3.0, 4.0), _sample(0.0, 2.0))
    var = (_sample(3.0, 4.3), _sample(0.2, 2.0))
    found = pt.level_metrics(_config("meanflow"), inputs, ref, var)
    assert found["u error"] == pytest.approx([0.06])
    assert found["tangent error"] == pytest.approx([0.1])
    assert found["target error"] == pytest.approx([0.1 / np.sqrt(2)])


def test_sct_metrics_hand_values_and_the_split_policies():
    # One sample of 2 elements at t = pi/4 (cos^2 t = cos t sin t = 1/2), sd = 0.5, r = 1, dF
    # the JVP's output cos t sin t dF/dt: g = -(sd F - dxdt) / 2 - (x_t / 2 + sd dF). With
    # F = (0, 0.4), dxdt = (2, 0), x_t = (0, 1), dF = (0, 0.8): g = (1, -0.1) - (0, 0.9) =
    # (1, -1), and g^ = g / (||g|| + c), c = 0.1. A variant's F off by (0.4, 0) moves g by
    # -(0.1, 0) (F error 0.4 / 0.4 = 1); its dF off by (0.4, 0) moves g by -(0.2, 0) (tangent
    # error 0.4 / 0.8 = 0.5).
    config = _config("sct")
    assert config.method.sigma_data == 0.5 and config.method.scm_tangent_c == 0.1
    assert config.method.scm_tangent_norm == "l2"
    inputs = (_sample(0.0, 1.0), np.full(1, np.pi / 4), _sample(2.0, 0.0))
    ref = (_sample(0.0, 0.4), _sample(0.0, 0.8))
    F_v, dF_v = _sample(0.4, 0.4), _sample(0.4, 0.8)
    g_hat = np.array([1.0, -1.0]) / (np.sqrt(2) + 0.1)

    def error(*g_v):  # ||g^_v - g^|| / ||g^|| by hand
        g_v = np.asarray(g_v) / (np.linalg.norm(g_v) + 0.1)
        return np.linalg.norm(g_v - g_hat) / np.linalg.norm(g_hat)

    jvp_only = pt.level_metrics(config, inputs, ref, (ref[0], dF_v))  # only the JVP in v
    assert jvp_only["F error"] == [0.0] and jvp_only["tangent error"] == pytest.approx([0.5])
    assert jvp_only["target error"] == pytest.approx([error(0.8, -1.0)], rel=1e-5)
    assert jvp_only["jvp-only error"] == pytest.approx(jvp_only["target error"])
    assert jvp_only["net-only error"] == [0.0]
    both = pt.level_metrics(config, inputs, ref, (F_v, dF_v))
    assert both["F error"] == pytest.approx([1.0])
    assert both["target error"] == pytest.approx([error(0.7, -1.0)], rel=1e-5)
    assert both["net-only error"] == pytest.approx([error(0.9, -1.0)], rel=1e-5)
    assert both["jvp-only error"] == pytest.approx([error(0.8, -1.0)], rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(
    "method, variants", [("sct", ["f32 default", "bf16"]), ("meanflow", ["bf16"])]
)
def test_quick_tangent_study_table_and_cpu_default_precision(method, variants):
    rows, _ = pt.measure_method(method, True, 2, 3, variants, seed=0, say=print)
    assert [set(row) for row in rows] == [set(pt.columns(method, variants))] * 3
    for row in rows:
        for metric in pt.METRICS[method]:
            if "f32 default" in variants:
                # XLA:CPU's default is full float32, and the output's power-of-two scaling is
                # exact: bit-identical to the reference.
                assert row[f"f32 default {metric}"] == 0.0
        assert 1e-3 < row["bf16 tangent error"] < 0.1  # bfloat16: 2^-8 per value, compounded
        assert 0 < row["bf16 target error"] < 0.1  # far below the reading's degrade line
    table = pt.markdown_table(method, rows, variants).splitlines()
    assert table[0].startswith(f"| {' | '.join(pt.LEVEL_COLUMNS[method])} | {variants[0]} ")
    assert len(table) == 2 + 3
    assert "target drowns (>= 1) at t = none" in pt.reading(method, rows, variants)
