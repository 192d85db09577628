"""A candidate: a named coefficient vector over snapshot members, the unit LCSC compares.

Members are (step, member) pairs of the snapshot stream (snapshots.py). The search's members
are every snapshot's lcsc.source member; the post-hoc EMA combines power-EMA members and the
final EMA / online parameters are one member each. Coefficients sum to 1, one per member.
"""

import dataclasses
import json

import numpy as np

SINGLE = "single"  # each snapshot alone
FINAL = "final"  # the last snapshot's EMA / online parameters (always held-out, never searched)
LCSC = "lcsc"  # what the search found


@dataclasses.dataclass(frozen=True)
class Candidate:
    name: str
    family: str  # the best of each baseline family on the search seeds is scored held-out
    members: tuple  # ((step, member), ...), member e.g. ("params",) or ("ema", 0)
    coefficients: tuple  # (a_1, ..., a_n) floats, one per member, sum 1

    def __post_init__(self):
        # Normalized so that equal candidates compare equal (arrays, lists, numpy scalars in).
        members = tuple((int(step), tuple(member)) for step, member in self.members)
        a = tuple(float(x) for x in np.asarray(self.coefficients, np.float64).reshape(-1))
        if len(a) != len(members):
            raise ValueError(f"Candidate {self.name}: {len(a)} coefficients for {len(members)}.")
        object.__setattr__(self, "members", members)
        object.__setattr__(self, "coefficients", a)

    @property
    def vector(self) -> np.ndarray:
        return np.asarray(self.coefficients, np.float64)  # [n]


def key(candidate: Candidate, decimals: int = 12) -> str:
    """What the parameters depend on, as a string: the members with nonzero rounded
    coefficients. Equal for the same combination under two names or member lists (a one-hot
    over the search's members and the same snapshot alone), so it is evaluated once."""
    terms = [
        [step, list(member), round(a, decimals)]
        for (step, member), a in zip(candidate.members, candidate.coefficients, strict=True)
        if round(a, decimals) != 0
    ]
    return json.dumps(terms)


def search_start(candidates, values: dict, members: tuple) -> np.ndarray:
    """[K] the start of the search: the best candidate (lowest values[name]) whose members ARE
    the search's members (not merely as many), or the uniform average when there is none."""
    same = [c for c in candidates if c.members == members and c.name in values]
    if not same:
        return np.full(len(members), 1.0 / len(members))
    return min(same, key=lambda c: values[c.name]).vector


def best_per_family(candidates, values: dict) -> list[Candidate]:
    """The first candidate with the lowest values[name] in each family, in family order."""
    best = {}
    for c in candidates:
        if c.family not in best or values[c.name] < values[best[c.family].name]:
            best[c.family] = c
    return list(best.values())
