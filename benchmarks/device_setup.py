"""What every measurement of the device check (benchmarks/device_check.py) shares: the paper
networks at the check's sizes, the one device they run on, and the context each unit reports
beside its own numbers (the device, its peak memory, and the two FLOP rates its MFU columns
divide by), so that the rows of one table compare the same networks on the same terms."""

import functools
import math

import jax

from benchmarks import measure, perf, tiny
from cm import experiment

NETWORK_NAMES = ("cifar10_ict", "cifar10_edm", "imagenet64_ict", "slct_latent")
SECTIONS = ("train", "sample", "inception", "max_batch")  # the measurements, in table order
REALISTIC_BATCH = {32: 128, 64: 32}  # per device, by image (or latent) side
QUICK_BATCH = {32: 4, 64: 2}


# ----------------------------------------------------------------------------- configs


def network_config(name: str, batch: int, quick: bool, mode: str | None = None, remat=False):
    """The paper config of `name` at a per-device batch (one device), in a precision mode
    (None: the config's own), shrunk to tiny.TINY_PAPER_NETWORK when quick (every network one
    8 x 8 level of 8 channels with attention), with rematerialized blocks if remat."""
    c = measure.NETWORKS[name]()
    c.model.remat = remat
    if quick:
        c = tiny.with_overrides(c, tiny.TINY_PAPER_NETWORK)
    if mode is not None:
        c.model.dtype, c.model.matmul_precision, _ = perf.PRECISION_MODES[mode]
    c.training.batch_size = batch
    if c.method.ot_coupling:  # groups must divide the batch; the group size changes no FLOPs
        c.method.ot_group_size = math.gcd(batch, c.method.ot_group_size)
    return c


def config_mode(config) -> str:
    """The precision mode (benchmarks/perf.py) a config trains in."""
    if config.model.dtype == "bfloat16":
        return "bf16"
    return f"f32 {config.model.matmul_precision}"


def batch_for(name: str, quick: bool) -> int:
    side = 64 if measure.NETWORKS[name]().data.image_size == 64 else 32
    return (QUICK_BATCH if quick else REALISTIC_BATCH)[side]


# ----------------------------------------------------------------------------- the device


def device():
    return jax.devices()[0]


def one_device_experiment(config):
    return experiment.build(config, devices=[device()])


@functools.cache
def measured_peak(mode: str, size: int) -> float:
    """The n x n matmul peak of a mode, measured once per process."""
    return perf.matmul_peak(size, mode)


def context(spec: dict, mode: str) -> dict:
    """What every unit reports beside its own numbers (the peak memory before the matmul that
    measures the peak FLOP/s adds its own)."""
    kind, known_mode = device().device_kind, mode in perf.PRECISION_MODES
    out = {"device_kind": kind, "platform": device().platform, "mode": mode}
    out["peak_memory"] = perf.peak_memory(device())
    out["published_peak"] = perf.published_peak(kind, mode) if known_mode else None
    out["measured_peak"] = measured_peak(mode, spec["matmul_size"]) if known_mode else None
    return out
