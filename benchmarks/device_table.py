"""The device check's report from its results alone (it runs nothing and needs no device, so a
results file brought back from a lease prints anywhere): a header naming the device and the
compile phases, one table with the training-step rows of each method followed by its published
reference row, the sampler, Inception and projected FID rows and the recipe estimates, then
the profile tables."""

from benchmarks import (
    device_profile,
    device_reference,
    device_rows,
    device_sampling,
    device_setup,
    device_train,
    perf,
)

PENDING = "not measured yet (the results hold its compilation only)"


def _records(results: dict, quick: bool, kind: str) -> list[dict]:
    return [
        r
        for r in results.get("units", {}).values()
        if r.get("spec", {}).get("kind") == kind and r["spec"]["quick"] == quick
    ]


def _context(results: dict, quick: bool) -> dict:
    """The device context of the first measured unit ({} when none ran)."""
    for record in results.get("units", {}).values():
        r = record.get("result", {})
        if "device_kind" in r and record["spec"]["quick"] == quick:
            return r
    return {}


def _train_rows(results: dict, quick: bool, device_kind: str) -> list[dict]:
    """Per method (the method table's order): its train rows in MODES order, then its reference
    row with the ratio of the train row of the reference's mode."""
    train = {(r["spec"]["method"], r["spec"]["mode"]): r for r in _records(results, quick, "train")}
    rows = []
    for method in device_setup.METHODS:
        for mode in device_setup.MODES:
            record = train.get((method, mode))
            if record is None:
                continue
            if "result" in record:
                rows.append(device_train.train_row(record, quick))
            else:
                config = device_rows.config_label(device_setup.config_name(method), quick)
                rows.append({"item": "train", "config": config, "precision": mode, "note": PENDING})
        for reference in device_reference.REFERENCES:
            if reference.method != method:
                continue
            record = train.get((method, reference.mode), {})
            cm = None
            if "seconds" in record.get("result", {}):
                cm = {"images_per_s": device_train.images_per_s(record)}
            rows.append(device_reference.reference_row(reference, cm, device_kind))
    return rows


def _phase_lines(results: dict) -> list[str]:
    lines = []
    for p in results.get("compile_phases", []):
        lines.append(
            f"compile phase: {p['programs']} programs, {p['jobs']} worker "
            f"process{'es' if p['jobs'] != 1 else ''}, "
            f"{p['wall_s']:.0f} s: {p['compiled']} compiled, {p['failed']} failed, "
            f"{p['cut']} left at its time limit"
        )
    return lines


def render(results: dict, quick: bool, recipe_devices: int) -> str:
    context = _context(results, quick)
    kind = context.get("device_kind", "unknown device")
    limit = context.get("memory_limit")
    head = (
        f"device: {kind} ({context.get('platform', '?')}), JAX {context.get('jax', '?')}"
        f"{f', memory limit {perf.gib(limit)}' if limit else ''}"
        f"{', --quick: tiny networks' if quick else ''}"
    )
    lines = [head, *_phase_lines(results)]
    lines.append(
        "compile (s): XLA's compilation of the measured program in the compile phase, beside "
        "the other workers' (no cache hits on a fresh machine), or in the measuring process "
        "(its note says so); MFU: the lowered FLOPs per second over the device's published "
        "peak for the precision"
    )
    rows = _train_rows(results, quick, kind)
    samples = _records(results, quick, "sample") + _records(results, quick, "inception")
    samples = [r for r in samples if "result" in r]
    rows += [device_sampling.sample_row(r, quick) for r in samples if r["spec"]["kind"] == "sample"]
    rows += [
        device_sampling.inception_row(r, quick) for r in samples if r["spec"]["kind"] != "sample"
    ]
    rows += device_sampling.fid_rows(samples, quick)
    rows += device_train.recipe_rows(results.get("units", {}), recipe_devices, quick, limit)
    lines.append(perf.format_table(rows, device_rows.COLUMNS) if rows else "(no results)")
    for record in _records(results, quick, "profile"):
        if "result" in record:
            lines += ["", device_profile.profile_tables(record, quick)]
    return "\n".join(lines)
