"""--mode=lcsc: search a linear combination of the run's snapshots; compare on held-out seeds.

1. Stack the chosen member (lcsc.source) of every snapshot in [first_step, last_step] on the
   devices (or stream them from disk per candidate when lcsc.resident is False).
2. Baselines on the search seeds (baselines.py): each snapshot alone, uniform last k, EMA at
   each rate in lcsc.ema_rates rebuilt from the snapshots, EDM2 post-hoc power EMAs (when the
   run tracked training.power_ema_stds), greedy soup.
3. The search (lcsc.optimizer) for lcsc.generations generations on the search seeds, started at
   the best baseline over the search's own members. It reports two vectors: "lcsc_search", the
   best its generations evaluated, and "lcsc", the best evaluated anywhere on those members
   (baselines included): the one merged/ holds.
4. Held-out: lcsc, lcsc_search, the final EMA, the final online parameters and the best member of
   each baseline family (chosen on the search seeds) on lcsc.heldout_seed, never used in 1-3;
   one evaluation per distinct combination.
5. Outputs (outputs.py) in <workdir>/<lcsc.name>/: coefficients.json, generations.json,
   heldout.json, fitness.png, coefficients.png, and merged/ (a workdir whose checkpoint holds
   the lcsc parameters, for --mode=sample and --mode=eval with --workdir=<that folder>).

Everything evaluated is saved in state.json (search_state.py) after each evaluation, so a
killed search resumes from where it stopped, evaluating nothing twice, with the same command.
"""

import json

import jax
import numpy as np

from cm import experiment, state
from cm.io import fileio
from cm.lcsc import baselines, candidates, merge, outputs, report, search, search_state, snapshots
from cm.lcsc.candidates import LCSC, SINGLE, Candidate
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


def search_settings(lc) -> dict:
    return json.loads(json.dumps({k: lc[k] for k in SEARCH_FIELDS}))


class Evaluations:
    """Fitness of candidates, each computed once and saved in the search state."""

    def __init__(self, config, workdir, exp, stream, members, st, state_path):
        self.lc, self.members, self.st, self.state_path = config.lcsc, members, st, state_path
        self.fitness = Fitness(config, workdir, exp)
        self._load = lambda key: stream.load(*key)
        if self.lc.resident:  # the search's members stacked on the devices once
            self._merge_members = merge.StackedSnapshots(self._load, members, exp.replicated).merge
        else:
            self._merge_members = lambda a: merge.merge_streaming(self._load, members, a)

    def params(self, c: Candidate):
        if c.members == self.members:
            return self._merge_members(c.vector)
        return merge.merge_streaming(self._load, c.members, c.vector)

    def _save(self):
        search_state.save(self.st, self.state_path)

    def _search_fitness(self, params) -> float:
        return self.fitness(params, self.lc.search_seed, self.lc.search_samples)[0]

    def search_vector(self, a) -> float:
        """Search-seed fitness of a [K] over the search's members (cached at the rounded a)."""
        key = search.cache_key(a, self.lc.cache_decimals)
        if key not in self.st.cache:
            self.st.cache[key] = self._search_fitness(self._merge_members(np.asarray(key)))
            self._save()
        return self.st.cache[key]

    def search(self, c: Candidate) -> float:
        if c.members == self.members:
            return self.search_vector(c.vector)
        key = candidates.key(c)
        if key not in self.st.others:
            self.st.others[key] = self._search_fitness(self.params(c))
            self._save()
        return self.st.others[key]

    def heldout(self, c: Candidate) -> dict:
        """Every metric on the held-out seeds; one evaluation per distinct combination."""
        lc = self.lc
        key = json.dumps([lc.heldout_seed, lc.heldout_samples, lc.sampler, candidates.key(c)])
        if key not in self.st.heldout:
            _, metrics = self.fitness(self.params(c), lc.heldout_seed, lc.heldout_samples)
            self.st.heldout[key] = {k: float(v) for k, v in metrics.items()}
            self._save()
            print(f"held-out {c.name}: {self.st.heldout[key][self.fitness.key]:.4f}", flush=True)
        return self.st.heldout[key]


