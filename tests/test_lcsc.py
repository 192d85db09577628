"""LCSC (docs/methods.md section 4) and the EDM2 power EMA: formulas, merging, search, the mode."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_config
from scipy import integrate

from cm import experiment, modes, power_ema
from cm.io import fileio
from cm.lcsc import baselines, candidates, coefficients, merge, search, search_state
from cm.lcsc import run as lcsc_run
from cm.lcsc.candidates import Candidate
from cm.lcsc.snapshots import SnapshotStream
from cm.workdir.checkpoint import Checkpointer
from configs.common import base_config

# ---------------------------------------------------------------- EDM2 power EMA


def test_sigma_rel_and_gamma_match_edm2():
    # EDM2 (section 3.1): sigma_rel 0.05 <-> gamma 16.97, sigma_rel 0.10 <-> gamma 6.94.
    assert power_ema.std_to_gamma(0.05) == pytest.approx(16.97, abs=0.005)
    assert power_ema.std_to_gamma(0.10) == pytest.approx(6.94, abs=0.005)
    for gamma in (0.5, 3.0, 16.97):
        assert power_ema.std_to_gamma(power_ema.gamma_to_std(gamma)) == pytest.approx(gamma)
    with pytest.raises(ValueError, match="outside"):
        power_ema.std_to_gamma(0.5)


def _track(thetas, gamma):
    """Power EMA of a scalar trajectory theta_1..theta_T through power_ema.update."""
    step = jax.jit(lambda ema, theta, t: power_ema.update(ema, theta, t, (gamma,)))
    ema = (jnp.float32(0.0),)
    out = []
    for t, theta in enumerate(thetas, start=1):
        ema = step(ema, jnp.float32(theta), t)
        out.append(ema[0])
    return np.array(jax.device_get(out))


def test_power_ema_update_has_the_closed_form_weights():
    # gamma = 0: beta_t = 1 - 1/t, the running mean. gamma = 1: beta_t = (1 - 1/t)^2, whose
    # weights are w_t = (1 - beta_t) prod_{s > t} beta_s = (2t - 1) / T^2.
    thetas = np.random.default_rng(0).normal(size=50)
    t = np.arange(1, 51)
    np.testing.assert_allclose(_track(thetas, 0.0), np.cumsum(thetas) / t, rtol=1e-5, atol=1e-6)
    expected = np.cumsum((2 * t - 1) * thetas) / t**2
    np.testing.assert_allclose(_track(thetas, 1.0), expected, rtol=1e-4, atol=1e-6)
    # Accurate at large t in float32, where 1 - 1/t rounds: 1 - beta = (g + 1) / t + O(1/t^2).
    w = float(power_ema.one_minus_beta(4e5, 6.94))
    assert w == pytest.approx(-np.expm1(7.94 * np.log1p(-1 / 4e5)), rel=1e-5)


def test_profile_inner_product_matches_numerical_integral():
    def profile(t, g):
        return lambda tau: (g + 1) * tau**g / t ** (g + 1) if tau <= t else 0.0

    for t_a, g_a, t_b, g_b in [(100, 3.0, 250, 6.94), (400, 16.97, 300, 0.5), (50, 1, 50, 2)]:
        f, h = profile(t_a, g_a), profile(t_b, g_b)
        value = integrate.quad(lambda x, f=f, h=h: f(x) * h(x), 0, min(t_a, t_b), limit=200)[0]
        assert power_ema.profile_dot(t_a, g_a, t_b, g_b) == pytest.approx(value, rel=1e-6)


def test_posthoc_reconstruction_matches_a_directly_tracked_ema():
    # Track gammas 16.97 and 6.94 on a smooth trajectory, snapshot every 50 steps; reconstruct
    # sigma_rel 0.075 at the end and compare with that EMA tracked directly.
    steps = np.arange(1, 1001)
    thetas = np.sin(steps / 150.0) + 0.002 * steps
    tracked = {g: _track(thetas, g) for g in (16.97, 6.94)}
    snap = np.arange(50, 1001, 50)
    in_t = np.concatenate([snap, snap])
    in_g = np.repeat([16.97, 6.94], len(snap))
    values = np.concatenate([tracked[16.97][snap - 1], tracked[6.94][snap - 1]])
    out_g = power_ema.std_to_gamma(0.075)
    x = power_ema.posthoc_coefficients(in_t, in_g, 1000, out_g)
    direct = _track(thetas, out_g)[-1]
    assert x @ values == pytest.approx(direct, abs=2e-3)
    assert abs(x @ values - direct) < 0.05 * abs(direct - tracked[6.94][-1])
    # A tracked profile itself is reconstructed by its own snapshot.
    own = power_ema.posthoc_coefficients(in_t, in_g, 1000, 6.94)
    np.testing.assert_allclose(own, np.eye(len(in_t))[-1], atol=1e-6)


def test_posthoc_coefficients_sum_to_one_and_reproduce_tracked_snapshots():
    # EDM2's solve_posthoc_coefficients divides the least-squares weights by their sum. With
    # 0.05/0.10 snapshots every 100 of 1000 steps, plain least squares for sigma_rel 0.15 sums
    # to 0.99747 (measured), so the normalization is what makes the sum exactly 1.
    snap = np.arange(100, 1001, 100)
    in_t = np.concatenate([snap, snap])
    gammas = [power_ema.std_to_gamma(s) for s in (0.05, 0.10)]
    in_g = np.repeat(gammas, len(snap))
    for std in (0.15, 0.075, 0.03):
        x = power_ema.posthoc_coefficients(in_t, in_g, 1000, power_ema.std_to_gamma(std))
        assert x.sum() == pytest.approx(1.0, abs=1e-12)
    a = power_ema.profile_dot(in_t[:, None], in_g[:, None], in_t[None, :], in_g[None, :])
    b = power_ema.profile_dot(in_t, in_g, 1000, power_ema.std_to_gamma(0.15))
    assert np.linalg.lstsq(a, b, rcond=None)[0].sum() == pytest.approx(0.99747, abs=1e-5)
    # Asking for a tracked profile (sigma_rel, snapshot time) returns that snapshot, one-hot.
    for k, (t, g) in enumerate(zip(in_t, in_g, strict=True)):
        x = power_ema.posthoc_coefficients(in_t, in_g, t, g)
        np.testing.assert_allclose(x, np.eye(len(in_t))[k], atol=1e-8)


# ---------------------------------------------------------------- coefficient vectors


def test_coefficient_vectors_by_hand():
    np.testing.assert_allclose(coefficients.ema_shaped(3, 0.5), np.array([1, 2, 4]) / 7)
    np.testing.assert_allclose(coefficients.uniform_last(4, 2), [0, 0, 0.5, 0.5])
    np.testing.assert_allclose(
        coefficients.project_sum_one([1.0, 2.0, -1.0]), [2 / 3, 5 / 3, -4 / 3]
    )
    # r = 0.5, snapshots at 1, 2, 4: [r^3, r^2 - r^3, 1 - r^2] = [1/8, 1/8, 3/4].
    np.testing.assert_allclose(
        coefficients.ema_from_snapshots([1, 2, 4], 0.5), [1 / 8, 1 / 8, 3 / 4]
    )


def test_ema_from_snapshots_is_exact_for_a_blockwise_constant_trajectory():
    # Parameters constant on each block (s_{i-1}, s_i] (and up to s_1): the per-step EMA (started
    # at step 0 from the first block's value) equals the snapshot combination exactly.
    steps, values, rate = [10, 20, 30, 40], np.array([1.0, -2.0, 0.5, 3.0]), 0.97
    ema = values[0]
    for tau in range(1, 41):
        ema = rate * ema + (1 - rate) * values[np.searchsorted(steps, tau)]
    assert coefficients.ema_from_snapshots(steps, rate) @ values == pytest.approx(ema, rel=1e-12)


# ---------------------------------------------------------------- merging


def _random_trees(k):
    rng = np.random.default_rng(1)
    return [
        {
            "a": rng.normal(size=(3, 4)).astype(np.float32),
            "b": {"c": rng.normal(size=5).astype(np.float32)},
        }
        for _ in range(k)
    ]


def test_streaming_and_stacked_merges_agree_and_compile_once():
    trees = _random_trees(5)
    load = lambda i: jax.device_put(trees[i])  # noqa: E731
    mesh = experiment.make_mesh()
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    stack = merge.StackedSnapshots(load, list(range(5)), replicated)
    before = merge._contract._cache_size()
    for seed in range(3):
        a = coefficients.project_sum_one(np.random.default_rng(seed).normal(size=5) * 3)
        expected = jax.tree.map(lambda *xs, a=a: np.tensordot(a, np.stack(xs), axes=1), *trees)
        for got in (stack.merge(a), merge.merge_streaming(load, list(range(5)), a)):
            jax.tree.map(
                lambda g, e: np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5), got, expected
            )
    assert merge._contract._cache_size() - before <= 1  # one program for every coefficient vector


# ---------------------------------------------------------------- search


def _search_config(optimizer, **overrides):
    lc = base_config().lcsc
    lc.optimizer = optimizer
    for k, v in overrides.items():
        lc[k] = v
    return lc


TARGET = np.array([-0.6, 0.3, 0.1, 0.9, 0.3])  # sums to 1, one negative coefficient


def _synthetic(a):
    return float(np.sum((np.asarray(a) - TARGET) ** 2))


@pytest.mark.parametrize(
    "optimizer, generations, overrides",
    [("evolution", 60, {"mutation_std": 0.05}), ("cma", 40, {"cma_sigma": 0.3, "population": 10})],
)
def test_search_finds_a_known_optimum(optimizer, generations, overrides):
    lc = _search_config(optimizer, **overrides)
    history = []
    result = search.run_search(5, lc, np.full(5, 0.2), _synthetic, generations, {}, history)
    assert len(history) == generations
    assert abs(result.best.sum() - 1) < 1e-6
    np.testing.assert_allclose(result.best, TARGET, atol=0.03)
    assert result.value < 1e-3 and history[-1]["best"] <= history[0]["best"]
    assert history[-1]["median"] < history[0]["median"]
    # Nothing outside the search in the cache: both reported vectors are the search's best.
    np.testing.assert_array_equal(result.search_best, result.best)
    assert result.search_value == result.value == min(h["best"] for h in history)


def test_search_reports_the_best_vector_anywhere_and_its_own_best():
    # A "baseline" at the optimum is already in the cache (fitness 0); two generations of a
    # search from the uniform vector do not reach it. The result keeps both vectors.
    lc = _search_config("cma", population=6, cma_sigma=0.05)
    baseline = search.cache_key(TARGET, lc.cache_decimals)
    cache, history = {baseline: 0.0}, []
    result = search.run_search(5, lc, np.full(5, 0.2), _synthetic, 2, cache, history)
    np.testing.assert_array_equal(result.best, TARGET)
    assert result.value == 0.0
    assert result.search_value == min(h["best"] for h in history) > 0.1
    entry = min(history, key=lambda h: h["best"])
    np.testing.assert_array_equal(result.search_best, entry["best_coefficients"])
    # The reported vectors are the rounded ones the fitness was evaluated at.
    assert cache[tuple(result.search_best)] == result.search_value


def test_cma_starts_from_its_start_vector():
    # Generation 1 of CMA-ES is spread around the start (sigma 1e-4), wherever the start is.
    lc = _search_config("cma", population=6, cma_sigma=1e-4)
    start = coefficients.project_sum_one(np.array([0.5, -0.2, 0.3, 0.1, 0.3]))
    history = []
    search.run_search(5, lc, start, _synthetic, 1, {}, history)
    np.testing.assert_allclose(history[0]["best_coefficients"], start, atol=1e-3)


@pytest.mark.parametrize("optimizer", ["evolution", "cma"])
def test_search_resumed_from_json_state_equals_uninterrupted(optimizer):
    """Killed in the middle of generation 4, saved as JSON, resumed: the same generations as an
    uninterrupted search, and no vector evaluated twice."""
    lc = _search_config(optimizer, population=6)
    start = np.full(5, 0.2)
    whole_calls, whole_history = [], []

    def counted(a, calls):
        calls.append(tuple(a))
        return _synthetic(a)

    whole_cache = {}
    search.run_search(
        5, lc, start, lambda a: counted(a, whole_calls), 6, whole_cache, whole_history
    )
    st = search_state.SearchState(steps=[1, 2, 3, 4, 5], settings={}, start=list(start))
    calls = []

    def dying(a):
        if len(st.history) == 3:  # in generation 4
            if dying.left == 0:
                raise KeyboardInterrupt
            dying.left -= 1
        return counted(a, calls)

    dying.left = 1  # new evaluations of generation 4 before the kill
    with pytest.raises(KeyboardInterrupt):
        search.run_search(5, lc, start, dying, 6, st.cache, st.history)
    resumed = search_state.from_json(search_state.to_json(st), "state")
    assert resumed.cache == st.cache and len(resumed.history) == 3
    search.run_search(
        5, lc, resumed.start, lambda a: counted(a, calls), 6, resumed.cache, resumed.history
    )
    assert sorted(calls) == sorted(whole_calls)  # each vector once, across the kill
    assert resumed.cache == whole_cache
    strip = lambda h: [  # noqa: E731
        {k: v for k, v in e.items() if k not in ("seconds", "evaluations")} for e in h
    ]
    assert strip(resumed.history) == strip(whole_history)
    # Generation 4 counts only what it evaluated after the resume.
    assert resumed.history[3]["evaluations"] == whole_history[3]["evaluations"] - 1


def test_search_refuses_a_state_that_does_not_replay():
    lc = _search_config("evolution", population=6)
    cache, history = {}, []
    search.run_search(5, lc, None, _synthetic, 2, cache, history)
    history[1]["best_coefficients"] = [0.2] * 5
    with pytest.raises(ValueError, match="does not replay at generation 2"):
        search.run_search(5, lc, None, _synthetic, 3, cache, history)


def test_search_start_is_the_best_candidate_over_the_search_members():
    members = tuple((s, ("params",)) for s in (1, 2, 3))
    other = tuple((s, ("power_ema", 0)) for s in (1, 2, 3))  # as many members, not the same
    found = [
        Candidate("snapshot1", "single", members, (1.0, 0.0, 0.0)),
        Candidate("uniform_last2", "uniform_last_k", members, (0.0, 0.5, 0.5)),
        Candidate("posthoc_std0.1", "posthoc", other, (0.2, 0.3, 0.5)),
    ]
    values = {"snapshot1": 3.0, "uniform_last2": 2.0, "posthoc_std0.1": 1.0}
    np.testing.assert_array_equal(candidates.search_start(found, values, members), [0.0, 0.5, 0.5])
    np.testing.assert_allclose(candidates.search_start(found[2:], values, members), [1 / 3] * 3)
    assert [c.name for c in candidates.best_per_family(found, values)] == [
        "snapshot1",
        "uniform_last2",
        "posthoc_std0.1",
    ]


def test_candidate_keys_name_the_combination():
    members = tuple((s, ("params",)) for s in (1, 2, 3))
    one_hot = Candidate("snapshot3", "single", members, np.array([0.0, 0.0, 1.0]))
    final = Candidate("final_online3", "final", ((3, ["params"]),), [1])
    assert candidates.key(one_hot) == candidates.key(final)
    assert candidates.key(one_hot) != candidates.key(
        Candidate("ema", "final", ((3, ("ema", 0)),), (1.0,))
    )
    assert one_hot.coefficients == (0.0, 0.0, 1.0) and final.members == ((3, ("params",)),)


def test_evolution_keeps_elites_and_the_sum():
    lc = _search_config("evolution", population=8, elite=2)
    rng = np.random.default_rng(0)
    population = search.initial_population(5, 8, lc.init_betas, rng)
    np.testing.assert_allclose(population[0], coefficients.ema_shaped(5, lc.init_betas[0]))
    fitness = np.arange(8.0)[::-1]
    nxt = search.next_generation(population, fitness, lc, rng)
    np.testing.assert_array_equal(nxt[:2], population[[7, 6]])
    np.testing.assert_allclose(nxt.sum(1), 1.0)


def test_greedy_soup_adds_only_what_helps():
    # Snapshots 0..3; the soup of {1, 2} is best, adding 0 or 3 makes it worse.
    def evaluate(a):
        return float(np.sum((a - np.array([0, 0.5, 0.5, 0])) ** 2))

    individual = np.array([evaluate(np.eye(4)[i]) for i in range(4)]) + [0, 0, 0.01, 0.02]
    np.testing.assert_allclose(baselines.greedy_soup(evaluate, individual), [0, 0.5, 0.5, 0])


# ---------------------------------------------------------------- the mode, end to end


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A workdir with snapshots at steps 1, 2, 3 of a one-level tiny network (online, one EMA,
    two power EMAs), written directly: random parameters, no training to compile. (That
    training tracks the power EMAs is tested in test_train.py.)"""
    workdir = tmp_path_factory.mktemp("lcsc_run")
    c = tiny_config()
    c.model.channel_mult = (1,)
    c.training.power_ema_stds = (0.05, 0.10)
    c.sampling.consistency_levels = ((),)
    c.lcsc.population = 6
    c.lcsc.generations = 2
    c.lcsc.search_samples = 16
    c.lcsc.heldout_samples = 16
    c.lcsc.uniform_last_k = (2,)
    c.lcsc.ema_rates = (0.5,)
    c.lcsc.posthoc_stds = (0.075,)
    exp = experiment.build(c)
    shapes = experiment.param_shapes(exp, c)
    rng = np.random.default_rng(0)

    def tree():
        return jax.tree.map(lambda s: rng.normal(0, 0.1, s.shape).astype(s.dtype), shapes)

    ckpt = Checkpointer(str(workdir), 1)
    for step in (1, 2, 3):
        ckpt.save_snapshot(step, tree(), (tree(),), (tree(), tree()))
    ckpt.close()
    return c, str(workdir)


