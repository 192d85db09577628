"""What --mode=lcsc writes in <workdir>/<lcsc.name>/, all through cm/io/fileio.py (atomically):
coefficients.json, generations.json, heldout.json, fitness.png, coefficients.png, merged/."""

import time

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils

from cm import experiment
from cm.io import fileio
from cm.lcsc import plots
from cm.lcsc.candidates import SINGLE
from cm.workdir import run_record
from cm.workdir.checkpoint import Checkpointer


def write_merged(config, exp, params, coefficients, step: int, path):
    """A workdir at `path` whose only checkpoint is a train state holding `params` as online
    parameters and every EMA (a fresh optimizer state), at the last snapshot's step. Rewritten
    when the coefficients changed (a longer search), kept otherwise (a resumed one)."""
    path = fileio.path(path)
    marker = path / "coefficients.json"
    vector = [float(x) for x in coefficients]
    if fileio.exists(marker):
        if fileio.read_json(marker) != vector and jax.process_index() == 0:
            fileio.rmtree(path)
        multihost_utils.sync_global_devices("lcsc merged checkpoint removed")
    ckpt = Checkpointer(str(path), 1)
    if ckpt.latest_step() != step:
        # The method's step-0 state around the merged parameters (its auxiliary parameters and
        # extra state fresh, frozen weights read from their files: LCSC merges the network only;
        # cm/methods/table.py).
        train_state = experiment.state_around(exp, config, params)
        ckpt.save(step, train_state.replace(step=jnp.asarray(step, jnp.int32)))
    ckpt.close()
    run_record.record_start(str(path), config.to_dict(), 0)  # the merged run's config.json
    if jax.process_index() == 0:
        fileio.write_json_atomic(marker, vector)


def coefficients_json(steps, candidates) -> dict:
    """Every candidate's members and vector except the snapshots alone (one-hot vectors)."""
    return {
        "steps": list(steps),
        "candidates": {
            c.name: {
                "family": c.family,
                "keys": [[step, list(member)] for step, member in c.members],
                "coefficients": list(c.coefficients),
            }
            for c in candidates
            if c.family != SINGLE
        },
    }


def write_results(out_dir, steps, candidates, history: list, report: dict):
    """The JSON files and the two charts (process 0 calls this)."""
    out_dir = fileio.path(out_dir)
    fileio.write_json_atomic(out_dir / "coefficients.json", coefficients_json(steps, candidates))
    fileio.write_json_atomic(out_dir / "generations.json", history)
    fileio.write_json_atomic(out_dir / "heldout.json", report)
    if history:
        series = {"best": [h["best"] for h in history], "median": [h["median"] for h in history]}
        png = plots.line_plot(
            [h["generation"] for h in history],
            series,
            f"LCSC search: {report['metric']} on the search seeds",
            "generation",
        )
        fileio.write_bytes_atomic(out_dir / "fitness.png", png)
    by_name = {c.name: c for c in candidates}
    bars = {n: by_name[n].vector for n in ("lcsc", "lcsc_search") if n in by_name}
    ema = [c for c in candidates if c.family == "ema_rate"]
    if ema:
        bars[ema[0].name] = ema[0].vector
    if bars:
        png = plots.bar_plot(steps, bars, "coefficients per snapshot", "snapshot step")
        fileio.write_bytes_atomic(out_dir / "coefficients.png", png)
    print(
        f"Wrote {out_dir}/heldout.json, coefficients.json, generations.json at "
        f"{time.strftime('%H:%M:%S')}"
    )
