"""The tiny networks of the CPU checks, written once: config overrides (dotted paths -> values)
that shrink a config's network until it compiles and steps in seconds on a CPU.

- TINY_NETWORK: the tests' net on the demo config's 8 x 8 digits (tests/helpers.py,
  tests/test_quality_benchmark.py): 8 channels, one level of one block, 4 norm groups. One
  level: the compile time of the network dominates the suite, and a second level costs about
  40 % more of it; the tests of down- and upsampling build their own two-level networks.
- TINY_PAPER_NETWORK: the benchmarks' --quick net (benchmarks/device_check.py,
  benchmarks/precision_study.py): the same width, blocks and groups at ONE 8 x 8 level with
  attention, so that a paper config (32 or 64 px) keeps its family's switches (embedding,
  blocks, norm, labels, objective) but not its size; Heun samples in 2 steps instead of 18.
"""

import copy

TINY_NETWORK = {
    "model.channels": 8,
    "model.channel_mult": (1,),
    "model.num_blocks": 1,
    "model.num_groups": 4,
}
TINY_PAPER_NETWORK = {
    **TINY_NETWORK,
    "model.attn_resolutions": (8,),
    "data.image_size": 8,
    "sampling.heun_steps": 2,  # 3 evaluations: the Heun path, not its 35-evaluation compile
}


def with_overrides(config, overrides: dict):
    """A copy of `config` (a ConfigDict) with each dotted path of `overrides` set to its value."""
    config = copy.deepcopy(config)
    for dotted, value in overrides.items():
        *sections, field = dotted.split(".")
        node = config
        for section in sections:
            node = node[section]
        node[field] = value
    return config


def as_flags(overrides: dict) -> list[str]:
    """`overrides` as command-line flags of a config file: --config.<path>=<value>, a tuple
    written without spaces, e.g. --config.model.channel_mult=(1,2)."""
    return [f"--config.{dotted}={_literal(value)}" for dotted, value in overrides.items()]


def _literal(value) -> str:
    return repr(value).replace(" ", "") if isinstance(value, tuple) else str(value)
