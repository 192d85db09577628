"""Which metrics a run reports (eval.metrics), built once and applied to batches of samples.

A metric backend is a class (config, workdir, mesh) with `reference()` -> {name: value} for
real data (floors; may be empty) and `__call__(images uint8 [N, H, W, C], labels [N])` ->
{name: value}. This dict is the one place a metric name selects an implementation.
"""

from cm.evaluation.digits_metric import DigitsMetric
from cm.evaluation.inception_metric import InceptionMetric

METRICS = {"inception": InceptionMetric, "digits": DigitsMetric}


def metric_names(config) -> list[str]:
    """eval.metrics as a list; '' means 'digits' on the digits data and 'inception' otherwise."""
    names = [m.strip() for m in config.eval.metrics.split(",") if m.strip()]
    if not names:
        names = ["digits"] if config.data.name == "digits" else ["inception"]
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise ValueError(
            f"Unknown eval.metrics {unknown}; valid: {sorted(METRICS)} (comma-separated)."
        )
    return names


class Evaluator:
    def __init__(self, config, workdir: str, mesh):
        self.backends = [METRICS[name](config, workdir, mesh) for name in metric_names(config)]

    def reference(self) -> dict[str, float]:
        return {k: v for b in self.backends for k, v in b.reference().items()}

    def __call__(self, images, labels) -> dict[str, float]:
        return {k: v for b in self.backends for k, v in b(images, labels).items()}
