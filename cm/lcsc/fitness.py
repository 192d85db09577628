"""Sample quality of a parameter tree on a fixed seed set: the search's fitness.

The sampler (jit of shard_map over all devices) and the metric's feature function are built
once; parameters are a traced argument of both, so every candidate reuses the same compiled
programs. Lower is better (FID, or the digits metric's Frechet distance on the demo).
"""

from cm import experiment, sampling
from cm.evaluation import evaluator as evaluator_lib


def metric_key(config) -> str:
    """lcsc.metric, or the default: digits_fd when the digits metric is on, fid otherwise."""
    if config.lcsc.metric:
        return config.lcsc.metric
    return "digits_fd" if "digits" in evaluator_lib.metric_names(config) else "fid"


class Fitness:
    """fitness(params, seed, num_samples) -> (metric value, every metric of the evaluator)."""

    def __init__(self, config, workdir: str, exp: experiment.Experiment):
        samplers = experiment.samplers(config, exp)
        name = config.lcsc.sampler
        if name not in samplers:
            raise ValueError(
                f"Unknown lcsc.sampler {name!r} for method {config.method.name!r}; valid: "
                f"{sorted(samplers)}."
            )
        fast = config.copy_and_resolve_references()
        fast.eval.pr_samples = 0  # precision / recall is not part of the fitness
        self.sampler = samplers[name]
        self.evaluator = evaluator_lib.Evaluator(fast, workdir, exp.mesh)
        self.key = metric_key(config)
        self.batch_size = config.sampling.batch_size

    def __call__(self, params, seed: int, num_samples: int):
        pics, labels = sampling.generate(self.sampler, params, seed, num_samples, self.batch_size)
        results = self.evaluator(pics, labels)
        if self.key not in results:
            raise ValueError(
                f"lcsc.metric {self.key!r} is not computed by eval.metrics; valid: "
                f"{sorted(results)}."
            )
        return float(results[self.key]), results
