"""Sample-quality statistics on feature vectors: FID, Inception Score, precision / recall.

Everything here is numpy on the host, in float64 where it accumulates, so that a 50k-sample
FID does not depend on the batch size or the accelerator's matmul precision.
"""

import warnings

import numpy as np
import scipy.linalg


class RunningStats:
    """Mean and covariance (N - 1) of feature rows seen batch by batch, in float64.

    Batches are merged with Chan et al.'s pairwise update (count, mean, centered sum of
    squares), which stays accurate where sum(x x^T) - N mu mu^T would cancel.
    """

    def __init__(self, dim: int):
        self.count = 0
        self._mean = np.zeros(dim, np.float64)  # [D]
        self._m2 = np.zeros((dim, dim), np.float64)  # [D, D] centered sum of outer products

    def update(self, x) -> None:
        """Adds the rows of x [n, D]."""
        x = np.asarray(x, np.float64)
        n = len(x)
        if not n:
            return
        mean_b = x.mean(axis=0)
        centered = x - mean_b
        m2_b = centered.T @ centered
        total = self.count + n
        delta = mean_b - self._mean
        self._mean += delta * (n / total)
        self._m2 += m2_b + np.outer(delta, delta) * (self.count * n / total)
        self.count = total

    @property
    def mean(self) -> np.ndarray:
        return self._mean.copy()

    @property
    def cov(self) -> np.ndarray:
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 samples, got {self.count}.")
        return self._m2 / (self.count - 1)


def _sqrtm_or_none(a):
    """scipy.linalg.sqrtm(a), or None if a is singular (sqrtm warns) or the root not finite."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", scipy.linalg.LinAlgWarning)
        try:
            root = scipy.linalg.sqrtm(a)
        except scipy.linalg.LinAlgWarning:  # "Matrix is singular"
            return None
    return root if np.all(np.isfinite(root)) else None


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6, counts=None) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 sqrtm(S1 S2)) of two Gaussians.

    If S1 S2 is singular (sqrtm warns or is not finite), eps * I is added to both covariances.
    counts: the sample sizes behind S1 and S2, if known; a covariance of n <= D samples has
    rank < D, so the offset is then added at once, saving a failed sqrtm (seconds at D = 2048).
    Small imaginary parts of sqrtm, rounding noise of a product of two symmetric matrices, are
    dropped.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)  # [D]
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)  # [D, D]
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError(f"statistics of different sizes: {mu1.shape} vs {mu2.shape}.")
    singular = counts is not None and min(counts) <= len(s1)
    covmean = None if singular else _sqrtm_or_none(s1 @ s2)
    if covmean is None:
        offset = eps * np.eye(len(s1))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
            covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean.real))


def _log_softmax(logits):
    z = logits - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def inception_score(logits, splits: int = 10) -> tuple[float, float]:
    """(mean, std) over `splits` consecutive chunks of exp(E_x KL(p(y|x) || p(y))).

    logits [N, K] float: all K classes enter the softmax (1008 for the FID Inception, as in the
    original TF code and torch-fidelity, which also leave out the classifier bias).
    """
    log_p = _log_softmax(np.asarray(logits, np.float64))  # [N, K]
    p = np.exp(log_p)
    n = len(p)
    if n < splits:
        raise ValueError(f"the Inception Score needs at least {splits} samples, got {n}.")
    scores = []
    for i in range(splits):
        chunk = slice(i * n // splits, (i + 1) * n // splits)
        log_marginal = np.log(p[chunk].mean(axis=0))  # [K]
        kl = (p[chunk] * (log_p[chunk] - log_marginal)).sum(axis=1)  # [n / splits]
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def _squared_distances(a, b):
    """[n, m] squared Euclidean distances of the rows of a [n, D] and b [m, D], float64."""
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d2, 0.0)


def _knn_radii(x, k: int, chunk: int):
    """Squared distance from each row of x [n, D] to its k-th nearest other row: [n]."""
    if len(x) <= k:
        raise ValueError(f"k-NN radii with k = {k} need more than {k} samples, got {len(x)}.")
    radii = []
    for start in range(0, len(x), chunk):
        d2 = _squared_distances(x[start : start + chunk], x)
        # Index 0 of each sorted row is the point itself (distance 0).
        radii.append(np.partition(d2, k, axis=1)[:, k])
    return np.concatenate(radii)


def _coverage(manifold, radii, queries, chunk: int) -> float:
    """Fraction of query rows within radii[j] of some manifold row j."""
    inside = []
    for start in range(0, len(queries), chunk):
        d2 = _squared_distances(queries[start : start + chunk], manifold)  # [c, M]
        inside.append(np.any(d2 <= radii[None, :], axis=1))
    return float(np.mean(np.concatenate(inside)))


def precision_recall(real, fake, k: int = 3, chunk: int = 1024) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) of feature rows [N, D].

    Each set's manifold is the union of balls around its points with radius the distance to
    the k-th nearest neighbour; precision = share of fake points inside the real manifold,
    recall = share of real points inside the fake manifold.
    """
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    precision = _coverage(real, _knn_radii(real, k, chunk), fake, chunk)
    recall = _coverage(fake, _knn_radii(fake, k, chunk), real, chunk)
    return precision, recall
