"""The published training throughput of the reference codes, per GPU, printed beside the device
check's rows of the same method (issue 22), with the ratio: cm's images/s over the reference's,
directly where the device is the reference's, else over the reference scaled by the two
devices' published peaks for the precision it ran (benchmarks/perf.py)."""

import dataclasses

from benchmarks import perf


@dataclasses.dataclass(frozen=True)
class Reference:
    method: str  # the method table's name of what it trains
    source: str  # the repository
    network: str
    images_per_s: float  # training images per second per GPU, as published
    device: str  # as a device_kind reads (benchmarks/perf.py matches its peaks)
    mode: str  # the precision mode of cm that runs what the reference ran
    note: str
    goal: float | None = None  # cm's rate wanted, as a multiple of the reference's


REFERENCES = (
    Reference(
        "meanflow",
        "Gsunshine/py-meanflow",
        "U-Net 55.9M",
        1024 / 8 / 0.21,  # 0.21 s per iteration of batch 1024 on 8 GPUs: about 610
        "NVIDIA H200",
        "f32 default",
        "TF32 + torch.compile; 0.21 s per iteration of batch 1024 on 8 H200",
        goal=2.0,
    ),
    Reference(
        "ect",
        "locuslab/ect",
        "DDPM++ 55.7M",
        284.0,
        "NVIDIA A100",
        "f32 highest",
        "batch 128; at least this; float32 (ct_train.py --tf32=False)",
    ),
    Reference(
        "edm",
        "NVlabs/edm",
        "DDPM++ 55.7M",
        145.0,
        "Tesla V100-SXM2",
        "f32 highest",
        "float32; about this",
    ),
)


def comparable() -> list[tuple[str, str]]:
    """(method, mode) of cm's rows that a reference row compares with."""
    return [(r.method, r.mode) for r in REFERENCES]


def same_device(reference: Reference, device_kind: str) -> bool:
    return reference.device.lower() in device_kind.lower()


def ratio(images_per_s: float, reference: Reference, device_kind: str) -> tuple[float, str]:
    """(cm's images/s over the reference's on this device, how that was read); NaN where the
    device is not the reference's and a published peak of either is unknown."""
    if same_device(reference, device_kind):
        return images_per_s / reference.images_per_s, "same device"
    ours = perf.published_peak(device_kind, reference.mode)
    theirs = perf.published_peak(reference.device, reference.mode)
    if not ours or not theirs:
        return float("nan"), f"no published peak to scale from {reference.device}"
    scaled = reference.images_per_s * ours / theirs
    how = (
        f"peak-scaled: {reference.images_per_s:.0f} x {ours / 1e12:g} / {theirs / 1e12:g} "
        f"TFLOP/s = {scaled:.0f} img/s"
    )
    return images_per_s / scaled, how


def reference_row(reference: Reference, cm_row: dict | None, device_kind: str) -> dict:
    """The row of a reference: its published rate, and the ratio of cm's row (the train row of
    its method and mode on this device; None: not measured yet)."""
    note = f"{reference.source}, {reference.network}, on {reference.device}: {reference.note}"
    if cm_row is not None:
        value, how = ratio(cm_row["images_per_s"], reference, device_kind)
        note += f"; cm {cm_row['images_per_s']:.4g} img/s, cm / reference = "
        note += f"{value:.2f} ({how})" if value == value else f"n/a ({how})"
        if reference.goal and value == value:
            met = "met" if value >= reference.goal else "not met"
            note += f"; goal >= {reference.goal:g}: {met}"
    return {
        "item": "reference",
        "config": reference.source,
        "precision": reference.mode,
        "images/s": f"{reference.images_per_s:.4g}",
        "note": note,
    }