def _state(workdir):
    path = fileio.path(workdir) / "lcsc" / search_state.FILE
    return search_state.from_json(fileio.read_text(path), str(path))


@pytest.mark.slow
def test_lcsc_mode_outputs_resume_and_merged_checkpoint(run, monkeypatch):
    c, workdir = run
    out_dir = fileio.path(workdir) / "lcsc"
    # Kill the search at its second new evaluation after generation 1 is saved (in the middle of
    # generation 2), then run the same command again: nothing evaluated before the kill is
    # evaluated again.
    real_call, real_save, real_search = (
        lcsc_run.Fitness.__call__,
        search_state.save,
        search.run_search,
    )
    calls, saved, searches = [], [], []

    def dying(self, params, seed, num_samples):
        if saved and saved[-1][0] >= 1:
            if dying.left == 0:
                raise KeyboardInterrupt
            dying.left -= 1
        calls.append(seed)
        return real_call(self, params, seed, num_samples)

    dying.left = 1

    def recording_save(st, path):
        real_save(st, path)
        saved.append((len(st.history), len(st.cache)))

    def recording_search(num, lc, start, *args, **kwargs):
        searches.append((np.asarray(start), real_search(num, lc, start, *args, **kwargs)))
        return searches[-1][1]

    monkeypatch.setattr(lcsc_run.Fitness, "__call__", dying)
    # Count the traces of the network inside the sampler: one for every candidate of the run.
    build, traces = experiment.build, []

    def counting_build(config):
        exp = build(config)

        def denoise(*args, **kwargs):
            traces.append(1)
            return exp.denoise(*args, **kwargs)

        return dataclasses.replace(exp, denoise=denoise)

    monkeypatch.setattr(experiment, "build", counting_build)
    monkeypatch.setattr(search_state, "save", recording_save)
    monkeypatch.setattr(search, "run_search", recording_search)
    with pytest.raises(KeyboardInterrupt):
        modes.run("lcsc", c, workdir)
    killed = _state(workdir)
    assert [h["generation"] for h in killed.history] == [1]
    after_generation1 = next(n for g, n in saved if g == 1)
    assert len(killed.cache) == after_generation1 + 1  # one vector of generation 2 evaluated
    saved.clear()
    saved.append((0, 0))
    calls.clear()
    searches.clear()
    monkeypatch.setattr(
        lcsc_run.Fitness, "__call__", lambda *a: calls.append(a[2]) or real_call(*a)
    )
    traces.clear()
    report = modes.run("lcsc", c, workdir)
    assert len(traces) == 1  # search and held-out candidates share one compiled sampler
    final = _state(workdir)
    assert [h["generation"] for h in final.history] == [1, 2]
    new_entries = len(final.cache) + len(final.others) - len(killed.cache) - len(killed.others)
    assert calls.count(c.lcsc.search_seed) == new_entries > 0
    assert set(killed.cache) <= set(final.cache) and killed.start == final.start

    # The start: the best baseline over the search's own members (length K = 3; the post-hoc
    # EMA, over 6 power-EMA members, is not one of them).
    written = fileio.read_json(out_dir / "coefficients.json")
    members = [[s, ["params"]] for s in (1, 2, 3)]
    on_members = [np.eye(3)[i] for i in range(3)] + [
        np.asarray(v["coefficients"])
        for name, v in written["candidates"].items()
        if v["keys"] == members and v["family"] not in ("lcsc",)
    ]
    values = [final.cache[search.cache_key(a, c.lcsc.cache_decimals)] for a in on_members]
    (start, result), *_ = searches
    np.testing.assert_array_equal(start, on_members[int(np.argmin(values))])
    np.testing.assert_array_equal(final.start, start)

    # What production wrote is what run_search returned: "lcsc" is the best vector anywhere in
    # the cache (baselines included), "lcsc_search" the search's own best.
    assert result.value == min(final.cache.values())
    assert result.search_value == min(h["best"] for h in final.history)
    lcsc_a = np.asarray(written["candidates"]["lcsc"]["coefficients"])
    np.testing.assert_array_equal(lcsc_a, result.best)
    np.testing.assert_array_equal(
        written["candidates"]["lcsc_search"]["coefficients"], result.search_best
    )
    rows = report["results"]
    assert rows["lcsc"]["search"] == result.value
    assert rows["lcsc_search"]["search"] == result.search_value
    assert fileio.read_json(out_dir / "heldout.json") == report

    expected = {"lcsc", "lcsc_search", "final_ema3", "final_online3", "uniform_last2"}
    assert expected | {"ema_rate0.5", "posthoc_std0.075", "greedy_soup"} <= set(rows)
    # One held-out evaluation per distinct combination (lcsc may equal a baseline).
    assert calls.count(c.lcsc.heldout_seed) == len(final.heldout) <= len(rows)
    for name in ("heldout.json", "generations.json", "fitness.png", "coefficients.png"):
        assert fileio.exists(out_dir / name)
    leftovers = [n for n in fileio.listdir(out_dir) if ".tmp" in n or n.endswith(".pkl")]
    assert leftovers == []
    # The merged checkpoint holds the "lcsc" combination; --mode=sample and eval restore it.
    stream = SnapshotStream(workdir, c, experiment.build(c))
    expected_params = merge.merge_streaming(stream.load, [1, 2, 3], result.best)
    stream.close()
    _, params, step = modes.restore_for_sampling(c, str(out_dir / "merged"))
    assert step == 3
    jax.tree.map(
        lambda g, e: np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6), params, expected_params
    )


