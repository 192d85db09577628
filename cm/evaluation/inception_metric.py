"""Metric backend 'inception': FID, Inception Score and precision / recall of uint8 samples."""

import numpy as np
from absl import logging

from cm.evaluation import features, inception, metrics, reference_stats, resize


def inception_features(variables, images):
    """uint8 [B, H, W, C] -> {'pool' [B, 2048], 'logits_unbiased' [B, 1008]} (jit-able)."""
    x = resize.preprocess(images, inception.INPUT_SIZE)  # [B, 299, 299, 3]
    out = inception.FIDInceptionV3().apply(variables, x)
    return {"pool": out["pool"], "logits_unbiased": out["logits_unbiased"]}


def make_extractor(config, mesh, variables=None) -> features.ParallelExtractor:
    """The data-parallel Inception of eval.inception_path (or of the given variables)."""
    if variables is None:
        variables = inception.load_variables(config.eval.inception_path)
    return features.ParallelExtractor(inception_features, variables, mesh, config.eval.batch_size)


class InceptionMetric:
    """{'fid', 'is_mean', 'is_std', and with reference features 'precision', 'recall'}."""

    def __init__(self, config, workdir: str, mesh, variables=None):
        e = config.eval
        self.eps, self.splits, self.k = e.sqrtm_eps, e.is_splits, e.pr_k
        self.pr_samples = e.pr_samples
        self.extractor = make_extractor(config, mesh, variables)
        self.ref = reference_stats.load_or_compute(config, workdir, self.extractor)
        if self.pr_samples and len(self.ref.get("features", ())) <= self.k:
            logging.warning("The reference statistics hold no features: no precision / recall.")
            self.pr_samples = 0

    def reference(self) -> dict[str, float]:
        return {}

    def __call__(self, images, labels) -> dict[str, float]:
        del labels
        n = len(images)
        stats, logits, kept = None, [], []
        progress = features.progress_printer("inception")
        for batch in self.extractor.batches(features.array_reader(images), n, progress):
            stats = stats or metrics.RunningStats(batch["pool"].shape[1])
            stats.update(batch["pool"])
            logits.append(batch["logits_unbiased"])
            if sum(map(len, kept)) < self.pr_samples:
                kept.append(batch["pool"])
        ref_count = int(self.ref.get("count", np.iinfo(np.int64).max))  # TTUR files: none
        fid = metrics.frechet_distance(
            stats.mean,
            stats.cov,
            self.ref["mu"],
            self.ref["sigma"],
            self.eps,
            counts=(stats.count, ref_count),
        )
        is_mean, is_std = metrics.inception_score(np.concatenate(logits), self.splits)
        out = {"fid": fid, "is_mean": is_mean, "is_std": is_std}
        if self.pr_samples:
            fake = np.concatenate(kept)[: self.pr_samples]
            out["precision"], out["recall"] = metrics.precision_recall(
                self.ref["features"], fake, self.k
            )
        return out
