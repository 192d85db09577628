"""Gradient-free search over coefficient vectors a [K] with sum a = 1 (lower fitness = better).

Two deterministic optimizers with one ask/tell interface (the same settings and fitness values
give the same populations), so a killed search resumes without storing the optimizer: `run_search`
rebuilds it by replaying the finished generations from the fitness cache, evaluating nothing.

- `Evolution`: the first population holds EMA-shaped vectors (lcsc.init_betas), the uniform
  average and random vectors (Dirichlet(1)); each generation keeps the `elite` best unchanged
  and fills the rest with children of two parents drawn from the top `parent_fraction`:
  uniform crossover (each coefficient from the second parent with `crossover_prob`), Gaussian
  mutation (each coefficient with `mutation_prob`, std `mutation_std`), projection back onto
  sum 1. Generation g draws from default_rng([seed, g]): the same command repeats the search.
- `CMAES`: the `cma` package's CMA-ES on the K - 1 dimensional plane sum a = 1 (an orthonormal
  basis of the sum-zero directions around a start vector), initial step `cma_sigma`.

`run_search` evaluates each generation through a fitness cache keyed by the rounded vector and
returns both the search's own best vector and the best one in the whole cache (which also holds
the baselines on the search's members).
"""

import dataclasses
import math
import time
import warnings

import numpy as np

from cm.lcsc import coefficients


def initial_population(num: int, size: int, betas, rng) -> np.ndarray:
    """[size, K]: EMA shapes for each beta, the uniform average, then Dirichlet(1) vectors."""
    seeds = [coefficients.ema_shaped(num, b) for b in betas] + [np.full(num, 1.0 / num)]
    seeds = seeds[:size]
    randoms = rng.dirichlet(np.ones(num), size=size - len(seeds))
    return np.concatenate([np.stack(seeds), randoms.reshape(-1, num)])


def next_generation(population, fitness, lc, rng) -> np.ndarray:
    """Elitism, parents from the top fraction, uniform crossover, Gaussian mutation, projection.
    population [P, K], fitness [P] -> [P, K]."""
    size, num = population.shape
    order = np.argsort(fitness, kind="stable")
    num_parents = max(2, math.ceil(lc.parent_fraction * size))
    parents = population[order[:num_parents]]
    children = [population[i] for i in order[: lc.elite]]
    while len(children) < size:
        first, second = rng.choice(num_parents, size=2, replace=False)
        take_second = rng.random(num) < lc.crossover_prob
        child = np.where(take_second, parents[second], parents[first])
        mutate = rng.random(num) < lc.mutation_prob
        child = child + mutate * rng.normal(0.0, lc.mutation_std, num)
        children.append(coefficients.project_sum_one(child))
    return np.stack(children)


class Evolution:
    """Evolutionary search (see the module docstring); state = (generation, population)."""

    def __init__(self, num: int, lc, start=None):
        del start  # the first population already holds the EMA shapes and the uniform vector
        self.lc = lc
        self.generation = 0
        rng = np.random.default_rng([lc.seed, 0x1C5C])
        self.population = initial_population(num, lc.population, lc.init_betas, rng)

    def ask(self) -> np.ndarray:
        return self.population

    def tell(self, population, fitness):
        rng = np.random.default_rng([self.lc.seed, self.generation])
        self.population = next_generation(population, np.asarray(fitness), self.lc, rng)
        self.generation += 1


def sum_zero_basis(num: int) -> np.ndarray:
    """[K, K - 1] orthonormal columns spanning {v : sum v = 0}."""
    q, _ = np.linalg.qr(np.concatenate([np.ones((num, 1)), np.eye(num)[:, : num - 1]], axis=1))
    return q[:, 1:]