@pytest.mark.slow  # refusals of settings need the search state of the test above
def test_lcsc_user_errors_are_one_sentence(run, tmp_path):
    c, workdir = run
    bad = c.copy_and_resolve_references()
    bad.lcsc.heldout_seed = bad.lcsc.search_seed
    with pytest.raises(ValueError, match="never saw"):
        modes.run("lcsc", bad, workdir)
    # Read-only: a workdir without snapshots is refused before anything is created in it.
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="snapshot_every") as error:
        modes.run("lcsc", c, str(empty))
    assert str(error.value).count(". ") == 0 and list(empty.iterdir()) == []
    with pytest.raises(FileNotFoundError, match="snapshot_every"):
        modes.run("lcsc", c, str(tmp_path / "missing"))
    assert not (tmp_path / "missing").exists()
    other = c.copy_and_resolve_references()
    other.lcsc.seed = 7
    with pytest.raises(ValueError, match="lcsc.seed"):
        modes.run("lcsc", other, workdir)
    # A pickle state of an older version is never loaded.
    legacy = c.copy_and_resolve_references()
    legacy.lcsc.name = "legacy"
    fileio.write_bytes_atomic(fileio.path(workdir) / "legacy" / "state.pkl", b"not read")
    with pytest.raises(ValueError, match="pickle state is no longer read"):
        modes.run("lcsc", legacy, workdir)
