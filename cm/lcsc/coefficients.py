"""Coefficient vectors over K snapshots at steps s_1 < ... < s_K (index K-1 = newest).

Every vector sums to 1 (docs/methods.md section 4: theta = sum_i a_i theta_i, sum a_i = 1, signs
free). EMA is the special case a_i proportional to beta^(K - i) at the snapshot spacing.
"""

import numpy as np


def project_sum_one(a: np.ndarray) -> np.ndarray:
    """Euclidean projection onto {sum a = 1}: a + (1 - sum a) / K (works for any signs, unlike
    dividing by the sum, which explodes when the sum is near 0). a: [..., K]."""
    a = np.asarray(a, np.float64)
    return a + (1.0 - a.sum(-1, keepdims=True)) / a.shape[-1]


def ema_shaped(num: int, beta: float) -> np.ndarray:
    """a_i proportional to beta^(K - 1 - i): an EMA with rate beta per snapshot. [K]"""
    a = np.float64(beta) ** np.arange(num - 1, -1, -1, dtype=np.float64)
    return a / a.sum()


def uniform_last(num: int, k: int) -> np.ndarray:
    """Uniform average of the newest k of num snapshots (all of them when k >= num). [K]"""
    k = min(k, num)
    a = np.zeros(num)
    a[num - k :] = 1.0 / k
    return a


def ema_from_snapshots(steps, rate: float) -> np.ndarray:
    """Weights [K] that approximate a per-step EMA with `rate` at step s_K from snapshots.

    The exact EMA at T = s_K over online parameters theta_tau is
    r^(T - s_1) EMA_{s_1} + sum_{tau = s_1 + 1}^{T} (1 - r) r^(T - tau) theta_tau. Each block of
    steps (s_{i-1}, s_i] is represented by its last snapshot theta_{s_i}, with the block's
    total weight r^(T - s_i) - r^(T - s_{i-1}); the weight of everything up to s_1,
    r^(T - s_1), goes to the first snapshot. The weights sum to 1 exactly.
    """
    s = np.asarray(steps, np.float64)
    r = np.float64(rate)
    upper = r ** (s[-1] - s)  # r^(T - s_i)
    a = upper.copy()
    a[1:] -= upper[:-1]
    return a
