"""sLCT minibatch OT coupling (docs/methods.md section 3), computed on the host ahead of the device.

The global batch is cut into consecutive groups of `method.ot_group_size` rows (128, the
per-GPU batch of the sLCT authors' scripts); each group gets its own unit-Gaussian noise,
paired with its data rows by an exact minimum-cost assignment on squared Euclidean distance
(scipy's linear_sum_assignment, O(G^3)). Groups are fixed by the batch, not by the devices, so
a run couples the same noise on 1 device or 64; the noise is a function of (seed, step, global
group index), so a resumed run sees the same coupled noise too. The pairing runs in a
background thread on batch k + 1, k + 2, ... while the device runs step k, so the step never
waits on it unless the assignment is slower than the step (see BENCHMARKS.md "OT coupling");
scipy releases the GIL, so the groups of one host are solved in parallel threads.
"""

import concurrent.futures

import numpy as np
from scipy.optimize import linear_sum_assignment

from cm import keys
from cm.data.prefetch import BackgroundIterator


def squared_distances(x: np.ndarray, z: np.ndarray) -> np.ndarray:
    """||x_i - z_j||^2 for every pair. x, z: [B, ...]. Returns float64 [B, B]."""
    xf = x.reshape(x.shape[0], -1).astype(np.float32)  # [B, d]
    zf = z.reshape(z.shape[0], -1).astype(np.float32)  # [B, d]
    cross = (xf @ zf.T).astype(np.float64)  # [B, B]
    x2 = np.sum(np.square(xf, dtype=np.float64), axis=1)  # [B]
    z2 = np.sum(np.square(zf, dtype=np.float64), axis=1)  # [B]
    return x2[:, None] + z2[None, :] - 2.0 * cross


def ot_permutation(x: np.ndarray, z: np.ndarray) -> np.ndarray:
    """The permutation p minimizing sum_i ||x_i - z_{p_i}||^2 (exact). Returns int [B]."""
    rows, cols = linear_sum_assignment(squared_distances(x, z))
    perm = np.empty_like(cols)
    perm[rows] = cols
    return perm


def group_noise(seed: int, step: int, group_index: int, shape) -> np.ndarray:
    """Unit-Gaussian noise of one OT group at one step; float32 [shape]."""
    rng = np.random.default_rng(keys.numpy_seed(seed, "ot_noise", step, group_index))
    return rng.standard_normal(shape, dtype=np.float32)


def check_groups(batch_size: int, group_size: int, process_count: int = 1) -> int:
    """The number of OT groups of each process's batch_size / process_count rows; raises one
    sentence when the groups do not tile them (a group never spans two processes)."""
    local = batch_size // max(process_count, 1)
    if group_size < 1 or batch_size % max(process_count, 1) or local % group_size:
        raise ValueError(
            f"method.ot_group_size={group_size} does not divide the {local} rows each of the "
            f"{process_count} process(es) reads of training.batch_size={batch_size}; set "
            "--config.method.ot_group_size to a divisor of it."
        )
    return local // group_size


def couple_batch(
    images: np.ndarray, step: int, seed: int, group_size: int, first_group: int, pool=None
) -> np.ndarray:
    """OT-coupled noise for this process's rows of one batch.

    images: [b, H, W, C], b a multiple of group_size; rows [k * group_size, (k+1) * group_size)
    form global group first_group + k. Returns float32 noise [b, H, W, C], row r paired
    with images[r].
    """
    groups = check_groups(images.shape[0], group_size)

    def one(k: int) -> np.ndarray:
        rows = images[k * group_size : (k + 1) * group_size]  # [G, H, W, C]
        z = group_noise(seed, step, first_group + k, rows.shape)  # [G, H, W, C]
        return z[ot_permutation(rows, z)]

    ks = range(groups)
    parts = list(pool.map(one, ks)) if pool is not None else [one(k) for k in ks]
    return np.concatenate(parts, axis=0)


class CoupledBatches(BackgroundIterator):
    """Wraps a batch iterator starting at `start_step`; adds batch['noise'] computed ahead.

    A thread pulls batch k + 1, k + 2, ... (up to `prefetch`) and couples them while the
    caller's device step k runs. Use as an iterator; `close()` stops the thread, then the
    wrapped iterator.
    """

    def __init__(
        self,
        batches,
        start_step: int,
        seed: int,
        group_size: int,
        first_group: int,
        prefetch: int = 2,
        threads: int = 0,
    ):
        self._batches = batches
        self._pool = concurrent.futures.ThreadPoolExecutor(threads) if threads > 1 else None

        def coupled():
            for step, batch in enumerate(batches, start=start_step):
                noise = couple_batch(
                    batch["image"], step, seed, group_size, first_group, self._pool
                )
                yield {**batch, "noise": noise}

        super().__init__(coupled(), prefetch)

    def close(self) -> None:
        """Stops the thread, then the wrapped iterator (still running, so the thread never
        waits on it forever)."""
        super().close()
        close = getattr(self._batches, "close", None)
        if close is not None:
            close()
        if self._pool is not None:
            self._pool.shutdown()


def wrap_if_enabled(
    batches, config, num_devices: int, start_step: int, process_index=0, process_count=1
):
    """`batches` with OT-coupled noise when config.method.ot_coupling, else unchanged.

    Each process reads rows [process_index * b, (process_index + 1) * b) of the global batch,
    b = batch_size / process_count (cm/data/sources.py), so its first group is process_index * b /
    G.
    num_devices only sizes the thread pool (one thread per local device, at most one per group);
    the coupled noise does not depend on it.
    """
    if not config.method.ot_coupling:
        return batches
    group_size = config.method.ot_group_size
    local_groups = check_groups(config.training.batch_size, group_size, process_count)
    return CoupledBatches(
        batches,
        start_step,
        config.seed,
        group_size,
        first_group=process_index * local_groups,
        prefetch=config.method.ot_prefetch,
        threads=min(max(num_devices // process_count, 1), local_groups),
    )
