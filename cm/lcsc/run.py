"""--mode=lcsc: search a linear combination of the run's snapshots; compare on held-out seeds.

1. Stack the chosen member (lcsc.source) of every snapshot in [first_step, last_step] on the
   devices (or stream them from disk per candidate when lcsc.resident is False).
2. Baselines on the search seeds: each snapshot alone, uniform last k, EMA at each rate in
   lcsc.ema_rates rebuilt from the snapshots, EDM2 post-hoc power EMAs (when the run tracked
   training.power_ema_stds), greedy soup.
3. The search (lcsc.optimizer) for lcsc.generations generations on the search seeds.
4. Held-out: LCSC, the final EMA, the final online parameters and the best member of each
   baseline family (chosen on the search seeds) on lcsc.heldout_seed, never used in 1-3.
5. Outputs in <workdir>/<lcsc.name>/: coefficients.json, generations.json, heldout.json,
   fitness.png, coefficients.png, and merged/ (a workdir whose checkpoint holds the LCSC
   parameters, for --mode=sample and --mode=eval with --workdir=<that folder>).

Everything evaluated is saved in state.pkl after each step, so a killed search resumes from
its last finished generation (and skips finished baselines) when run with the same command.
"""

import json
import os
import pickle
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from cm import experiment, state
from cm.checkpoint import Checkpointer
from cm.lcsc import baselines, merge, plots, search
from cm.lcsc.fitness import Fitness
from cm.lcsc.snapshots import SnapshotStream, source_member

# lcsc fields that define the search: a resumed search must have the same values.
SEARCH_FIELDS = (
    "source",
    "first_step",
    "last_step",
    "sampler",
    "metric",
    "search_samples",
    "search_seed",
    "optimizer",
    "population",
    "seed",
    "init_betas",
    "elite",
    "parent_fraction",
    "crossover_prob",
    "mutation_std",
    "mutation_prob",
    "cma_sigma",
    "cache_decimals",
)


def check_config(config):
    lc = config.lcsc
    if lc.heldout_seed == lc.search_seed:
        raise ValueError(
            f"lcsc.heldout_seed equals lcsc.search_seed ({lc.search_seed}): the final number "
            "must come from seeds the search never saw; set --config.lcsc.heldout_seed to another."
        )
    if lc.search_samples <= 0 or lc.heldout_samples <= 0 or lc.generations < 0:
        raise ValueError(
            "lcsc.search_samples and lcsc.heldout_samples must be positive and lcsc.generations "
            "non-negative; fix the --config.lcsc.* override."
        )


def _search_settings(lc) -> dict:
    return json.loads(json.dumps({k: lc[k] for k in SEARCH_FIELDS}))


class SearchState:
    """Everything finished so far; pickled to <out_dir>/state.pkl after each step."""

    def __init__(self, steps, settings):
        self.steps, self.settings = list(steps), settings
        self.cache = {}  # rounded search vector -> search fitness
        self.baselines = {}  # name -> search fitness (members other than the search's)
        self.optimizer = None
        self.history = []
        self.heldout = {}  # heldout_key(...) -> metrics on the held-out seeds

    @staticmethod
    def load_or_new(path: str, steps, settings, name: str):
        if not os.path.exists(path):
            return SearchState(steps, settings)
        with open(path, "rb") as f:
            saved = pickle.load(f)
        if saved.steps != list(steps):
            raise ValueError(
                f"{path} holds a search over the snapshots {saved.steps[0]}..{saved.steps[-1]} "
                f"({len(saved.steps)}), not {steps[0]}..{steps[-1]} ({len(steps)}); use another "
                f"--config.lcsc.name (now {name!r}) or the old lcsc.first_step / last_step."
            )
        for key, value in settings.items():
            if saved.settings[key] != value:
                raise ValueError(
                    f"{path} holds a search with lcsc.{key}={saved.settings[key]}, not {value}; "
                    f"use another --config.lcsc.name (now {name!r}) or set lcsc.{key} back."
                )
        return saved

    def save(self, path: str):
        if jax.process_index() != 0:
            return
        tmp = f"{path}.tmp"
        with open(tmp, "wb") as f:
            pickle.dump(self, f)
        os.replace(tmp, path)