class CMAES:
    """CMA-ES (the `cma` package) on the plane sum a = 1, starting at `start` (sum 1)."""

    def __init__(self, num: int, lc, start=None):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # cma warns that matplotlib (its plots) is absent
            import cma
        self.start = coefficients.project_sum_one(
            np.full(num, 1.0 / num) if start is None else np.asarray(start)
        )
        self.basis = sum_zero_basis(num)
        # cma reads seed 0 as "seed from the clock": shift by one to stay deterministic.
        options = {"popsize": lc.population, "seed": lc.seed + 1, "verbose": -9}
        self.es = cma.CMAEvolutionStrategy(np.zeros(num - 1), lc.cma_sigma, options)
        # cma draws from numpy's global generator (seeded above): its state is kept here, so
        # that the draws do not depend on what else used that generator in between.
        self._numpy_state = np.random.get_state()
        self.generation = 0
        self._z = None

    def ask(self) -> np.ndarray:
        if self._z is None:
            np.random.set_state(self._numpy_state)
            self._z = np.asarray(self.es.ask())  # [P, K - 1]
            self._numpy_state = np.random.get_state()
        return self.start + self._z @ self.basis.T

    def tell(self, population, fitness):
        del population
        self.es.tell(list(self._z), list(np.asarray(fitness, np.float64)))
        self._z = None
        self.generation += 1


OPTIMIZERS = {"evolution": Evolution, "cma": CMAES}


def make_optimizer(num: int, lc, start=None):
    if lc.optimizer not in OPTIMIZERS:
        raise ValueError(f"Unknown lcsc.optimizer {lc.optimizer!r}; valid: {sorted(OPTIMIZERS)}.")
    if lc.population < lc.elite + 2:
        raise ValueError(
            f"lcsc.population {lc.population} leaves no room for children beside "
            f"lcsc.elite {lc.elite}; set --config.lcsc.population to at least {lc.elite + 2}."
        )
    return OPTIMIZERS[lc.optimizer](num, lc, start)


def cache_key(a, decimals: int) -> tuple:
    """The rounded vector: the cache key, and the vector the fitness is evaluated at."""
    return tuple(np.round(np.asarray(a, np.float64), decimals).tolist())


@dataclasses.dataclass(frozen=True)
class Result:
    """What a search found. best / value: the best vector anywhere in the cache, baselines on the
    search's members included; search_best / search_value: the best vector the search's own
    generations evaluated (None before the first generation). Vectors [K] are the rounded
    ones the fitness was evaluated at."""

    best: np.ndarray | None
    value: float | None
    search_best: np.ndarray | None
    search_value: float | None


def result(cache: dict, history: list) -> Result:
    best = min(cache, key=cache.get) if cache else None
    found = min(history, key=lambda h: h["best"]) if history else None
    return Result(
        best=None if best is None else np.asarray(best),
        value=None if best is None else cache[best],
        search_best=None if found is None else np.asarray(found["best_coefficients"]),
        search_value=None if found is None else found["best"],
    )


def _replay(optimizer, cache: dict, history: list, lc):
    """Brings a fresh optimizer to len(history) finished generations with cached values only."""
    for entry in history:
        population = optimizer.ask()
        keys = [cache_key(a, lc.cache_decimals) for a in population]
        values = [cache.get(k) for k in keys]
        if None in values or list(keys[int(np.argmin(values))]) != entry["best_coefficients"]:
            raise ValueError(
                f"The saved search does not replay at generation {entry['generation']} (saved by "
                "another version of the search); start it afresh under another --config.lcsc.name."
            )
        optimizer.tell(population, values)


def run_search(num, lc, start, fitness, generations, cache, history, save=None) -> Result:
    """Runs the search over K = num members until `generations` generations are finished.

    start [K]: the optimizer's start vector (CMA-ES; see make_optimizer). fitness(a [K]) ->
    float. cache {rounded vector: value} and history (one dict per finished generation) are
    updated in place and are the whole resumable state: the finished generations are replayed
    from them, then save() is called after every new one.
    """
    optimizer = make_optimizer(num, lc, start)
    _replay(optimizer, cache, history, lc)
    while optimizer.generation < generations:
        began = time.time()
        population = optimizer.ask()  # [P, K]
        keys = [cache_key(a, lc.cache_decimals) for a in population]
        fresh = 0
        for key in keys:
            if key not in cache:
                cache[key] = float(fitness(np.asarray(key)))
                fresh += 1
        values = [cache[k] for k in keys]
        optimizer.tell(population, values)
        best = int(np.argmin(values))
        history.append(
            {
                "generation": optimizer.generation,
                "best": values[best],
                "median": float(np.median(values)),
                "worst": float(np.max(values)),
                "best_coefficients": list(keys[best]),
                "evaluations": fresh,
                "seconds": time.time() - began,
            }
        )
        if save is not None:
            save()
    return result(cache, history)
