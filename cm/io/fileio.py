"""The one file layer: every path `cm` reads or writes (workdir, datasets, weights, caches).

Paths go through etils.epath, which serves local paths and gs:// (and other object stores)
alike, so a workdir on a bucket behaves as one on local disk. Files that replace others are
written atomically:

- on local disk (and any file system with rename): write a temporary name beside the target,
  flush, then rename onto it, so a reader sees the old file or the new one, never a part;
- on an object store (gs://, s3://): one upload of the whole object under its final name. An
  object appears whole or not at all, while a "rename" there is a copy and a delete, so the
  temporary-name dance would add a window, not remove one.
"""

import io
import json
import os
import re
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
from etils import epath

PathLike = str | os.PathLike

# The name an atomic write gives its temporary file beside the target: .<name>.tmp-<8 hex>.
_TEMPORARY = re.compile(r"^\..+\.tmp-[0-9a-f]{8}$")


def path(p: PathLike) -> epath.Path:
    """An epath.Path with '~' expanded (local paths only; URLs are left as they are)."""
    p = epath.Path(p)
    return p if is_remote(p) else p.expanduser()


def is_remote(p: PathLike) -> bool:
    """True for object-store URLs (gs://, s3://, ...), where rename is not atomic."""
    return "://" in os.fspath(p)


def local_absolute(p: PathLike) -> epath.Path:
    """A local path made absolute against the working directory; URLs unchanged.

    Orbax and tensorstore need absolute local paths; a gs:// URL must not go through
    os.path.abspath, which would turn it into '<cwd>/gs:/bucket/...'.
    """
    p = path(p)
    return p if is_remote(p) else p.resolve()


def exists(p: PathLike) -> bool:
    return path(p).exists()


def is_file(p: PathLike) -> bool:
    return path(p).is_file()


def is_dir(p: PathLike) -> bool:
    return path(p).is_dir()


def makedirs(p: PathLike) -> epath.Path:
    """Creates the folder and its parents (a no-op on object stores, which have none)."""
    p = path(p)
    p.mkdir(parents=True, exist_ok=True)
    return p


def listdir(p: PathLike) -> list[str]:
    """Names in a folder, sorted; [] when it does not exist."""
    p = path(p)
    if not p.exists():
        return []
    return sorted(child.name for child in p.iterdir())


def walk_files(p: PathLike) -> list[str]:
    """Paths relative to `p` ('a/b.png') of every file under the folder, in the order of a
    top-down walk with sorted names: at each level the files first, then each subfolder.
    Local symlinked folders are followed. [] when the folder does not exist."""
    root = path(p)
    if not root.is_dir():
        return []
    if is_remote(root):  # the store's own walk (os.walk would see no folder there)
        walk = [(str(d.relative_to(root)), files) for d, _, files in root.walk()]
    else:
        walk = [(os.path.relpath(d, root), f) for d, _, f in os.walk(root, followlinks=True)]
    found = [name if d == "." else f"{d}/{name}" for d, files in walk for name in files]

    def order(relative: str):  # files sort before the subfolders beside them
        *folders, name = relative.split("/")
        return [(1, f) for f in folders] + [(0, name)]

    return sorted(found, key=order)


def remove(p: PathLike):
    """Deletes a file if it exists."""
    p = path(p)
    if p.exists():
        p.unlink()


def rmtree(p: PathLike):
    """Deletes a folder and everything under it if it exists."""
    p = path(p)
    if p.exists():
        p.rmtree()


def rename(src: PathLike, dst: PathLike):
    """Moves src onto dst (replacing it)."""
    path(src).replace(path(dst))


def move(src: PathLike, dst: PathLike):
    """Moves a file or a folder to a new name in an existing folder (dst must not exist); on an
    object store, a copy and a delete of each object."""
    path(src).rename(path(dst))


def read_bytes(p: PathLike) -> bytes:
    return path(p).read_bytes()


def read_text(p: PathLike) -> str:
    return path(p).read_text()


def read_json(p: PathLike) -> Any:
    return json.loads(read_text(p))


def write_bytes_atomic(p: PathLike, data: bytes):
    """Writes `data` so that a reader never sees a partial file (see the module docstring)."""
    p = path(p)
    if is_remote(p):
        p.write_bytes(data)
        return
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.parent / f".{p.name}.tmp-{uuid.uuid4().hex[:8]}"  # matches _TEMPORARY
    try:
        with open(tmp, "wb") as f:  # a local path: fsync makes the rename durable
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_temporaries(folder: PathLike) -> list[str]:
    """Removes the temporary files that atomic writes killed midway left in `folder` (not in
    its subfolders); returns their names. Only where no write is in flight (a lock held)."""
    names = [name for name in listdir(folder) if _TEMPORARY.match(name)]
    for name in names:
        remove(path(folder) / name)
    return names


def write_text_atomic(p: PathLike, text: str):
    write_bytes_atomic(p, text.encode())


def write_json_atomic(p: PathLike, value: Any):
    write_text_atomic(p, json.dumps(value, indent=2, default=str))


def write_new(p: PathLike, data: bytes) -> bool:
    """Writes `data` only if `p` does not exist yet; False (and nothing written) if it did."""
    if exists(p):
        return False
    write_bytes_atomic(p, data)
    return True


def save_npz_atomic(p: PathLike, **arrays: np.ndarray):
    """np.savez to any path, atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes_atomic(p, buffer.getvalue())


def load_npz(p: PathLike, keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """The arrays of an .npz from any path (pickled objects refused): all of them, or only
    `keys`, streamed from the file so that the other arrays are never read (KeyError if one is
    missing)."""
    if keys is None:
        with np.load(io.BytesIO(read_bytes(p)), allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    with open_file(p) as file, np.load(file, allow_pickle=False) as f:
        return {k: f[k] for k in keys}


def open_file(p: PathLike, mode: str = "rb"):
    """A file object on any path, for readers that stream (PIL, safetensors headers)."""
    return path(p).open(mode)
