"""An EDM snapshot file -> its EMA network's tensors and arguments -> a Flax params tree.

`read_network(path)` streams the file through cm/io/fileio.py (any path, gs:// included) into the
restricted reader and keeps the 'ema' entry; `flax_params(config, network, shapes)` checks the
file against the config (architecture.py) and maps every tensor (name_map.py). The method
table's `init_from` and `--mode=import` both start here.
"""

import dataclasses
import hashlib

from cm.edm_import import architecture, name_map, reader
from cm.io import fileio

EMA_KEY = "ema"  # EDM's training loop pickles its EMA network under this key (and samples it)
CHUNK = 1 << 20  # bytes hashed per read after the pickle ends


@dataclasses.dataclass(frozen=True)
class EdmNetwork:
    """The EMA network of an EDM snapshot, as data."""

    source: str  # the path it was read from
    sha256: str  # of the whole file
    precond_class: str  # EDMPrecond for the edm-*.pkl snapshots
    precond_kwargs: dict  # as recorded (_init_kwargs)
    model_class: str  # SongUNet | DhariwalUNet
    model_kwargs: dict  # as recorded, without EDM's defaults
    tensors: dict  # state-dict name ("model.enc.32x32_conv.weight") -> array
    modules: dict  # module path -> reader.ModuleInfo


class _HashingReader:
    """A binary file object that hashes what is read through it."""

    def __init__(self, file):
        self._file = file
        self._hash = hashlib.sha256()

    def read(self, size=-1):
        data = self._file.read(size)
        self._hash.update(data)
        return data

    def readline(self):
        data = self._file.readline()
        self._hash.update(data)
        return data

    def readinto(self, buffer):
        count = self._file.readinto(buffer)
        self._hash.update(memoryview(buffer)[:count])
        return count

    def digest_of_whole_file(self) -> str:
        while self.read(CHUNK):
            pass
        return self._hash.hexdigest()


def read_network(path: str) -> EdmNetwork:
    """The 'ema' network of the EDM .pkl at `path`; one-sentence errors for a missing path, a
    file that is not such a pickle, and a pickle without an EMA network."""
    if not str(path):
        raise ValueError(
            "edm_import.path is empty; download an NVlabs/edm snapshot (docs/workflows.md, "
            "'Importing EDM checkpoints') and pass --config.edm_import.path=FILE."
        )
    p = fileio.path(path)
    if not fileio.is_file(p):
        raise FileNotFoundError(
            f"The EDM snapshot edm_import.path={path!r} does not exist; download it "
            "(docs/workflows.md, 'Importing EDM checkpoints') to ~/.cache/cm/edm/ or pass "
            "--config.edm_import.path=FILE."
        )
    source = str(p)
    with fileio.open_file(p) as f:
        hashing = _HashingReader(f)
        obj = reader.load(hashing, source)
        sha256 = hashing.digest_of_whole_file()
    if not isinstance(obj, dict) or EMA_KEY not in obj:
        entries = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(
            f"{source} has no {EMA_KEY!r} network (it holds {entries}); pass an EDM network "
            "snapshot such as edm-cifar10-32x32-uncond-vp.pkl."
        )
    ema = obj[EMA_KEY]
    if not isinstance(ema, reader.PersistentObject) or not reader.is_module(ema):
        raise ValueError(
            f"{source}'s {EMA_KEY!r} entry is not an EDM network; pass an EDM network snapshot "
            "such as edm-cifar10-32x32-uncond-vp.pkl."
        )
    model = ema.state["_modules"].get("model")
    if not isinstance(model, reader.PersistentObject):
        raise ValueError(
            f"{source}'s {EMA_KEY!r} network ({ema.class_name}) wraps no 'model' network; cm "
            "imports EDMPrecond(SongUNet | DhariwalUNet)."
        )
    tensors, modules = reader.flatten(ema)
    return EdmNetwork(
        source=source,
        sha256=sha256,
        precond_class=ema.class_name,
        precond_kwargs=reader.init_kwargs(ema),
        model_class=model.class_name,
        model_kwargs=reader.init_kwargs(model),
        tensors=tensors,
        modules=modules,
    )


def check(config, network: EdmNetwork):
    """One ValueError when the config does not describe the file's network, preconditioning
    and noise label (architecture.py); cheap, so callers run it before building anything."""
    architecture.check_config(
        config,
        network.source,
        network.precond_class,
        network.precond_kwargs,
        network.model_class,
        network.model_kwargs,
    )


def plan(config, network: EdmNetwork, shapes) -> list:
    """The checked name map (name_map.Entry per Flax leaf) of `network` onto the config's
    network, whose params tree has the shapes `shapes`; one ValueError at the first mismatch."""
    check(config, network)
    hint = architecture.suggestion(network.source)
    facts = architecture.network_facts(config)
    edm_shapes = {k: v.shape for k, v in network.tensors.items()}
    entries = name_map.plan(
        shapes,
        edm_shapes,
        network.modules,
        facts,
        network.model_class,
        config.data.image_size,
        network.source,
        hint,
    )
    name_map.check_filter_values(network.tensors, facts["resample_filter"], network.source, hint)
    return entries


def flax_params(config, network: EdmNetwork, shapes) -> dict:
    """The config's Flax params tree (float32 numpy) filled from `network`, every leaf once."""
    return name_map.apply(plan(config, network, shapes), network.tensors)
