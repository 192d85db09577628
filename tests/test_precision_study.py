"""benchmarks/precision_study.py (issues 13, 22), its shared inputs and its emulated
accelerator precisions compute what they claim: the rounding, the relative norms, the grid
levels, the study's network, the table, the record's files. The tangent study's own formulas:
tests/test_precision_tangent.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import emulated_matmul as em
from benchmarks import precision_inputs as pi
from benchmarks import precision_study as ps
from cm import experiment
from cm.io import fileio


def test_round_mantissa_at_7_bits_is_the_bfloat16_conversion():
    x = jax.random.normal(jax.random.key(0), (4096,)) * 100.0  # [4096]
    rounded = em.round_mantissa(x, em.BFLOAT16_BITS)
    assert jnp.array_equal(rounded, x.astype(jnp.bfloat16).astype(jnp.float32))
    assert not jnp.array_equal(rounded, x)


def test_round_mantissa_hand_values_at_tf32():
    # 10 mantissa bits: the ulp of [1, 2) is 2^-10. 1 + 2^-11 is half an ulp (a tie: to the
    # even 1); 1 + 3 * 2^-11 = 1 + 1.5 ulp (a tie between 1 + 1 ulp, odd, and 1 + 2 ulp: up to
    # 1 + 2^-9); 1 + 2^-11 + 2^-20 is above half an ulp (up to 1 + 2^-10); 1 + 2^-12 is below
    # (down to 1); the sign is kept.
    values = jnp.array(
        [1 + 2**-11, 1 + 3 * 2**-11, 1 + 2**-11 + 2**-20, 1 + 2**-12, -(1 + 3 * 2**-11)],
        jnp.float32,
    )
    expected = [1.0, 1 + 2**-9, 1 + 2**-10, 1.0, -(1 + 2**-9)]
    np.testing.assert_array_equal(np.asarray(em.round_mantissa(values, em.TF32_BITS)), expected)


def test_every_conv_and_matmul_gets_rounded_inputs_also_inside_jit_and_custom_jvp():
    k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
    image = jax.random.normal(k1, (2, 6, 6, 3))  # [B, H, W, C]
    kernel = jax.random.normal(k2, (3, 3, 3, 4))  # [kh, kw, C_in, C_out]
    dense = jax.random.normal(k3, (4, 5))  # [C_out, 5]

    def conv(x, w):
        return jax.lax.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    def fn(x, w, d):  # relu is a custom_jvp function; the matmul sits inside a jit
        return jax.jit(lambda h, e: jax.nn.relu(h) @ e)(conv(x, w), d)

    r = lambda a: em.round_mantissa(a, em.BFLOAT16_BITS)  # noqa: E731
    # Rounding only the conv's inputs, and every matmul's (jitted: one compile, not one per op).
    expected = jax.jit(lambda x, w, d: jax.nn.relu(conv(r(x), r(w))) @ r(d))(image, kernel, dense)
    by_hand = jax.jit(lambda x, w, d: r(jax.nn.relu(conv(r(x), r(w)))) @ r(d))(image, kernel, dense)
    emulated = jax.jit(em.with_rounded_matmul_inputs(fn, em.BFLOAT16_BITS))(image, kernel, dense)
    np.testing.assert_array_equal(np.asarray(emulated), np.asarray(by_hand))
    assert not np.array_equal(np.asarray(emulated), np.asarray(expected))  # the dot's lhs too
    assert not np.array_equal(np.asarray(emulated), np.asarray(jax.jit(fn)(image, kernel, dense)))


def test_metrics_of_a_variant_equal_to_the_reference_are_exactly_zero():
    lo, hi = np.random.default_rng(0).standard_normal((2, 3, 4, 4, 2)).astype(np.float32)
    assert ps.variant_metrics(lo, hi, lo, hi) == dict.fromkeys(ps.PER_VARIANT, 0)


def test_signal_and_noise_hand_values():
    # Sample 0: f_lo = (3, 4), f_hi = 1.1 f_lo: d = (0.3, 0.4), ||d|| = 0.5, ||f_hi|| = 5.5.
    # Sample 1: f_lo = (1, 0), f_hi = (2, 0): d = (1, 0), ||f_hi|| = 2.
    ref_lo = np.array([[3.0, 4.0], [1.0, 0.0]])  # [B=2, 2]
    ref_hi = np.array([[3.3, 4.4], [2.0, 0.0]])
    assert ps.signal(ref_lo, ref_hi) == pytest.approx((0.5 / 5.5 + 1.0 / 2.0) / 2)
    # Variant: sample 0 off by (0, 0.4) at the teacher and (0.3, 0) at the student, so
    # d_v - d = (0.3, -0.4) (norm 0.5); sample 1 exact.
    var_lo = ref_lo + np.array([[0.0, 0.4], [0.0, 0.0]])
    var_hi = ref_hi + np.array([[0.3, 0.0], [0.0, 0.0]])
    metrics = ps.variant_metrics(ref_lo, ref_hi, var_lo, var_hi)
    assert metrics["f error"] == pytest.approx((0.3 / 5.5 + 0.0) / 2)
    assert metrics["pair noise"] == pytest.approx((0.5 / 5.5 + 0.0) / 2)
    assert metrics["noise/signal"] == pytest.approx((0.5 / 0.5 + 0.0) / 2)
    # Only the student in the variant: d_v - d = (0.3, 0), norm 0.3 against ||d|| = 0.5.
    assert metrics["student noise/signal"] == pytest.approx((0.3 / 0.5 + 0.0) / 2)


def test_study_levels_spread_log_uniformly_over_the_finest_ict_grid():
    sigmas = ps.finest_grid(ps.study_config(quick=True))  # [1281]
    assert len(sigmas) == 1281  # s1 = 1280
    assert sigmas[0] == pytest.approx(0.002) and sigmas[-1] == pytest.approx(80.0)
    # rho = 7: sigma_1 = (0.002^(1/7) + (80^(1/7) - 0.002^(1/7)) / 1280)^7 = 0.0020395 (a gap
    # of 1.98 %).
    lo, hi = 0.002 ** (1 / 7), 80 ** (1 / 7)
    assert sigmas[1] == pytest.approx((lo + (hi - lo) / 1280) ** 7, rel=1e-5)
    indices = ps.study_indices(sigmas, 20)
    assert len(indices) == 20 and indices[0] == 0 and indices[-1] == 1279  # the top pair
    steps = np.diff(np.log(sigmas[indices].astype(np.float64)))  # target: ln(40000) / 19
    np.testing.assert_allclose(steps, np.log(sigmas[1279] / sigmas[0]) / 19, rtol=0.05)


def test_smooth_fields_are_deterministic_images_in_range():
    a = pi.smooth_fields(3, 4, 16, 3)
    assert a.shape == (4, 16, 16, 3) and a.dtype == np.float32
    np.testing.assert_array_equal(a, pi.smooth_fields(3, 4, 16, 3))
    assert a.min() == pytest.approx(-1.0) and a.max() == pytest.approx(1.0)
    # Smooth: neighbouring pixels correlate far more than white noise (correlation 0) would.
    corr = np.corrcoef(a[:, :, :-1].ravel(), a[:, :, 1:].ravel())[0, 1]
    assert corr > 0.5


@pytest.mark.slow
def test_study_network_is_not_the_near_zero_output_of_a_fresh_network():
    config = ps.study_config(quick=True)
    images = pi.smooth_fields(0, 2, 8, 3)
    noise = np.random.default_rng(1).standard_normal(images.shape).astype(np.float32)
    exp = experiment.build(config)
    sigma_data = config.method.sigma_data
    fresh = experiment.init_params(exp, config)
    pair = ps.pair_function(config, pi.REFERENCE)
    # EDM's initialization: F about 1e-5, so f would be c_skip x alone.
    assert ps.raw_output_rms(pair, config, fresh, images, noise, sigma_data) < 1e-3
    params, rms = ps.study_network(config, pair, images, noise, seed=0)
    assert rms > 1e-2  # the redrawn branch closers and output conv
    got = ps.raw_output_rms(pair, config, params, images, noise, sigma_data)
    assert got == pytest.approx(1.0, rel=1e-4)
    with pytest.raises(RuntimeError, match="not a near-zero initialized kernel"):
        pi.randomize_branch_closers(params, seed=0)  # the check sees already redrawn kernels


@pytest.mark.slow
def test_quick_study_table_and_cpu_default_precision():
    variants = ["f32 default", "bf16", "tf32 emulated"]
    record = ps.measure(quick=True, batch=2, levels=3, variants=variants, seed=0)
    rows = record["rows"]
    assert [set(row) for row in rows] == [set(ps.columns(variants))] * 3
    # Log-uniform: the middle level is sqrt(0.002 * 79.7) = 0.399, whose index is
    # 1280 (0.399^(1/7) - 0.002^(1/7)) / (80^(1/7) - 0.002^(1/7)) = 408.
    assert [row["i"] for row in rows] == [0, 408, 1279]
    for row in rows:
        # XLA:CPU runs the device default as full float32: bit-identical to the reference.
        assert row["f32 default f error"] == row["f32 default noise/signal"] == 0.0
        assert 0 < row["bf16 f error"] < 0.05
        # TF32 keeps 3 more mantissa bits than bfloat16: 8x finer inputs, the smaller error.
        assert 0 < row["tf32 emulated f error"] < row["bf16 f error"]
    table = ps.markdown_table(rows, variants).splitlines()
    assert table[0].startswith("| i | sigma_i | gap | signal | f32 default f error |")
    assert len(table) == 2 + 3
    text = ps.reading(ps.study_config(True), rows, variants)
    assert "f32 default: noise/signal 0 to 0; drowns (>= 1) at no level" in text
    assert "f32 default: student noise/signal 0 to 0; drowns (>= 1) at no level" in text
    assert ps.plot_png({"difference": record}).startswith(b"\x89PNG")


def test_training_mass_of_the_whole_grid_is_one_and_drowned_runs_are_contiguous():
    config = ps.study_config(quick=True)
    rows = [
        {"i": i, "sigma_i": s, "v noise/signal": r}
        for i, s, r in [(0, 0.002, 0.05), (516, 1.0, 0.2), (900, 5.0, 0.01), (1279, 79.7, 3.0)]
    ]
    assert ps.drowned_runs(rows, "v", 0.1) == [(1, 1), (3, 3)]
    assert ps.drowned_runs(rows, "v", 1.0) == [(3, 3)]
    assert ps.training_mass(config, rows, [(0, 3)]) == pytest.approx(1.0, abs=1e-5)
    # Lognormal law, Pm = -1.1, Ps = 2, over sigma_0 = 0.002 .. sigma_1280 = 80 (z = -2.56 ..
    # 2.74): P(i >= 516, sigma_516 = 1.00, z = 0.55) = (Phi(2.74) - Phi(0.55)) / (Phi(2.74) -
    # Phi(-2.56)) = (0.9969 - 0.7088) / 0.9917 = 0.29.
    assert ps.training_mass(config, rows, [(1, 3)]) == pytest.approx(0.29, abs=0.01)


def test_old_difference_records_read_and_auto_paths_write_each_study_to_its_own_file(
    tmp_path, monkeypatch
):
    old = {"header": "h", "quick": True, "batch": 2, "variants": ["bf16"], "rows": [{"i": 0}]}
    assert ps.as_record(old) == {"difference": old}  # written before the tangent study existed
    both = {"difference": old, "tangent": {"header": "t"}}
    assert ps.as_record(both) == both
    # The record written before "student noise/signal" existed still tabulates.
    row = {"i": 0, "sigma_i": 0.002, "gap": 0.02, "signal": 1e-4, "bf16 f error": 1e-6}
    assert ps.markdown_table([row], ["bf16"]).splitlines()[0].endswith("| bf16 f error |")
    monkeypatch.setattr(ps, "AUTO_PATHS", {s: str(tmp_path / s) for s in ps.STUDIES})
    ps.write_outputs(both, "auto", "", quick=False)
    assert fileio.read_json(tmp_path / "difference.json") == {"difference": old}
    assert fileio.read_json(tmp_path / "tangent.json") == {"tangent": {"header": "t"}}
    ps.write_outputs(both, str(tmp_path / "all.json"), "", quick=False)  # a path: one record
    assert fileio.read_json(tmp_path / "all.json") == both
    ps.write_outputs(both, "auto", "", quick=True)  # --quick writes nothing by default
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "all.json",
        "difference.json",
        "tangent.json",
    ]
