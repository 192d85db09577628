"""The device check's one table from its finished units: a row per unit, by the measurement's
own row function, in the order section, network (+remat after it), precision mode; then the
rows derived from several units (fid 50k, recipe) where their inputs exist."""

import jax

from benchmarks import (
    device_max_batch,
    device_rows,
    device_sampling,
    device_setup,
    device_train,
    perf,
)

ROWS = {
    "train": device_train.train_row,
    "sample": device_sampling.sample_row,
    "inception": device_sampling.inception_row,
    "max_batch": device_max_batch.max_batch_row,
}


def order(spec: dict) -> tuple:
    """Table order: section, then network (+remat after it), then precision mode."""
    network = spec.get("network", "")
    return (
        device_setup.SECTIONS.index(spec["kind"]),
        device_setup.NETWORK_NAMES.index(network) if network in device_setup.NETWORK_NAMES else -1,
        bool(spec.get("remat")),
        list(perf.PRECISION_MODES).index(spec["mode"]) if "mode" in spec else -1,
    )


def table_rows(results: dict, quick: bool, recipe_devices: int) -> list[dict]:
    """The table's rows from the finished units (derived rows where their inputs exist)."""
    tag = " (tiny)" if quick else ""
    records = sorted(results.values(), key=lambda record: order(record["spec"]))
    rows = [ROWS[rec["spec"]["kind"]](rec["spec"], rec["result"], tag) for rec in records]
    rows += device_sampling.fid_rows(records, tag)
    rows += device_train.recipe_rows(results, recipe_devices, tag)
    return rows


def render(results: dict, quick: bool, recipe_devices: int) -> str:
    d = device_setup.device()
    limit = perf.memory_limit(d)
    head = (
        f"device: {d.device_kind} ({d.platform}), JAX {jax.__version__}"
        f"{f', memory limit {perf.gib(limit)}' if limit else ''}"
        f"{', --quick: tiny networks' if quick else ''}"
    )
    rows = table_rows(results, quick, recipe_devices)
    columns = device_rows.COLUMNS
    return head + "\n" + perf.format_table(rows, columns) if rows else head + "\n(no results)"
