"""The device check's table columns and the cells its rows share: a unit that ran a program
`batch` images per call becomes seconds, images/s, GFLOP, the two MFU fractions, XLA's peak
memory and the compile time, written the same way in every row."""

from benchmarks import perf

COLUMNS = (
    "item",
    "config",
    "precision",
    "batch",
    "seconds",
    "images/s",
    "GFLOP",
    "MFU",
    "of measured peak",
    "XLA peak memory",
    "compile (s)",
    "note",
)


def num(value, digits: int = 3) -> str:
    return "n/a" if value is None or value != value else f"{value:.{digits}g}"


def duration(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds:.0f} s"


def config_label(config: str, quick: bool) -> str:
    """The config column: the config's name, " (tiny)" under --quick."""
    return config + (" (tiny)" if quick else "")


def compile_stats(record: dict) -> dict:
    """The measured part's compilation of a unit: the compile phase's, or the measuring
    process's when it compiled the part itself ({} when neither ran)."""
    here = record.get("result", {}).get("compiled_here")
    return here or record.get("compile", {})


def rate_row(item: str, config: str, record: dict, note: str = "") -> dict:
    """A row of a unit that ran a program spec["batch"] images per call."""
    spec, r = record["spec"], record.get("result", {})
    row = {"item": item, "config": config, "precision": r.get("mode", spec.get("mode", ""))}
    row["batch"] = spec["batch"]
    if "error" in r:
        return {**row, "note": f"failed: {r['error']}"}
    stats = compile_stats(record)
    flops = stats.get("flops", float("nan"))
    achieved = flops / r["seconds"] if flops == flops else None
    compiled = "compile_s" in stats
    return {
        **row,
        "seconds": num(r["seconds"], 4),
        "images/s": num(spec["batch"] / r["seconds"], 4),
        "GFLOP": num(flops / 1e9, 4),
        "MFU": perf.fraction(achieved, r.get("published_peak")),
        "of measured peak": perf.fraction(achieved, r.get("measured_peak")),
        "XLA peak memory": perf.gib(stats.get("xla_peak_bytes")),
        "compile (s)": num(stats["compile_s"], 3) if compiled else "",
        "note": note,
    }
