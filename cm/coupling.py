"""sLCT minibatch OT coupling (PAPERS.md section 3), computed on the host ahead of the device.

Each device shard of a batch gets its own unit-Gaussian noise, paired with its data rows by an
exact minimum-cost assignment on squared Euclidean distance (scipy's linear_sum_assignment,
O(B^3)). The pairing runs in a background thread on batch k + 1, k + 2, ... while the device
runs step k, so the step never waits on it unless the assignment is slower than the step (see
BENCHMARKS.md "OT coupling"); scipy releases the GIL, so the shards of one host are solved in
parallel threads. The noise is a function of (seed, step, global shard index), so a resumed run
sees the same coupled noise.
"""

import concurrent.futures

import numpy as np
from scipy.optimize import linear_sum_assignment

from cm.prefetch import BackgroundIterator

# Mixed into the noise seed so that it never collides with other numpy streams of the run.
_NOISE_STREAM = 0x07C0


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


def shard_noise(seed: int, step: int, shard_index: int, shape) -> np.ndarray:
    """Unit-Gaussian noise of one device shard at one step; float32 [shape]."""
    rng = np.random.default_rng([seed, step, shard_index, _NOISE_STREAM])
    return rng.standard_normal(shape, dtype=np.float32)


def couple_batch(
    images: np.ndarray, step: int, seed: int, shard_size: int, first_shard: int, pool=None
) -> np.ndarray:
    """OT-coupled noise for this process's rows of one batch.

    images: [b, H, W, C], b a multiple of shard_size; rows [k * shard_size, (k+1) * shard_size)
    land on global shard first_shard + k. Returns float32 noise [b, H, W, C], row r paired
    with images[r].
    """
    b = images.shape[0]
    if b % shard_size:
        raise ValueError(
            f"The {b} local rows do not split into device shards of {shard_size}; set "
            "--config.training.batch_size to a multiple of the device count."
        )

    def one(k: int) -> np.ndarray:
        rows = images[k * shard_size : (k + 1) * shard_size]
        z = shard_noise(seed, step, first_shard + k, rows.shape)
        return z[ot_permutation(rows, z)]

    shards = range(b // shard_size)
    parts = list(pool.map(one, shards)) if pool is not None else [one(k) for k in shards]
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
        shard_size: int,
        first_shard: int,
        prefetch: int = 2,
        threads: int = 0,
    ):
        self._batches = batches
        self._pool = concurrent.futures.ThreadPoolExecutor(threads) if threads > 1 else None

        def coupled():
            for step, batch in enumerate(batches, start=start_step):
                noise = couple_batch(
                    batch["image"], step, seed, shard_size, first_shard, self._pool
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

    Shards follow the 'data' mesh axis: each of the num_devices devices gets batch_size /
    num_devices consecutive rows, and this process's rows start at shard
    process_index * (its shard count), as jax.devices() orders devices by process.
    """
    if not config.method.ot_coupling:
        return batches
    shard_size = config.training.batch_size // num_devices
    local_shards = num_devices // process_count
    return CoupledBatches(
        batches,
        start_step,
        config.seed,
        shard_size,
        first_shard=process_index * local_shards,
        prefetch=config.method.ot_prefetch,
        threads=local_shards,
    )
