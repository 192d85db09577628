"""The device check's evaluation-cost rows: a sampler call of cifar10_ict's 1-step sampler and
of cifar10_edm's Heun (18 steps, 35 network evaluations; --quick: 2 steps) at the config's
precision, the FID
Inception features of 32 px uint8 images (full float32, as evaluation runs), and from the two
rates the projected wall time of a 50k-sample FID on one device, which is what an evaluation
of a paper model costs here (the reference statistics are computed once per dataset)."""

import jax

from benchmarks import device_rows, device_setup, inception_throughput, measure
from cm import experiment

SAMPLERS = (("cifar10_ict", "1step"), ("cifar10_edm", "heun"))  # 1 and 2 N - 1 evaluations
FID_SAMPLES = 50_000  # the published protocol (docs/methods.md section 7)
INCEPTION_IMAGE_SIZE = 32  # CIFAR-10 samples; resized to 299 inside the feature path


def unit_sample(spec: dict) -> dict:
    config = device_setup.network_config(
        spec["network"], spec["batch"], spec["quick"], remat=spec["remat"]
    )
    exp = device_setup.one_device_experiment(config)
    params = jax.jit(lambda: experiment.init_params(exp, config))()
    result = measure.sampler(config, exp, params, spec["sampler"], spec["batch"], spec["steps"])
    return {**result, **device_setup.context(spec, device_setup.config_mode(config))}


def unit_inception(spec: dict) -> dict:
    mesh = experiment.make_mesh([device_setup.device()])
    result = inception_throughput.measure(spec["batch"], spec["steps"], spec["image_size"], mesh)
    return {**result, **device_setup.context(spec, "f32 highest")}  # the Inception: HIGHEST


def sampler_name(network: str, kind: str, quick: bool) -> str:
    """The name of a SAMPLERS kind among the network config's samplers: 1step, or heunN with
    the config's N (18; --quick: tiny.TINY_PAPER_NETWORK's)."""
    if kind != "heun":
        return kind
    return f"heun{device_setup.network_config(network, 1, quick).sampling.heun_steps}"


def sample_item(spec: dict) -> str:
    if spec["sampler"] == "1step":
        return "sample 1-step"
    return f"sample Heun ({2 * int(spec['sampler'].removeprefix('heun')) - 1} evals)"


def sample_row(spec: dict, r: dict, tag: str) -> dict:
    network = device_rows.network_label(spec, tag)
    return device_rows.rate_row(sample_item(spec), network, r.get("mode", ""), spec["batch"], r)


def inception_row(spec: dict, r: dict, tag: str) -> dict:
    note = f"{spec['image_size']} px uint8 -> 299"
    return device_rows.rate_row("inception", "FID Inception", "f32 highest", spec["batch"], r, note)


def fid_rows(records: list[dict], tag: str) -> list[dict]:
    """For each finished sampler unit of `records` (in their order), the projected wall time of
    a 50k-sample FID on one device: 50k / sampler images/s + 50k / Inception images/s; none
    without a finished Inception unit."""
    finished = [record for record in records if "error" not in record["result"]]
    features = [record for record in finished if record["spec"]["kind"] == "inception"]
    if not features:
        return []
    features_s = FID_SAMPLES / _rate(features[-1])
    rows = []
    for record in finished:
        spec, r = record["spec"], record["result"]
        if spec["kind"] != "sample":
            continue
        sampling_s = FID_SAMPLES / _rate(record)
        total = sampling_s + features_s
        rows.append({
            "item": f"fid 50k, {sample_item(spec).removeprefix('sample ')}",
            "network": device_rows.network_label(spec, tag), "precision": r.get("mode", ""),
            "batch": FID_SAMPLES, "seconds": device_rows.num(total, 4),
            "images/s": device_rows.num(FID_SAMPLES / total, 4),
            "note": f"projected: sampling {device_rows.duration(sampling_s)} + features "
            f"{device_rows.duration(features_s)} on 1 device",
        })  # fmt: skip
    return rows


def _rate(record: dict) -> float:
    """Images per second of a unit that ran spec["batch"] images per call."""
    return record["spec"]["batch"] / record["result"]["seconds"]
