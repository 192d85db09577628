"""The batch at a training step: a pure function of (seed, step) over a random-access source.

The examples form an endless stream of per-epoch permutations (`global_batch_indices`), so
resuming a run needs no saved iterator: the data state IS the step. Each of the P processes
takes its contiguous B/P rows of that global batch, and the flip decisions depend on the
global row, so the global batch does not depend on how many processes read it.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np

from cm import keys
from cm.data.prefetch import BackgroundIterator
from cm.data.sources import Source


@functools.lru_cache(maxsize=4)
def _epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    rng = np.random.default_rng(keys.numpy_seed(seed, "epoch_permutation", epoch))
    perm = rng.permutation(num_examples)  # int64 [N]
    perm.flags.writeable = False  # shared through the cache
    return perm


def global_batch_indices(step: int, global_batch: int, num_examples: int, seed: int) -> np.ndarray:
    """Example indices int64 [global_batch] of the batch at `step`: a pure function of its inputs.

    The examples form an endless stream of per-epoch permutations; the batch at `step` is
    positions [step*B, (step+1)*B) of it, and may straddle an epoch boundary.
    """
    start, stop = step * global_batch, (step + 1) * global_batch
    parts = []
    for epoch in range(start // num_examples, (stop - 1) // num_examples + 1):
        lo = max(start - epoch * num_examples, 0)
        hi = min(stop - epoch * num_examples, num_examples)
        parts.append(_epoch_permutation(seed, epoch, num_examples)[lo:hi])
    return np.concatenate(parts).astype(np.int64)


def batch_at(
    source: Source,
    step: int,
    global_batch: int,
    seed: int,
    random_flip: bool,
    process_index: int = 0,
    process_count: int = 1,
) -> dict[str, np.ndarray]:
    """This process's rows of the global batch at `step`: image float32 [b,H,W,C] (uint8 data
    scaled to [-1, 1], latents as stored) and label int32 [b], b = global_batch / process_count,
    rows [p*b, (p+1)*b) of the global batch."""
    if global_batch % process_count:
        raise ValueError(
            f"training.batch_size={global_batch} must be divisible by the number of processes, "
            f"{process_count}."
        )
    b = global_batch // process_count
    rows = slice(process_index * b, (process_index + 1) * b)
    indices = global_batch_indices(step, global_batch, len(source), seed)[rows]  # [b]
    images, labels = source.get(indices)  # uint8 [b,H,W,C], int32 [b]
    if random_flip:
        # One draw per global row, so the decisions do not depend on the process count.
        flip = np.random.default_rng(keys.numpy_seed(seed, "flip", step)).random(global_batch) < 0.5
        images = np.where(flip[rows, None, None, None], images[:, :, ::-1], images)
    if images.dtype == np.uint8:
        image = images.astype(np.float32) / 127.5 - 1.0  # [b,H,W,C] in [-1, 1]
    else:
        image = images.astype(np.float32)  # latents, already standardized
    return {"image": image, "label": labels.astype(np.int32)}


class BatchIterator(BackgroundIterator):
    """`batch_at(step)` for step = start_step, start_step + 1, ..., computed ahead in a thread.

    `step` is the step of the batch the next `__next__` returns, so a checkpoint of the train
    step is all that is needed to restart the same stream.
    """

    def __init__(
        self,
        source: Source,
        start_step: int,
        global_batch: int,
        seed: int,
        random_flip: bool,
        process_index: int = 0,
        process_count: int = 1,
        prefetch: int = 2,
    ):
        self.step = start_step
        make = functools.partial(
            batch_at,
            source,
            global_batch=global_batch,
            seed=seed,
            random_flip=random_flip,
            process_index=process_index,
            process_count=process_count,
        )
        super().__init__((make(step) for step in itertools.count(start_step)), prefetch)

    def __next__(self) -> dict[str, np.ndarray]:
        item = super().__next__()
        self.step += 1
        return item
