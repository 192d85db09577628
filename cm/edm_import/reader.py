"""Reads an NVlabs/edm network pickle (.pkl) without running anything from the file.

EDM's snapshots are plain Python pickles of a dict ('ema', 'loss_fn', 'augment_pipe',
'dataset_kwargs'). Its networks are `torch_utils.persistence` classes: each pickles as a call
of `torch_utils.persistence._reconstruct_persistent_obj(meta)`, where meta holds the source code
of the class's module (`module_src`), the class name and the object's state (for a torch
module its __dict__: `_parameters`, `_buffers`, `_modules`, plain attributes, `_init_kwargs`).
EDM's loader executes module_src; this reader never does. Its unpickler resolves only the
names listed in GLOBALS, each mapped to a function of ours:

  the persistence hook -> PersistentObject(class_name, source digest, state); the source
                          text is only hashed;
  tensors              -> numpy arrays (cm/io/torch_pickle.py: torch's rebuild
                          functions, and each storage's bytes, a legacy torch.save of it);
  torch's ModuleDict   -> a TorchModule node holding its state;
  numpy scalars, OrderedDict, set, dnnlib's EasyDict (as a dict).

Any other name stops the read with one sentence (UnknownNameError) before anything it names
is called. `flatten` then turns the module tree into torch's state-dict names
({"model.enc.32x32_conv.weight": array, ...}) and per-module class names and attributes.
"""

import collections
import dataclasses
import hashlib
import pickle
from typing import Any

import numpy as np

from cm.io import torch_pickle

PERSISTENCE_VERSION = 6  # the meta layout of torch_utils.persistence that EDM's pickles use
PLAIN_TYPES = (bool, int, float, str, type(None))


@dataclasses.dataclass
class PersistentObject:
    """A torch_utils.persistence object, rebuilt as data: its class name, the sha256 of the
    module source the file carries (never executed) and its pickled state."""

    class_name: str
    source_sha256: str
    state: dict


class TorchModule:
    """A plain torch container (torch.nn.ModuleDict) from the file: only its state."""

    class_name = "ModuleDict"

    def __setstate__(self, state):
        self.state = state


class EasyDict(dict):
    """dnnlib.util.EasyDict, read as a plain dict (no attribute access is needed)."""


def _reconstruct_persistent_obj(meta):
    """The persistence hook, as data: checks the meta layout, hashes module_src, keeps state."""
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise pickle.UnpicklingError("a persistent object whose meta is not of type 'class'")
    if meta.get("version") != PERSISTENCE_VERSION:
        raise pickle.UnpicklingError(
            f"persistence version {meta.get('version')!r}, not {PERSISTENCE_VERSION}"
        )
    source, name, state = meta.get("module_src"), meta.get("class_name"), meta.get("state")
    if not isinstance(source, str) or not isinstance(name, str) or not isinstance(state, dict):
        raise pickle.UnpicklingError("a persistent object without source, class name or state")
    digest = hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()
    return PersistentObject(name, digest, state)


# numpy dtypes a pickled numpy scalar may have (kind + size codes of numeric types).
NUMPY_SCALAR_DTYPES = ("b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8")


class _ScalarDtype:
    """numpy.dtype(name, align, copy) as numpy pickles it, then its state (byte order)."""

    def __init__(self, name, align=False, copy=False):
        del align, copy
        if name not in NUMPY_SCALAR_DTYPES:
            raise pickle.UnpicklingError(f"numpy dtype {name!r} is not a numeric scalar type")
        self.dtype = np.dtype(name)

    def __setstate__(self, state):
        order = state[1] if isinstance(state, tuple) and len(state) > 1 else "|"
        if order in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(order)


def _numpy_scalar(dtype, data):
    """numpy.core.multiarray.scalar(dtype, bytes) -> a Python number."""
    if not isinstance(dtype, _ScalarDtype):
        raise pickle.UnpicklingError("a numpy scalar of a non-numeric type")
    raw = data.encode("latin1") if isinstance(data, str) else bytes(data)
    return np.frombuffer(raw, dtype.dtype, count=1)[0].item()


