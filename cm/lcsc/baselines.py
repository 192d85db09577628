"""The baselines LCSC is compared with, as coefficient vectors over snapshot members.

A candidate is (keys, coefficients): keys are (step, member) pairs of the snapshot stream
(snapshots.py), coefficients sum to 1. Uniform-last-k and EMA-at-a-rate vectors live on the
search's own members; EDM2's post-hoc EMA combines the tracked power-EMA members.
"""

import numpy as np

from cm import power_ema
from cm.lcsc import coefficients


def on_stream(lc, steps) -> dict:
    """{name: (family, coefficients [K])} over the search's members at `steps`."""
    num = len(steps)
    out = {
        f"uniform_last{k}": ("uniform_last_k", coefficients.uniform_last(num, k))
        for k in lc.uniform_last_k
    }
    for rate in lc.ema_rates:
        out[f"ema_rate{rate:g}"] = ("ema_rate", coefficients.ema_from_snapshots(steps, rate))
    return out


def posthoc(steps, tracked_stds, target_stds) -> dict:
    """{name: (keys, coefficients)}: EDM2 post-hoc reconstructions at the last step, one per
    target sigma_rel, from every tracked power-EMA member at every step."""
    if not tracked_stds:
        return {}
    keys = [(s, ("power_ema", j)) for s in steps for j in range(len(tracked_stds))]
    in_t = [k[0] for k in keys]
    gammas = [power_ema.std_to_gamma(tracked_stds[k[1][1]]) for k in keys]
    return {
        f"posthoc_std{std:g}": (
            keys,
            power_ema.posthoc_coefficients(in_t, gammas, steps[-1], power_ema.std_to_gamma(std)),
        )
        for std in target_stds
    }


def greedy_soup(evaluate, individual) -> np.ndarray:
    """Greedy soup (Wortsman et al. 2022) as a coefficient vector [K].

    individual [K]: fitness of each snapshot alone. Snapshots are tried best first; one joins
    the soup (a uniform average) when the soup's fitness does not get worse.
    evaluate(coefficients [K]) -> fitness.
    """
    num = len(individual)
    order = np.argsort(individual, kind="stable")
    members, best = [int(order[0])], float(individual[order[0]])

    def uniform(idx):
        a = np.zeros(num)
        a[idx] = 1.0 / len(idx)
        return a

    for i in order[1:]:
        value = evaluate(uniform(members + [int(i)]))
        if value <= best:
            members, best = members + [int(i)], value
    return uniform(members)
