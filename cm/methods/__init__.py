"""The method wing: one module per method (formulas, objective, checks, config defaults and its
table entry) and the one table that dispatches on config.method.name (table.py); spec.py says
what an entry holds."""

from cm.methods.table import (
    METHODS,
    augmenting,
    defaults,
    get,
    make_objective,
    network_distance_carriers,
    objective,
    sampler_specs,
)

__all__ = [
    "METHODS",
    "augmenting",
    "defaults",
    "get",
    "make_objective",
    "network_distance_carriers",
    "objective",
    "sampler_specs",
]
