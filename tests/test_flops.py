"""benchmarks/perf.py `flops`, the one FLOP count of every benchmark and MFU figure: XLA's
count of the lowered module, checked against a hand count of NCSN++'s convolutions and
matmuls, and with a scanned body counted once per step. Lowering only: nothing compiles."""

import jax
import jax.numpy as jnp
import pytest

from benchmarks import flop_recount, network_throughput, perf, profile_step
from configs import cifar10_ict

BATCH = 2
SIDE = 32  # two levels: 32 x 32 (32 channels) and 16 x 16 (64 channels, attention)
C = 32  # model.channels
EMB = 4 * C  # the mapping network's width (emb_mult 4)
NOISE = 2 * C  # NCSN++'s Fourier noise embedding (noise_mult 2)


def small_ncsnpp():
    """cifar10_ict's NCSN++ (Fourier embedding, residual input branch, FIR (1, 3, 3, 1),
    dropout) at two levels of one block, 32 channels, attention at 16 x 16."""
    c = cifar10_ict.get_config()
    c.model.channels, c.model.channel_mult, c.model.num_blocks = C, (1, 2), 1
    c.model.attn_resolutions = (16,)
    c.data.image_size = SIDE
    return c


def conv(n: int, k: int, cin: int, cout: int) -> int:
    """Forward FLOPs of a stride-1 'same' k x k convolution with n x n outputs: 2 per
    multiply-add over the kernel taps that fall inside the input (XLA's convention): per axis
    k n taps less k // 2 at each border, so (k n - 2 (k // 2))^2 per channel pair (the dense
    count of papers: (k n)^2)."""
    return 2 * BATCH * (k * n - 2 * (k // 2)) ** 2 * cin * cout


def dense(rows: int, cin: int, cout: int) -> int:
    """Forward FLOPs of a dense layer on `rows` vectors per image."""
    return 2 * BATCH * rows * cin * cout


def res_block(n: int, cin: int, cout: int, skip: bool, attention: bool) -> int:
    """Forward FLOPs of one ResBlock with n x n outputs: conv0 (3x3), the embedding's affine
    layer, conv1 (3x3), the 1x1 skip conv if any, and the attention: qkv and proj on n^2
    positions, logits q k^T and the weighted sum, each 2 n^2 n^2 C per image."""
    total = conv(n, 3, cin, cout) + dense(1, EMB, cout) + conv(n, 3, cout, cout)
    total += conv(n, 1, cin, cout) if skip else 0
    if attention:
        p = n * n
        total += dense(p, cout, 3 * cout) + 2 * (2 * BATCH * p * p * cout) + dense(p, cout, cout)
    return total


def hand_count() -> int:
    """Forward + backward FLOPs of small_ncsnpp's convolutions and matmuls, from the U-Net's
    layer list (cm/models/unet.py; skips in brackets). A layer whose input depends on the
    parameters costs 3x its forward (forward, input gradient, weight gradient); one whose
    input is data costs 2x (the stem conv, the residual branch's conv, map_layer0)."""
    data_fed = (
        dense(1, NOISE, EMB)  # map_layer0 on the Fourier features
        + conv(32, 3, 3, C)  # enc_32x32_conv [32]
        + 2 * BATCH * (3 * 16) ** 2 * 3 * C  # enc_16x16_aux_residual: 3x3 stride 2 VALID, 16 x 16
    )
    param_fed = (
        dense(1, EMB, EMB)  # map_layer1
        + res_block(32, C, C, False, False)  # enc_32x32_block0 [32]
        + res_block(16, C, C, True, False)  # enc_16x16_down (1x1 skip: resampling) [32]
        + res_block(16, C, 2 * C, True, True)  # enc_16x16_block0 [64]
        + res_block(16, 2 * C, 2 * C, False, True)  # dec_16x16_in0
        + res_block(16, 2 * C, 2 * C, False, False)  # dec_16x16_in1
        + res_block(16, 4 * C, 2 * C, True, False)  # dec_16x16_block0: 64 + skip 64
        + res_block(16, 3 * C, 2 * C, True, True)  # dec_16x16_block1: 64 + skip 32
        + res_block(32, 2 * C, 2 * C, True, False)  # dec_32x32_up (1x1 skip: resampling)
        + res_block(32, 3 * C, C, True, False)  # dec_32x32_block0: 64 + skip 32
        + res_block(32, 2 * C, C, True, False)  # dec_32x32_block1: 32 + skip 32
        + conv(32, 3, C, 3)  # out_conv
    )
    return 2 * data_fed + 3 * param_fed


def test_ncsnpp_forward_backward_count_is_the_lowered_count_and_the_hand_count():
    step, args, _ = network_throughput.program(small_ncsnpp(), BATCH)
    traced = step.trace(*args)
    lowered = traced.lower()
    counted = perf.flops(traced, lowered)
    assert counted == lowered.cost_analysis()["flops"]  # no loop: XLA's own lowered count
    # The hand count omits the elementwise work (norms, SiLU, FIR taps, dropout's bits), which
    # XLA counts one FLOP per element: a few percent at 32 channels. A count that missed the
    # convolutions (a GPU's compiled module) would be about 1 % of it.
    hand = hand_count()  # 3.68 GFLOP; XLA counts 3.76
    assert hand <= counted <= 1.10 * hand


def test_a_scan_body_counts_once_per_step():
    n, length = 32, 5
    w = jnp.ones((n, n))  # [n, n]

    def scanned(x, unroll):  # x: [n, n]; `length` products with w
        body = lambda carry, _: (carry @ w, None)  # noqa: E731
        return jax.lax.scan(body, x, None, length=length, unroll=unroll)[0]

    one_product = 2 * n**3  # an n x n matmul: n^2 outputs of n multiply-adds
    for unroll, copies in ((1, 1), (2, 3)):  # XLA sees unroll copies in the loop + 5 mod 2
        traced = jax.jit(scanned, static_argnums=1).trace(jnp.ones((n, n)), unroll)
        # rel: the loop counter's add and compare (2 FLOPs) beside the 65,536 of a product
        assert perf.lowered_flops(traced.lower()) == pytest.approx(copies * one_product, rel=1e-3)
        assert perf.flops(traced) == pytest.approx(length * one_product, rel=1e-3)


def test_profile_rates_divide_the_step_flops_by_the_traced_times():
    # 3 GFLOP per step; 2 ms traced in all (1.5 TFLOP/s), 1 ms of it matmul/conv (3 TFLOP/s).
    kinds = {"matmul/conv": 1.0, "fusion": 0.5, "other": 0.5}  # ms per step
    line = profile_step.flop_rates(3e9, kinds)
    assert line == (
        "FLOPs per step (lowered): 3.0 GFLOP; over the traced device time 1.50 TFLOP/s, "
        "over the matmul/conv kernels' time 3.00 TFLOP/s"
    )
    assert profile_step.flop_rates(3e9, {"fusion": 1.0}).endswith("kernels' time n/a")


def test_recounted_gpu_rows_divide_the_lowered_count_by_the_measured_time():
    counts = {"ict": 20e12, "sct": 25e12, "meanflow": 20e12, "forward + backward": 15e12}
    rows = {r["program (cifar10_ict, batch 128)"]: r for r in flop_recount.rows(counts)}
    ict, net = rows["iCT training step"], rows["NCSN++ forward + backward"]
    # 20 TFLOP in 615 ms = 32.52 TFLOP/s, 0.485 of the H200's 67 float32 TFLOP/s; 20000 / 287.9
    assert (ict["TFLOP/s"], ict["MFU"], ict["x reported"]) == ("32.5", "0.485", "69.5")
    # 15 TFLOP in 100 ms = 150 TFLOP/s, 0.303 of its 495 dense TF32 TFLOP/s
    assert (net["TFLOP/s"], net["MFU"], net["peak TFLOP/s"]) == ("150.0", "0.303", "495")
    # seconds per FLOP: (0.615 / 20e12) / (0.1 / 15e12) = 4.6125
    assert flop_recount.seconds_per_flop_ratio(counts) == pytest.approx(4.6125)