GLOBALS = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("torch.storage", "_load_from_bytes"): torch_pickle.storage_from_bytes,
    **torch_pickle.TENSOR_GLOBALS,
    ("torch.nn.modules.container", "ModuleDict"): TorchModule,
    ("collections", "OrderedDict"): collections.OrderedDict,
    # Protocol 3 (Python < 3.8) spells sets this way; protocol 4, which EDM's Python 3.8+
    # wrote, has set opcodes. Protocols 0-2 (Python 2 names, bytes via _codecs) are refused.
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("numpy", "dtype"): _ScalarDtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,  # pickles written by numpy 1.x
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,  # numpy 2.x
}


class UnknownNameError(pickle.UnpicklingError):
    """The file names a global outside GLOBALS."""

    def __init__(self, module: str, name: str):
        super().__init__(f"{module}.{name}")
        self.qualified = f"{module}.{name}"


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in GLOBALS:
            raise UnknownNameError(module, name)
        return GLOBALS[(module, name)]

    def persistent_load(self, pid):
        raise pickle.UnpicklingError(f"a persistent id {pid!r} (EDM's pickles have none)")


def load(file, source: str) -> Any:
    """The object pickled in `file` (a binary file object), rebuilt from data only.

    source: the file's name, for the one-sentence ValueError when the file is not a pickle
    this reader may load.
    """
    try:
        return _Unpickler(file).load()
    except UnknownNameError as e:
        raise ValueError(
            f"{source} names {e.qualified}, which an NVlabs/edm network pickle does not "
            "contain; nothing in it was run: pass an EDM .pkl such as "
            "edm-cifar10-32x32-uncond-vp.pkl."
        ) from None
    except Exception as e:  # noqa: BLE001 - any parse failure: not a pickle we can read
        cause = (str(e).strip().splitlines() or [type(e).__name__])[0].rstrip(".")
        raise ValueError(
            f"{source} is not a readable EDM network pickle ({cause}); pass an NVlabs/edm "
            ".pkl such as edm-cifar10-32x32-uncond-vp.pkl."
        ) from None


@dataclasses.dataclass(frozen=True)
class ModuleInfo:
    """One module of the tree: its class and its plain attributes (sizes, flags, eps, ...)."""

    class_name: str
    attrs: dict


def is_module(node) -> bool:
    """Whether a rebuilt node is a torch module (has parameters, buffers and submodules)."""
    state = getattr(node, "state", None)
    return isinstance(state, dict) and all(
        isinstance(state.get(k), dict) for k in ("_parameters", "_buffers", "_modules")
    )


def flatten(node, prefix: str = "") -> tuple[dict, dict]:
    """({state-dict name: float array}, {module path: ModuleInfo}) of a rebuilt module tree.

    Names are torch's state_dict names: the dotted module path, then the parameter or buffer
    name; None entries (a Conv2d without bias, a filter buffer of a non-resampling conv) are
    left out, as torch leaves them out. The root's path is "".
    """
    if not is_module(node):
        raise ValueError(f"the module {prefix or '<root>'} of the file has no module state")
    state = node.state
    attrs = {k: v for k, v in state.items() if not k.startswith("_") and _plain(v)}
    modules = {prefix: ModuleInfo(node.class_name, attrs)}
    tensors = {}
    for kind in ("_parameters", "_buffers"):
        for name, value in state[kind].items():
            if value is None:
                continue
            if not isinstance(value, np.ndarray):
                raise ValueError(f"{prefix}{name} of the file is a {type(value).__name__}")
            tensors[prefix + name] = np.ascontiguousarray(value)  # [shape]: the file's layout
    for name, child in state["_modules"].items():
        if child is None:
            continue
        child_tensors, child_modules = flatten(child, f"{prefix}{name}.")
        tensors.update(child_tensors)
        modules.update({path.rstrip("."): info for path, info in child_modules.items()})
    return tensors, modules


def _plain(value) -> bool:
    if isinstance(value, list | tuple):
        return all(_plain(v) for v in value)
    return isinstance(value, PLAIN_TYPES)


def init_kwargs(node) -> dict:
    """The keyword arguments a persistent object was constructed with (persistence records
    them as `_init_kwargs`); {} when absent."""
    kwargs = node.state.get("_init_kwargs") if isinstance(node, PersistentObject) else None
    return dict(kwargs) if isinstance(kwargs, dict) else {}
