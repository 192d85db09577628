"""The baselines LCSC is compared with, as candidates (candidates.py) over snapshot members.

Each snapshot alone, uniform-last-k and EMA-at-a-rate live on the search's own members; EDM2's
post-hoc EMA combines the tracked power-EMA members; the final EMA / online parameters are the
last snapshot's members; greedy soup needs fitness values and returns a vector.
"""

import numpy as np

from cm import power_ema
from cm.lcsc import coefficients
from cm.lcsc.candidates import FINAL, SINGLE, Candidate


def on_search_members(lc, members: tuple) -> list[Candidate]:
    """Each snapshot alone, uniform last k, EMA at each rate, over the search's members."""
    steps = [step for step, _ in members]
    num = len(steps)
    out = [Candidate(f"snapshot{s}", SINGLE, members, np.eye(num)[i]) for i, s in enumerate(steps)]
    for k in lc.uniform_last_k:
        out.append(
            Candidate(
                f"uniform_last{k}", "uniform_last_k", members, coefficients.uniform_last(num, k)
            )
        )
    for rate in lc.ema_rates:
        a = coefficients.ema_from_snapshots(steps, rate)
        out.append(Candidate(f"ema_rate{rate:g}", "ema_rate", members, a))
    return out


def posthoc(steps, tracked_stds, target_stds) -> list[Candidate]:
    """EDM2 post-hoc reconstructions at the last step, one per target sigma_rel, from every
    tracked power-EMA member at every step ([] when the run tracked none)."""
    if not tracked_stds:
        return []
    members = tuple((s, ("power_ema", j)) for s in steps for j in range(len(tracked_stds)))
    in_t = [step for step, _ in members]
    gammas = [power_ema.std_to_gamma(tracked_stds[m[1]]) for _, m in members]
    return [
        Candidate(
            f"posthoc_std{std:g}",
            "posthoc",
            members,
            power_ema.posthoc_coefficients(in_t, gammas, steps[-1], power_ema.std_to_gamma(std)),
        )
        for std in target_stds
    ]


def finals(last: int, num_ema: int) -> list[Candidate]:
    """The last snapshot's online parameters and (when tracked) first EMA, alone."""
    out = [Candidate(f"final_online{last}", FINAL, ((last, ("params",)),), (1.0,))]
    if num_ema:
        out.append(Candidate(f"final_ema{last}", FINAL, ((last, ("ema", 0)),), (1.0,)))
    return out


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
