"""The device check's evaluation-cost rows: cifar10_ict's 1-step and 2-step samplers at the
config's sampling batch and precision, the FID Inception features of 32 px uint8 images at the
config's evaluation batch (full float32, as evaluation runs), and from the rates the projected
wall time of a 50k-sample FID on one device, which is what evaluating a paper model costs here
(the reference statistics are computed once per dataset)."""

import jax

from benchmarks import device_programs, device_rows, device_setup, perf

FID_SAMPLES = 50_000  # the published protocol (docs/methods.md section 7)
INCEPTION_MODE = "f32 highest"  # the Inception sets HIGHEST itself (cm/precision.py)


def _time_calls(spec: dict, store: str) -> tuple[float, dict]:
    """(median seconds per call of the measured part over spec["steps"] calls after one
    warm-up call, how it was loaded)."""
    program = device_programs.build(spec)
    loaded, how = device_programs.load(program, store)
    args = program.inputs(loaded)
    run = loaded[program.measured]
    jax.block_until_ready(run(*args))
    return perf.median_seconds(lambda: run(*args), spec["steps"]), how


def unit_sample(spec: dict, store: str) -> dict:
    seconds, how = _time_calls(spec, store)
    mode = device_setup.config_mode(device_setup.method_config(spec["method"], spec["quick"]))
    return {"seconds": seconds, **how, **device_setup.context(mode, spec["matmul_size"])}


def unit_inception(spec: dict, store: str) -> dict:
    seconds, how = _time_calls(spec, store)
    return {"seconds": seconds, **how, **device_setup.context(INCEPTION_MODE, spec["matmul_size"])}


def sample_item(spec: dict) -> str:
    return f"sample {spec['sampler'].removesuffix('step')}-step"


def sample_row(record: dict, quick: bool) -> dict:
    config = device_rows.config_label(device_setup.config_name(record["spec"]["method"]), quick)
    return device_rows.rate_row(sample_item(record["spec"]), config, record)


def inception_row(record: dict, quick: bool) -> dict:
    note = f"{device_programs.INCEPTION_IMAGE_SIZE} px uint8 -> 299"
    return device_rows.rate_row("inception", "FID Inception", record, note)


def fid_rows(records: list[dict], quick: bool) -> list[dict]:
    """For each finished sampler unit of `records` (in their order), the projected wall time of
    a 50k-sample FID on one device: 50k / sampler images/s + 50k / Inception images/s; none
    without a finished Inception unit."""
    finished = [r for r in records if "seconds" in r.get("result", {})]
    features = [r for r in finished if r["spec"]["kind"] == "inception"]
    if not features:
        return []
    features_s = FID_SAMPLES / _rate(features[-1])
    rows = []
    for record in finished:
        spec = record["spec"]
        if spec["kind"] != "sample":
            continue
        sampling_s = FID_SAMPLES / _rate(record)
        total = sampling_s + features_s
        rows.append({
            "item": f"fid 50k, {sample_item(spec).removeprefix('sample ')}",
            "config": device_rows.config_label(device_setup.config_name(spec["method"]), quick),
            "precision": record["result"]["mode"], "batch": FID_SAMPLES,
            "seconds": device_rows.num(total, 4),
            "images/s": device_rows.num(FID_SAMPLES / total, 4),
            "note": f"projected: sampling {device_rows.duration(sampling_s)} + features "
            f"{device_rows.duration(features_s)} on 1 device",
        })  # fmt: skip
    return rows


def _rate(record: dict) -> float:
    """Images per second of a unit that ran spec["batch"] images per call."""
    return record["spec"]["batch"] / record["result"]["seconds"]