def lcsc(config, workdir: str) -> dict:
    """The mode (see the module docstring). Returns heldout.json's content."""
    check_config(config)
    snapshots.require(workdir)  # before anything is built or written
    exp = experiment.build(config)
    stream = SnapshotStream(workdir, config, exp)
    try:
        return _lcsc(config, workdir, exp, stream)
    finally:
        stream.close()


def _lcsc(config, workdir: str, exp, stream) -> dict:
    lc = config.lcsc
    steps = stream.steps(lc.first_step, lc.last_step)
    if len(steps) < 2:
        raise ValueError(
            f"LCSC needs at least 2 snapshots in [{lc.first_step}, {lc.last_step or 'end'}] of "
            f"{workdir}/snapshots, found {len(steps)}; train longer or lower "
            "training.snapshot_every, or widen lcsc.first_step / lcsc.last_step."
        )
    members = tuple((s, source_member(lc.source)) for s in steps)
    out_dir = fileio.path(workdir) / lc.name
    if jax.process_index() == 0:  # a search killed mid-write left its temporary files
        for folder in (out_dir, out_dir / "merged"):
            fileio.remove_temporaries(folder)
    state_path = out_dir / search_state.FILE
    st = search_state.load_or_new(state_path, steps, search_settings(lc), lc.name)
    ev = Evaluations(config, workdir, exp, stream, members, st, state_path)

    baseline_candidates = _baselines(config, steps, members, ev)
    values = {c.name: ev.search(c) for c in baseline_candidates}
    result = _search(lc, members, baseline_candidates, values, ev, st, state_path)
    found = found_for(result, members)
    values.update({"lcsc": result.value, "lcsc_search": result.search_value})
    finals = baselines.finals(steps[-1], state.num_emas(config.training))
    scored = candidates.best_per_family(baseline_candidates, values) + found + finals
    rows = {c.name: {"search": values.get(c.name), **ev.heldout(c)} for c in scored}
    rep = report.build(lc, ev.fitness.key, steps, rows)
    if jax.process_index() == 0:
        print(report.table(rep), flush=True)
    if found:
        params = ev.params(found[0])
        outputs.write_merged(config, exp, params, found[0].vector, steps[-1], out_dir / "merged")
    if jax.process_index() == 0:
        outputs.write_results(out_dir, steps, baseline_candidates + found + finals, st.history, rep)
    return rep


def _baselines(config, steps, members, ev: Evaluations) -> list[Candidate]:
    """Every baseline candidate, in the order they are evaluated on the search seeds."""
    lc = config.lcsc
    out = baselines.on_search_members(lc, members)
    individual = np.asarray([ev.search(c) for c in out if c.family == SINGLE])  # [K]
    print(f"snapshots alone: {', '.join(f'{v:.3f}' for v in individual)}", flush=True)
    out += baselines.posthoc(steps, tuple(config.training.power_ema_stds), lc.posthoc_stds)
    if lc.greedy_soup:
        soup = baselines.greedy_soup(ev.search_vector, individual)
        out.append(Candidate("greedy_soup", "greedy_soup", members, soup))
    return out


def _search(lc, members, baseline_candidates, values, ev, st, state_path) -> search.Result:
    """The search from its saved state; its start is fixed (and saved) the first time."""
    if st.start is None:
        st.start = candidates.search_start(baseline_candidates, values, members).tolist()
        search_state.save(st, state_path)

    def save():
        search_state.save(st, state_path)
        h = st.history[-1]
        print(
            f"generation {h['generation']}/{lc.generations}: best {h['best']:.4f} median "
            f"{h['median']:.4f} ({h['evaluations']} new, {h['seconds']:.1f} s)",
            flush=True,
        )

    return search.run_search(
        len(members), lc, st.start, ev.search_vector, lc.generations, st.cache, st.history, save
    )


def found_for(result: search.Result, members) -> list[Candidate]:
    """[lcsc (best anywhere), lcsc_search (the search's own best)], or [] before generation 1."""
    if result.search_best is None:
        return []
    return [
        Candidate("lcsc", LCSC, members, result.best),
        Candidate("lcsc_search", LCSC, members, result.search_best),
    ]