def lcsc(config, workdir: str) -> dict:
    """The mode (see the module docstring). Returns heldout.json's content."""
    check_config(config)
    lc = config.lcsc
    exp = experiment.build(config)
    stream = SnapshotStream(workdir, config, exp)
    steps = stream.steps(lc.first_step, lc.last_step)
    if len(steps) < 2:
        raise ValueError(
            f"LCSC needs at least 2 snapshots in [{lc.first_step}, {lc.last_step or 'end'}] of "
            f"{workdir}/snapshots, found {len(steps)}; train longer or lower "
            "training.snapshot_every, or widen lcsc.first_step / lcsc.last_step."
        )
    member = source_member(lc.source)
    out_dir = os.path.join(workdir, lc.name)
    os.makedirs(out_dir, exist_ok=True)
    state_path = os.path.join(out_dir, "state.pkl")
    st = SearchState.load_or_new(state_path, steps, _search_settings(lc), lc.name)
    fitness = Fitness(config, workdir, exp)
    load_key = lambda key: stream.load(*key)  # noqa: E731
    keys = [(s, member) for s in steps]
    if lc.resident:
        stack = merge.StackedSnapshots(load_key, keys, exp.replicated)
        merged = stack.merge
    else:
        merged = lambda a: merge.merge_streaming(load_key, keys, a)  # noqa: E731

    def search_fitness(a) -> float:
        key = search.cache_key(a, lc.cache_decimals)
        if key not in st.cache:
            st.cache[key] = fitness(merged(np.asarray(key)), lc.search_seed, lc.search_samples)[0]
            st.save(state_path)
        return st.cache[key]

    candidates = _baselines(config, stream, steps, keys, search_fitness, st, fitness, state_path)
    _search(config, st, search_fitness, candidates, state_path)
    best, best_value = best_of_history(st.history) if st.history else (None, None)
    if best is not None:
        candidates["lcsc"] = {
            "keys": keys,
            "coefficients": best,
            "search": best_value,
            "heldout": True,
        }
    _final_members(config, stream, steps, candidates)
    for name, cand in candidates.items():
        key = heldout_key(lc, name, cand)
        if cand.get("heldout") and key not in st.heldout:
            if cand["keys"] is keys:  # the search's own members: already on the devices
                params = merged(cand["coefficients"])
            else:
                params = merge.merge_streaming(load_key, cand["keys"], cand["coefficients"])
            st.heldout[key] = fitness(params, lc.heldout_seed, lc.heldout_samples)[1]
            st.save(state_path)
            print(f"held-out {name}: {st.heldout[key][fitness.key]:.4f}", flush=True)
    report = _report(config, steps, candidates, st, fitness.key)
    if best is not None:
        merged_dir = os.path.join(out_dir, "merged")
        _write_merged(config, exp, merged(best), best, steps[-1], merged_dir)
    if jax.process_index() == 0:
        _write_outputs(out_dir, steps, candidates, st, report)
    stream.close()
    return report


def heldout_key(lc, name: str, cand: dict) -> tuple:
    """What a held-out result depends on: a longer search may change the LCSC vector."""
    vector = search.cache_key(cand["coefficients"], 12)
    return (name, lc.heldout_seed, lc.heldout_samples, lc.sampler, vector)


def best_of_history(history):
    """(coefficients, fitness) of the best vector any generation evaluated."""
    entry = min(history, key=lambda h: h["best"])
    return np.asarray(entry["best_coefficients"]), entry["best"]


def _baselines(config, stream, steps, keys, search_fitness, st, fitness, state_path) -> dict:
    """{name: {'keys', 'coefficients', 'search', 'family'}} with fitness on the search seeds;
    the best of each family is marked for the held-out evaluation."""
    lc = config.lcsc
    out = {}
    individual = []
    for i, s in enumerate(steps):
        one_hot = np.eye(len(steps))[i]
        individual.append(search_fitness(one_hot))
        out[f"snapshot{s}"] = {"keys": keys, "coefficients": one_hot, "family": "single"}
    print(f"snapshots alone: {', '.join(f'{v:.3f}' for v in individual)}", flush=True)
    for name, (family, a) in baselines.on_stream(lc, steps).items():
        out[name] = {"keys": keys, "coefficients": a, "family": family}
    tracked = tuple(config.training.power_ema_stds)
    for name, (pkeys, a) in baselines.posthoc(steps, tracked, lc.posthoc_stds).items():
        out[name] = {"keys": pkeys, "coefficients": a, "family": "posthoc"}
    if lc.greedy_soup:
        out["greedy_soup"] = {
            "keys": keys,
            "coefficients": baselines.greedy_soup(search_fitness, np.asarray(individual)),
            "family": "greedy_soup",
        }
    for name, cand in out.items():
        if cand["keys"] is keys:
            cand["search"] = search_fitness(cand["coefficients"])
        else:
            if name not in st.baselines:
                params = merge.merge_streaming(
                    lambda k: stream.load(*k), cand["keys"], cand["coefficients"]
                )
                st.baselines[name] = fitness(params, lc.search_seed, lc.search_samples)[0]
                st.save(state_path)
            cand["search"] = st.baselines[name]
    families = {}
    for name, cand in out.items():
        fam = cand["family"]
        if fam not in families or cand["search"] < out[families[fam]]["search"]:
            families[fam] = name
    for name in families.values():
        out[name]["heldout"] = True
    return out


