"""What every unit of the device check (benchmarks/device_check.py) shares: the methods' CIFAR-10
paper configs at the check's sizes, the precision modes in run order, the one device they run
on, and the context each unit reports beside its own numbers, so that the rows of one table
compare the same programs on the same terms."""

import functools
import importlib

import jax

from benchmarks import perf, tiny
from cm import experiment
from cm.models import lpips

# The method table's methods (cm/methods/table.py), each on configs/cifar10_<method>.py.
METHODS = ("ict", "ect", "cd", "sct", "scd", "meanflow", "edm", "trigflow")
# benchmarks/perf.py's modes in run order: TF32 (the device default) first, then bfloat16, then
# full float32, the slowest (issue 22: a cut lease returns the most useful rows first).
MODES = ("f32 default", "bf16", "f32 highest")
BATCH = 128  # training images per device (issue 22)
QUICK_BATCH = 4  # --quick: tiny networks on a CPU
QUICK_INCEPTION_BATCH = 1  # --quick: the real FID Inception (11 GFLOP an image) on a CPU
SAMPLER_METHOD = "ict"  # the samplers measured: cifar10_ict's 1-step and 2-step
SAMPLERS = ("1step", "2step")


def config_name(method: str) -> str:
    return f"cifar10_{method}"


def method_config(method: str, quick: bool, mode: str | None = None, batch: int | None = None):
    """configs/cifar10_<method>.py in a precision mode (None: the config's own), at a training
    batch (one device; None: the config's own); with quick, every network one 8 x 8 level of 8
    channels (tiny.TINY_PAPER_NETWORK) and LPIPS's VGG16 on its smallest input
    (lpips.MIN_SIDE)."""
    c = importlib.import_module(f"configs.{config_name(method)}").get_config()
    if quick:
        c = tiny.with_overrides(c, tiny.TINY_PAPER_NETWORK)
        if c.method.distance == "lpips":
            c.method.lpips_resize = lpips.MIN_SIDE
    if mode is not None:
        c.model.dtype, c.model.matmul_precision, _ = perf.PRECISION_MODES[mode]
    if batch is not None:
        c.training.batch_size = batch
    return c


def config_mode(config) -> str:
    """The precision mode (benchmarks/perf.py) a config trains in."""
    if config.model.dtype == "bfloat16":
        return "bf16"
    return f"f32 {config.model.matmul_precision}"


def train_batch(quick: bool) -> int:
    return QUICK_BATCH if quick else BATCH


def device():
    return jax.devices()[0]


def one_device_experiment(config):
    return experiment.build(config, devices=[device()])


@functools.cache
def measured_peak(mode: str, size: int) -> float:
    """The n x n matmul peak of a mode, measured once per process."""
    return perf.matmul_peak(size, mode)


def context(mode: str, matmul_size: int) -> dict:
    """What every measured unit reports beside its own numbers: the device, JAX, the device's
    memory limit, the mode, and the two FLOP rates its MFU columns divide by (None where
    unknown)."""
    kind, known = device().device_kind, mode in perf.PRECISION_MODES
    return {
        "device_kind": kind,
        "platform": device().platform,
        "mode": mode,
        "jax": jax.__version__,
        "memory_limit": perf.memory_limit(device()),
        "published_peak": perf.published_peak(kind, mode) if known else None,
        "measured_peak": measured_peak(mode, matmul_size) if known else None,
    }
