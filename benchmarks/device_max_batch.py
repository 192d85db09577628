"""The device check's memory rows: the largest per-device batch whose training step compiles and
runs without running out of memory, at the config's precision, which says how far the paper
recipe's batch is from what one device holds (doubling from the realistic batch, then
bisection to a tolerance, in multiples of 8; --quick: tiny sizes up to twice the batch)."""

import gc

import jax

from benchmarks import device_rows, device_setup, measure, perf
from cm import experiment


def largest_fitting(fits, start: int, cap: int, multiple: int = 1, tolerance: float = 0.0):
    """The largest batch b <= cap, a multiple of `multiple`, with fits(b): doubling from `start`
    (halving when it does not fit), then bisection until the bracket is at most
    max(multiple, tolerance * b). Returns (b, or 0 when none fits, [(batch, fits)] in order).
    Assumes fits is monotone (what fits, fits at every smaller batch)."""
    probes = []

    def probe(b: int) -> bool:
        ok = bool(fits(b))
        probes.append((b, ok))
        return ok

    lo, hi = 0, None  # lo fits (0: nothing yet), hi does not (None: not found yet)
    b = max(multiple, min(start, cap) // multiple * multiple)
    if probe(b):
        lo = b
        while lo < cap and hi is None:
            b = max(lo + multiple, min(2 * lo, cap) // multiple * multiple)
            if b > cap:
                break
            lo, hi = (b, None) if probe(b) else (lo, b)
    else:
        hi = b
        while lo == 0 and hi > multiple:
            b = max(multiple, hi // 2 // multiple * multiple)
            lo, hi = (b, hi) if probe(b) else (0, b)
    while hi is not None and lo and hi - lo > max(multiple, tolerance * lo):
        mid = (lo + hi) // 2 // multiple * multiple
        if mid <= lo:
            break
        lo, hi = (mid, hi) if probe(mid) else (lo, mid)
    return lo, probes


def unit_max_batch(spec: dict) -> dict:
    name, quick, remat = spec["network"], spec["quick"], spec["remat"]
    config = device_setup.network_config(name, spec["start"], quick, remat=remat)
    exp = device_setup.one_device_experiment(config)
    host_state = jax.device_get(experiment.init_state(exp, config))  # reused by every probe
    known = set(spec.get("known_fits", ()))

    def fits(batch: int) -> bool:
        if batch in known:
            return True
        c = device_setup.network_config(name, batch, quick, remat=remat)
        state = jax.device_put(host_state, exp.replicated)
        try:
            exp_c = device_setup.one_device_experiment(c)
            measure.train_step(c, exp_c, steps=0, state=state, count_flops=False)
            return True
        except Exception as e:  # noqa: BLE001 (only out-of-memory is an answer)
            if perf.is_out_of_memory(e):
                return False
            raise
        finally:
            del state
            gc.collect()

    largest, probes = largest_fitting(
        fits, spec["start"], spec["cap"], spec["multiple"], spec["tolerance"]
    )
    common_fields = device_setup.context(spec, device_setup.config_mode(config))
    return {"largest": largest, "probes": probes, "cap": spec["cap"], **common_fields}


def known_fits(results: dict, name: str, quick: bool, remat: bool) -> list[int]:
    """Batches the train rows already showed to fit at the config's precision."""
    mode = device_setup.config_mode(device_setup.network_config(name, 1, quick))
    mark = "+remat" if remat else ""
    done = results.get(f"train/{name}{mark}/{mode}", {}).get("result", {})
    return [device_setup.batch_for(name, quick)] if done and "error" not in done else []


def max_batch_row(spec: dict, r: dict, tag: str) -> dict:
    row = {
        "item": "max batch",
        "network": device_rows.network_label(spec, tag),
        "precision": r.get("mode", ""),
    }
    if "error" in r:
        return {**row, "note": f"failed: {r['error']}"}
    known = set(spec.get("known_fits", ()))
    tried = ", ".join(
        f"{b} {'ok' if ok else 'OOM'}{' (train row)' if b in known else ''}"
        for b, ok in r["probes"]
    )
    capped = " (the cap)" if r["largest"] >= r["cap"] else ""
    memory = perf.gib(r.get("peak_memory"))
    return {**row, "batch": r["largest"], "peak memory": memory, "note": f"tried {tried}{capped}"}