def _search(config, st, search_fitness, candidates, state_path):
    lc = config.lcsc
    num = len(st.steps)
    if st.optimizer is None:
        # CMA-ES starts from the best baseline on the search's own members.
        on_stream = [c for c in candidates.values() if len(c["keys"]) == num and "search" in c]
        start = min(on_stream, key=lambda c: c["search"])["coefficients"]
        st.optimizer = search.make_optimizer(num, lc, start)

    def save():
        st.save(state_path)
        h = st.history[-1]
        print(
            f"generation {h['generation']}/{lc.generations}: best {h['best']:.4f} median "
            f"{h['median']:.4f} ({h['evaluations']} new, {h['seconds']:.1f} s)",
            flush=True,
        )

    search.run_search(
        st.optimizer, search_fitness, lc.generations, st.cache, st.history, lc, save=save
    )


def _final_members(config, stream, steps, candidates):
    """The last snapshot's EMA and online parameters, evaluated on the held-out seeds."""
    last = steps[-1]
    candidates[f"final_online{last}"] = {
        "keys": [(last, ("params",))],
        "coefficients": np.ones(1),
        "heldout": True,
    }
    if state.num_emas(config.training):
        candidates[f"final_ema{last}"] = {
            "keys": [(last, ("ema", 0))],
            "coefficients": np.ones(1),
            "heldout": True,
        }


def _report(config, steps, candidates, st, key) -> dict:
    lc = config.lcsc
    rows = {}
    for name, cand in candidates.items():
        found = st.heldout.get(heldout_key(lc, name, cand))
        if found is not None:
            rows[name] = {"search": cand.get("search"), **found}
    report = {
        "metric": key,
        "sampler": lc.sampler,
        "steps": steps,
        "search_seed": lc.search_seed,
        "search_samples": lc.search_samples,
        "heldout_seed": lc.heldout_seed,
        "heldout_samples": lc.heldout_samples,
        "results": rows,
    }
    if jax.process_index() == 0:
        width = max(map(len, rows))
        print(f"{'':<{width}}  {'search seeds':>12}  {'held-out':>10}   ({key}, {lc.sampler})")
        for name, row in sorted(rows.items(), key=lambda r: r[1][key]):
            search_value = "" if row["search"] is None else f"{row['search']:.4f}"
            print(f"{name:<{width}}  {search_value:>12}  {row[key]:>10.4f}")
    return report


def _write_merged(config, exp, params, coefficients, step: int, path: str):
    """A workdir at `path` whose only checkpoint is a train state holding `params` as online
    parameters and every EMA (a fresh optimizer state), at the last snapshot's step. Rewritten
    when the coefficients changed (a longer search), kept otherwise (a resumed one)."""
    marker = os.path.join(path, "coefficients.json")
    vector = [float(x) for x in coefficients]
    if os.path.exists(marker):
        with open(marker) as f:
            stale = json.load(f) != vector
        if stale and jax.process_index() == 0:
            shutil.rmtree(path)
        multihost_utils.sync_global_devices("lcsc merged checkpoint removed")
    ckpt = Checkpointer(path, 1, config.to_dict())
    if ckpt.latest_step() != step:
        t = config.training
        make = lambda p: state.create(p, exp.tx, state.num_emas(t), len(t.power_ema_stds))  # noqa: E731
        train_state = jax.jit(make, out_shardings=exp.replicated)(params)
        ckpt.save(step, train_state.replace(step=jnp.asarray(step, jnp.int32)))
    ckpt.close()
    if jax.process_index() == 0:
        with open(marker, "w") as f:
            json.dump(vector, f)


def _write_outputs(out_dir: str, steps, candidates, st, report):
    def dump(name, value):
        with open(os.path.join(out_dir, name), "w") as f:
            json.dump(value, f, indent=1)

    vectors = {
        name: {
            "keys": [[int(k[0]), list(k[1])] for k in c["keys"]],
            "coefficients": [float(x) for x in c["coefficients"]],
        }
        for name, c in candidates.items()
        if not name.startswith("snapshot")
    }
    dump("coefficients.json", {"steps": steps, "candidates": vectors})
    dump("generations.json", st.history)
    dump("heldout.json", report)
    if st.history:
        gens = [h["generation"] for h in st.history]
        plots.line_plot(
            os.path.join(out_dir, "fitness.png"),
            gens,
            {
                "best": [h["best"] for h in st.history],
                "median": [h["median"] for h in st.history],
            },
            f"LCSC search: {report['metric']} on the search seeds",
            "generation",
        )
    bars = {n: candidates[n]["coefficients"] for n in ("lcsc",) if n in candidates}
    ema_names = [n for n in candidates if n.startswith("ema_rate")]
    if ema_names:
        bars[ema_names[0]] = candidates[ema_names[0]]["coefficients"]
    if bars:
        plots.bar_plot(
            os.path.join(out_dir, "coefficients.png"),
            steps,
            bars,
            "coefficients per snapshot",
            "snapshot step",
        )
    print(
        f"Wrote {out_dir}/heldout.json, coefficients.json, generations.json, merged/ at "
        f"{time.strftime('%H:%M:%S')}"
    )
