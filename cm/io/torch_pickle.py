"""Reads a PyTorch state dict file (.pth) into numpy arrays, without importing torch.

torch.save writes one of two layouts, and the FID Inception file may be either:
  zip     (torch >= 1.6) a zip archive: <root>/data.pkl pickles the object, each tensor
          storage is the raw little-endian file <root>/data/<key>.
  legacy  (older torch) a stream of pickles: magic number, protocol version, system info, the
          object, the sorted list of storage keys; then, per key, an int64 element count and
          the raw bytes.
In both the object pickle names its storages by persistent id ('storage', storage class, key,
location, numel) and rebuilds tensors with torch._utils._rebuild_tensor_v2(storage, offset,
size, stride, ...). The unpickler below resolves only those names (and OrderedDict), and the
legacy header pickles are read by one that resolves no name at all, so reading a file cannot
run arbitrary code, and torch stays a test-only dependency. The caller reads the file's bytes
(through cm/io/fileio.py, so any path works); nothing here touches the file system.
"""

import collections
import io
import pickle
import zipfile

import numpy as np

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # first pickle of a legacy torch.save file


class _StorageType:
    """Stands for a torch.<X>Storage class named in the pickle: carries its numpy dtype."""

    def __init__(self, name: str):
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


def _rebuild_tensor(storage, offset, size, stride, *unused):
    """torch._utils._rebuild_tensor_v2 for numpy: a strided view of the storage.

    A view, not a copy: a legacy file's storages are filled only after the object is read.
    """
    del unused  # requires_grad, backward hooks, metadata
    item = storage.itemsize
    return np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * item for s in stride)
    )


def _rebuild_parameter(data, *unused):
    """torch._utils._rebuild_parameter(_with_state): the parameter's data (an array)."""
    del unused  # requires_grad, backward hooks, Python state
    return data


# The torch functions a pickled tensor names, mapped to their numpy rebuilders: torch.save'd
# state dicts and plain pickles (cm/edm_import/reader.py) rebuild tensors with the same ones.
TENSOR_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}
_GLOBALS = {("collections", "OrderedDict"): collections.OrderedDict, **TENSOR_GLOBALS}


class _Unpickler(pickle.Unpickler):
    """Resolves only the names a state dict uses; storages come from `load_storage(key, ...)`."""

    def __init__(self, file, load_storage):
        super().__init__(file)
        self._load_storage = load_storage
        self._storages = {}

    def find_class(self, module, name):
        if (module, name) in _GLOBALS:
            return _GLOBALS[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(
            f"{module}.{name} is not part of a tensor state dict; refusing to load it."
        )

    def persistent_load(self, pid):
        kind, storage_type, key, _location, numel, *view = pid
        if kind != "storage" or (view and view[0] is not None):
            raise pickle.UnpicklingError(f"Unsupported storage reference {pid!r}.")
        if key not in self._storages:
            self._storages[key] = self._load_storage(str(key), storage_type.dtype, numel)
        return self._storages[key]


def _read_zip(data: bytes) -> dict:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pickles:
            raise ValueError("zip file without data.pkl: not a torch.save file.")
        root = pickles[0][: -len("data.pkl")]

        def load_storage(key, dtype, numel):
            raw = archive.read(f"{root}data/{key}")
            return np.frombuffer(raw, dtype.newbyteorder("<"), count=numel)

        with archive.open(pickles[0]) as f:
            return _Unpickler(f, load_storage).load()


class _PlainUnpickler(pickle.Unpickler):
    """For the legacy header pickles, which hold only ints, strings, lists and dicts."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(
            f"{module}.{name} in the header of a legacy torch.save file; refusing to load it."
        )


def _read_legacy(data: bytes) -> dict:
    f = io.BytesIO(data)
    plain = _PlainUnpickler
    if plain(f).load() != _LEGACY_MAGIC:
        raise ValueError("not a torch.save file (neither zip nor legacy magic number).")
    plain(f).load()  # protocol version
    plain(f).load()  # system info
    pending = {}

    def load_storage(key, dtype, numel):
        pending[key] = np.empty(numel, dtype)  # filled in below, once the offsets are known
        return pending[key]

    obj = _Unpickler(f, load_storage).load()
    for key in plain(f).load():  # the storages follow in this order
        count = int(np.frombuffer(f.read(8), "<i8")[0])
        out = pending[str(key)]
        out[...] = np.frombuffer(f.read(count * out.itemsize), out.dtype.newbyteorder("<"))
    return obj


def storage_from_bytes(data: bytes) -> np.ndarray:
    """torch.storage._load_from_bytes for numpy: a plain pickle (not torch.save) stores each
    tensor's storage as the bytes of a legacy torch.save of that storage alone; returns its
    elements as a 1-D array."""
    storage = _read_legacy(bytes(data))
    if not isinstance(storage, np.ndarray) or storage.ndim != 1:
        raise pickle.UnpicklingError("storage bytes that do not hold one tensor storage")
    return storage


def read_state_dict(data: bytes) -> dict[str, np.ndarray]:
    """{name: array} from the bytes of a torch.save'd state dict (zip or legacy layout)."""
    obj = _read_zip(data) if zipfile.is_zipfile(io.BytesIO(data)) else _read_legacy(data)
    if not isinstance(obj, dict):
        raise ValueError(f"the file holds a {type(obj).__name__}, not a state dict.")
    return {k: np.array(v) for k, v in obj.items() if isinstance(v, np.ndarray)}  # copies
