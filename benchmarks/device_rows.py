"""The device check's table columns and the cells its measurements' rows share: a unit that ran
a program `batch` images per call becomes seconds, images/s, GFLOP, the two MFU fractions and
the peak memory, written the same way in every row."""

from benchmarks import perf

COLUMNS = (
    "item",
    "network",
    "precision",
    "batch",
    "seconds",
    "images/s",
    "GFLOP",
    "MFU",
    "of measured peak",
    "peak memory",
    "note",
)


def num(value, digits: int = 3) -> str:
    return "n/a" if value is None or value != value else f"{value:.{digits}g}"


def duration(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds:.0f} s"


def network_label(spec: dict, tag: str) -> str:
    """The network column: the unit's network, +remat when it ran rematerialized, and the tag
    (" (tiny)" under --quick)."""
    return spec.get("network", "") + (" +remat" if spec.get("remat") else "") + tag


def rate_row(item, network, mode, batch, r, note="") -> dict:
    """A row of a unit that ran a program `batch` images per call."""
    if "error" in r:
        return {"item": item, "network": network, "precision": mode, "batch": batch,
                "note": f"failed: {r['error']}"}  # fmt: skip
    achieved = r["flops"] / r["seconds"] if r.get("flops") == r.get("flops") else None
    return {
        "item": item,
        "network": network,
        "precision": mode,
        "batch": batch,
        "seconds": num(r["seconds"], 4),
        "images/s": num(batch / r["seconds"], 4),
        "GFLOP": num(r["flops"] / 1e9, 4),
        "MFU": perf.fraction(achieved, r.get("published_peak")),
        "of measured peak": perf.fraction(achieved, r.get("measured_peak")),
        "peak memory": perf.gib(r.get("peak_memory")),
        "note": note,
    }
