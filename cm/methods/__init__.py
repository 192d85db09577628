"""The method wing: one module per method (formulas, objective, checks, table entry) and the
one table that dispatches on config.method.name (table.py); spec.py says what an entry holds."""

from cm.methods.table import (
    METHODS,
    SAMPLER_KINDS,
    check,
    get,
    make_objective,
    make_sampler,
    objective,
    sampler_kinds,
    sampler_specs,
)

__all__ = [
    "METHODS",
    "SAMPLER_KINDS",
    "check",
    "get",
    "make_objective",
    "make_sampler",
    "objective",
    "sampler_kinds",
    "sampler_specs",
]
