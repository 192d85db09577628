"""Data-parallel feature extraction: one compiled program, fixed batch, all devices.

A feature network is applied to uint8 images in global batches of a fixed size sharded over
the 'data' mesh axis; the last batch is padded (with copies of a real image) so that nothing
recompiles, and the padding rows are dropped on the host. With several processes each one
reads only its own rows of every batch; the features come back to every process.
"""

import functools
import math
from collections.abc import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cm.io import progress


def global_batch_size(requested: int, num_devices: int) -> int:
    """`requested` rounded up to a multiple of the device count."""
    return max(1, math.ceil(requested / num_devices)) * num_devices


class ParallelExtractor:
    """apply_fn(variables, uint8 [b, H, W, C]) -> {name: [b, ...]}, run over all devices.

    `batches(read, num_images, progress)` / `extract(...)`: read(indices int64 [n]) returns the
    uint8 images [n, H, W, C] at those indices; features come back as float32 numpy arrays.
    """

    def __init__(self, apply_fn: Callable, variables, mesh, batch_size: int):
        self.mesh = mesh
        self.batch_size = global_batch_size(batch_size, mesh.size)
        self._sharded = NamedSharding(mesh, P("data"))
        self.variables = jax.device_put(variables, NamedSharding(mesh, P()))
        self._apply = _parallel(apply_fn, mesh)

    def _local_rows(self) -> slice:
        """The rows of a global batch that this process's devices hold (one contiguous block)."""
        blocks = self._sharded.addressable_devices_indices_map((self.batch_size,)).values()
        starts = [s[0].indices(self.batch_size)[0] for s in blocks]
        stops = [s[0].indices(self.batch_size)[1] for s in blocks]
        return slice(min(starts), max(stops))

    def batches(self, read: Callable, num_images: int, progress=None):
        """Yields {name: float32 [b, ...]} batch by batch, padding rows dropped."""
        if num_images < 1:
            raise ValueError("feature extraction needs at least one image.")
        b, rows = self.batch_size, self._local_rows()
        for start in range(0, num_images, b):
            indices = np.arange(start, start + b)
            valid = int(np.sum(indices < num_images))
            indices = np.minimum(indices, num_images - 1)  # padding repeats the last image
            local = np.asarray(read(indices[rows]))  # uint8 [b / processes, H, W, C]
            x = jax.make_array_from_process_local_data(self._sharded, local, (b, *local.shape[1:]))
            out = multihost_utils.process_allgather(self._apply(self.variables, x), tiled=True)
            yield jax.tree.map(lambda a, v=valid: np.asarray(a[:v], np.float32), out)
            if progress is not None:
                progress(start + valid, num_images)

    def extract(self, read: Callable, num_images: int, progress=None) -> dict[str, np.ndarray]:
        """{name: float32 [num_images, ...]} of all images at once."""
        parts = list(self.batches(read, num_images, progress))
        return jax.tree.map(lambda *a: np.concatenate(a), *parts)


@functools.cache
def _parallel(apply_fn: Callable, mesh):
    """One jitted program per (function, mesh), shared by every extractor in the process, so
    that reference statistics, evaluation and periodic evaluation compile it once."""
    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    return jax.jit(apply_fn, in_shardings=(replicated, sharded), out_shardings=sharded)


def array_reader(images: np.ndarray) -> Callable:
    """read(indices) for images already in memory [N, H, W, C]."""
    return functools.partial(np.take, images, axis=0)


def progress_printer(label: str) -> Callable | None:
    """report(done, total) on process 0, a bar on a terminal and a line every ~10 % in a log
    file (cm/io/progress.py); None elsewhere."""
    if jax.process_index() != 0:
        return None
    return progress.reporter(label, "images")
