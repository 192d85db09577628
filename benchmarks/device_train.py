"""The device check's training-step rows: the jitted step (loss, gradient, optimizer, EMAs) of
each paper network in each precision mode of benchmarks/perf.py, which says what a step costs
on this device and how far it is from the device's peak, and the "recipe" rows, an ESTIMATE of
each paper recipe's wall time projected from the step time at the config's precision."""

from benchmarks import device_rows, device_setup, measure, perf
from cm.models import count_params


def unit_train(spec: dict) -> dict:
    config = device_setup.network_config(
        spec["network"], spec["batch"], spec["quick"], spec["mode"], spec["remat"]
    )
    exp = device_setup.one_device_experiment(config)
    costs, state = measure.train_step(config, exp, spec["steps"])
    costs["params"] = count_params(state.params)
    del state
    return {**costs, "seconds": costs["step_s"], **device_setup.context(spec, spec["mode"])}


def train_row(spec: dict, r: dict, tag: str) -> dict:
    note = "" if "error" in r else f"compile {r['compile_s']:.1f} s, XLA temp "
    note += "" if "error" in r else perf.gib(r.get("temp_bytes"))
    network = device_rows.network_label(spec, tag)
    return device_rows.rate_row("train", network, spec["mode"], spec["batch"], r, note)


def recipe_rows(results: dict, devices: int, tag: str) -> list[dict]:
    """Estimated wall time of each paper recipe on `devices` devices, data parallel: steps x
    (step time scaled linearly to the per-device share of the global batch), with no
    communication or input cost; flagged when that share exceeds the largest batch found."""
    rows = []
    for name in device_setup.NETWORK_NAMES:
        paper = measure.NETWORKS[name]()
        mode = device_setup.config_mode(paper)
        record = results.get(f"train/{name}/{mode}")
        if record is None or "error" in record["result"]:
            continue
        r, measured_batch = record["result"], record["spec"]["batch"]
        global_batch, steps = paper.training.batch_size, paper.training.num_steps
        per_device = global_batch / devices
        step_s = r["step_s"] * per_device / measured_batch  # linear in the batch
        wall = steps * step_s
        note = (
            f"ESTIMATE: {steps:,} steps x {step_s:.3g} s (per-device batch {per_device:g}, "
            f"step time scaled linearly from {measured_batch}; no communication or input "
            f"cost) = {device_rows.duration(wall)}"
        )
        search = results.get(f"max_batch/{name}", {}).get("result", {})
        largest = search.get("largest")
        if largest and per_device > largest:
            if largest >= search["cap"]:
                note += f"; the per-device batch is above the largest tried ({largest})"
            else:
                note += f"; the per-device batch exceeds the largest that fits ({largest})"
        rows.append({
            "item": f"recipe on {devices} devices", "network": name + tag, "precision": mode,
            "batch": global_batch, "seconds": device_rows.num(wall, 4),
            "images/s": device_rows.num(global_batch / step_s, 4), "note": note,
        })  # fmt: skip
    return rows
