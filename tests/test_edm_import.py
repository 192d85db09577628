"""--mode=import: NVlabs/edm snapshots read without running them, mapped onto cm's networks.

The EDM-format files are written here, as EDM's training loop writes them: a plain pickle of
{ema, loss_fn, augment_pipe, dataset_kwargs} whose network objects pickle as calls of
torch_utils.persistence._reconstruct_persistent_obj(meta), meta carrying module source code
(here: code that would write a marker file and exit, so a reader that runs it fails the test),
torch's own pickling of parameters, buffers and ModuleDicts, and numpy scalars. The module
trees (EDM's module and tensor names, classes, attributes) are tests/data/edm_networks.json.gz,
recorded from EDM's own networks by benchmarks/edm_import_check.py (which also compares the
imported networks' outputs with EDM's torch outputs; BENCHMARKS.md).
"""

import contextlib
import functools
import gzip
import hashlib
import io
import json
import os
import pathlib
import pickle
import re
import sys
import types

import jax
import numpy as np
import pytest
import torch

from cm import experiment, modes
from cm.edm_import import architecture, load, name_map, reader
from cm.io import fileio
from cm.models import count_params
from cm.workdir.checkpoint import Checkpointer
from configs import cifar10_edm, imagenet64_edm

MANIFEST = pathlib.Path(__file__).parent / "data" / "edm_networks.json.gz"
TINY = ("ddpmpp_tiny", "ncsnpp_tiny", "adm_tiny")
FULL = ("cifar10_uncond_vp", "cifar10_cond_ve", "imagenet64_cond_adm")
CONFIGS = {
    "configs/cifar10_edm.py": lambda: cifar10_edm.get_config(),
    "configs/cifar10_edm.py:cond": lambda: cifar10_edm.get_config("cond"),
    "configs/cifar10_edm.py:ve": lambda: cifar10_edm.get_config("ve"),
    "configs/cifar10_edm.py:ve_cond": lambda: cifar10_edm.get_config("ve_cond"),
    "configs/imagenet64_edm.py": lambda: imagenet64_edm.get_config(),
}


@functools.cache
def manifest() -> dict:
    with gzip.open(MANIFEST, "rt") as f:
        return json.load(f)["networks"]


def config_for(name: str, path: str = ""):
    entry = manifest()[name]
    c = CONFIGS[entry["config"]]()
    for dotted, value in entry["overrides"].items():
        section, field = dotted.split(".")
        c[section][field] = tuple(value) if isinstance(value, list) else value
    c.edm_import.path = str(path)
    return c


def one_sentence(message: str) -> bool:
    """One line ending in a period, no sentence break inside."""
    return "\n" not in message and message.endswith(".") and not re.search(r"\. [A-Z]", message)


# --- Writing files in EDM's format ---------------------------------------------------------


def _decode(value):
    if isinstance(value, dict) and "__numpy__" in value:
        return np.dtype(value["__numpy__"]).type(value["value"])
    if isinstance(value, dict):
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _must_not_run(meta):
    raise AssertionError("the reader called EDM's persistence hook")


_must_not_run.__module__ = "torch_utils.persistence"
_must_not_run.__qualname__ = _must_not_run.__name__ = "_reconstruct_persistent_obj"


class Persistent(torch.nn.Module):
    """Pickles as torch_utils.persistence does: (_reconstruct_persistent_obj, (meta,)), meta =
    type, version, module_src, class_name and the object's state (its __dict__)."""

    def __init__(self, class_name: str, module_src: str):
        super().__init__()
        self._meta = (class_name, module_src)

    def __reduce__(self):
        class_name, module_src = self._meta
        state = {k: v for k, v in vars(self).items() if k != "_meta"}
        meta = dict(
            type="class", version=6, module_src=module_src, class_name=class_name, state=state
        )
        return (_must_not_run, (meta,), None)


class PersistentObject:
    """A persistent non-module object (EDMLoss, AugmentPipe): attributes only."""

    def __init__(self, class_name, module_src, **attrs):
        self._meta = (class_name, module_src)
        vars(self).update(attrs)

    __reduce__ = Persistent.__reduce__


def poison_source(marker: pathlib.Path) -> str:
    """Module source that, if executed, leaves a marker file and stops the process."""
    return f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\nraise SystemExit(3)\n"


def build_modules(entry: dict, source: str, seed: int = 0, edit=None):
    """The torch module tree of a manifest entry, every tensor filled with seeded values.

    edit(path, module_entry) may return a changed copy of a module entry (for bad files)."""
    rng = np.random.default_rng(seed)
    built = {}
    for m in entry["modules"]:
        m = edit(m["path"], m) if edit else m
        if m["torch_container"]:
            module = torch.nn.ModuleDict()
        else:
            module = Persistent(m["class"], source)
            module._init_args = ()
            module._init_kwargs = _decode(m.get("init_kwargs", {}))
        for k, shape in m["params"].items():
            value = None
            if shape is not None:
                array = rng.standard_normal(shape).astype(np.float32)
                value = torch.nn.Parameter(torch.from_numpy(array), requires_grad=False)
            module.register_parameter(k, value)
        for k, spec in m["buffers"].items():
            value = None
            if spec is not None and "values" in spec:
                value = torch.tensor(spec["values"], dtype=torch.float32).reshape(spec["shape"])
            elif spec is not None:
                value = torch.from_numpy(rng.standard_normal(spec["shape"]).astype(np.float32))
            module.register_buffer(k, value)
        for k, v in m["attrs"].items():
            if k not in module._modules:
                object.__setattr__(module, k, _decode(v))
        built[m["path"]] = module
        if m["path"]:
            parent, _, name = m["path"].rpartition(".")
            built[parent].add_module(name, module)
    return built[""]


@contextlib.contextmanager
def edm_persistence_module():
    """torch_utils.persistence importable while pickling (pickle checks the global's name)."""
    package = types.ModuleType("torch_utils")
    persistence = types.ModuleType("torch_utils.persistence")
    persistence._reconstruct_persistent_obj = _must_not_run
    package.persistence = persistence
    saved = {k: sys.modules.get(k) for k in ("torch_utils", "torch_utils.persistence")}
    sys.modules.update({"torch_utils": package, "torch_utils.persistence": persistence})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def edm_snapshot(network, source: str, protocol: int = 4, **extra) -> bytes:
    """The dict EDM's training loop pickles, around `network` (None: no 'ema' entry)."""
    data = dict(
        loss_fn=PersistentObject("EDMLoss", source, P_mean=-1.2, P_std=1.2, sigma_data=0.5),
        augment_pipe=PersistentObject("AugmentPipe", source, p=0.12, xflip=1e8),
        dataset_kwargs=dict(class_name="training.dataset.ImageFolderDataset", path="x.zip"),
        **extra,
    )
    if network is not None:
        data["ema"] = network
    with edm_persistence_module():
        return pickle.dumps(data, protocol=protocol)


@pytest.fixture
def poison(tmp_path):
    marker = tmp_path / "module_src_ran"
    yield poison_source(marker)
    assert not marker.exists(), "the module source carried by the file was executed"


def write_tiny(tmp_path, name: str, source: str, edit=None) -> tuple[pathlib.Path, dict]:
    """A tiny EDM snapshot file and the state dict it holds ({name: array})."""
    net = build_modules(manifest()[name], source, edit=edit)
    path = tmp_path / f"{name}.pkl"
    path.write_bytes(edm_snapshot(net, source))
    state = {k: v.numpy() for k, v in net.state_dict().items()}
    return path, state


def flax_shapes(config):
    exp = experiment.build(config)
    return experiment.param_shapes(exp, config)


# --- Reading ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TINY)
def test_reader_gives_back_every_tensor_and_runs_nothing(tmp_path, poison, name):
    path, state = write_tiny(tmp_path, name, poison)
    network = load.read_network(str(path))
    assert set(network.tensors) == set(state)
    for key, value in state.items():
        assert network.tensors[key].dtype == np.float32
        np.testing.assert_array_equal(network.tensors[key], value)
    assert network.precond_class == "EDMPrecond"
    recorded = next(m for m in manifest()[name]["modules"] if m["path"] == "")["init_kwargs"]
    assert network.precond_kwargs == _decode(recorded)
    assert network.model_class in ("SongUNet", "DhariwalUNet")
    block = network.modules["model.enc.16x16_block0"]
    assert block.class_name == "UNetBlock"
    # SongUNet's skip_scale is a numpy float64 in the file; it comes back as a Python float.
    if network.model_class == "SongUNet":
        assert type(block.attrs["skip_scale"]) is float
    assert network.modules["model.enc"].class_name == "ModuleDict"
    assert network.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("protocol", [3, 5])
def test_other_pickle_protocols_read_the_same(tmp_path, poison, protocol):
    """EDM wrote protocol 4 (Python 3.8+); protocol 3 (Python < 3.8) spells sets as
    builtins.set(list) and has no frames, protocol 5 is today's highest."""
    net = build_modules(manifest()["ddpmpp_micro"], poison)
    path = tmp_path / "old.pkl"
    path.write_bytes(edm_snapshot(net, poison, protocol=protocol))
    network = load.read_network(str(path))
    state = net.state_dict()
    assert set(network.tensors) == set(state)
    for key, value in state.items():
        np.testing.assert_array_equal(network.tensors[key], value.numpy())


def test_reader_rebuilds_views_and_dtypes_as_torch_pickles_them():
    """Offsets and strides into one storage, float16 and int64 storages, as pickle.dumps of
    torch tensors writes them (each storage's bytes a legacy torch.save of it)."""
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    tensors = {
        "view": base[1:, 2:5],
        "transposed": base.t(),
        "half": torch.tensor([0.5, -2.0], dtype=torch.float16),
        "long": torch.tensor([3, -7], dtype=torch.int64),
    }
    obj = reader.load(io.BytesIO(pickle.dumps(tensors)), "t.pkl")
    for key, value in tensors.items():
        assert obj[key].dtype == value.numpy().dtype
        np.testing.assert_array_equal(obj[key], value.numpy())


def test_fourier_param_starts_at_the_seeded_draw_and_gets_no_gradient():
    """model.fourier_param keeps NCSN++'s frequencies as a parameter: a fresh one holds the
    seeded draw, its features are those of the constant frequencies (up to 2 pi f computed in
    float32 from the float32 parameter, as EDM does, instead of in float64: |2 pi f x| < 400
    here, so the arguments differ by < 1e-4), and no gradient reaches it (stop_gradient)."""
    from cm.models.embeddings import NoiseEmbedding, fourier_frequencies

    x = jax.numpy.asarray([0.3, -1.2])
    constant = NoiseEmbedding("fourier", 8, fourier_scale=16.0)
    as_param = NoiseEmbedding("fourier", 8, fourier_scale=16.0, fourier_param=True)
    variables = as_param.init(jax.random.key(0), x)
    draw = fourier_frequencies(8, 16.0, 0).astype(np.float32)
    np.testing.assert_array_equal(variables["params"]["freqs"], draw)
    np.testing.assert_allclose(as_param.apply(variables, x), constant.apply({}, x), atol=1e-4)
    grad = jax.grad(lambda v: as_param.apply(v, x).sum())(variables)
    np.testing.assert_array_equal(grad["params"]["freqs"], np.zeros(4))


# --- The name map ----------------------------------------------------------------------------


def test_qkv_channel_order_by_hand():
    """C = 4, 2 heads (d = 2). EDM reads qkv's 12 channels as (head, i, q/k/v): channel
    6h + 3i + j; cm as (q/k/v, head, i): channel 4j + 2h + i. cm channel 0 (q, h0, i0) is EDM 0,
    1 (q, h0, i1) is EDM 3, 2 (q, h1, i0) is EDM 6, 3 is 9, 4 (k, h0, i0) is EDM 1, ..."""
    expected = [0, 3, 6, 9, 1, 4, 7, 10, 2, 5, 8, 11]
    np.testing.assert_array_equal(name_map._qkv_order(4, 2), expected)
    np.testing.assert_array_equal(name_map._qkv_order(2, 1), [0, 3, 1, 4, 2, 5])


@pytest.mark.parametrize("name", TINY)
def test_every_parameter_of_each_architecture_is_mapped(tmp_path, poison, name):
    path, state = write_tiny(tmp_path, name, poison)
    config = config_for(name, path)
    shapes = flax_shapes(config)
    network = load.read_network(str(path))
    entries = load.plan(config, network, shapes)
    params = name_map.apply(entries, network.tensors)
    # Every Flax leaf filled exactly once, with its shape; every EDM tensor used exactly once.
    assert jax.tree.structure(params) == jax.tree.structure(shapes)
    for leaf, shape in zip(jax.tree.leaves(params), jax.tree.leaves(shapes), strict=True):
        assert leaf.shape == shape.shape and leaf.dtype == np.float32
    used = [e.edm_name for e in entries]
    assert len(used) == len(set(used))
    filters = {k for k in state if k.endswith(".resample_filter")}
    assert set(used) | filters == set(state) and not set(used) & filters
    assert count_params(params) == sum(state[k].size for k in used)

    # Layouts, by hand: conv OIHW -> HWIO, Linear [out, in] -> Dense [in, out], norms as they
    # are, attention's 1x1 convs as Dense with qkv's channels reordered.
    res = config.data.image_size
    w = state[f"model.enc.{res}x{res}_conv.weight"]  # [O, I, 3, 3]
    kernel = params[f"enc_{res}x{res}_conv"]["kernel"]  # [3, 3, I, O]
    assert kernel[1, 2, 0, 5] == w[5, 0, 1, 2]
    np.testing.assert_array_equal(
        params["map_layer0"]["kernel"], state["model.map_layer0.weight"].T
    )
    block = next(k for k in params if "attn" in params[k])
    edm = f"model.{block[:3]}.{block[4:]}"
    attn = params[block]["attn"]
    channels = attn["proj"]["kernel"].shape[0]
    heads = max(1, channels // 64) if name == "adm_tiny" else 1
    order = name_map._qkv_order(channels, heads)
    np.testing.assert_array_equal(
        attn["qkv"]["kernel"], state[f"{edm}.qkv.weight"][order, :, 0, 0].T
    )
    np.testing.assert_array_equal(attn["qkv"]["bias"], state[f"{edm}.qkv.bias"][order])
    np.testing.assert_array_equal(attn["proj"]["kernel"], state[f"{edm}.proj.weight"][:, :, 0, 0].T)
    np.testing.assert_array_equal(attn["norm"]["scale"], state[f"{edm}.norm2.weight"])
    out_norm = f"model.dec.{res}x{res}_aux_norm" if name != "adm_tiny" else "model.out_norm"
    np.testing.assert_array_equal(params["out_norm"]["bias"], state[f"{out_norm}.bias"])
    if name == "ncsnpp_tiny":  # EDM's Fourier frequencies travel as cm's map_noise/freqs
        np.testing.assert_array_equal(params["map_noise"]["freqs"], state["model.map_noise.freqs"])
    if name == "adm_tiny":
        assert heads == 2  # the multi-head reordering is exercised


@pytest.mark.parametrize("name", FULL)
def test_the_published_architectures_map_at_full_size(name):
    """The configs of the published files, against EDM's full-size module trees: shapes and
    module attributes only (nothing is allocated)."""
    entry = manifest()[name]
    config = config_for(name)
    root = next(m for m in entry["modules"] if m["path"] == "")
    model = next(m for m in entry["modules"] if m["path"] == "model")
    architecture.check_config(
        config,
        f"{name}.pkl",
        root["class"],
        _decode(root["init_kwargs"]),
        model["class"],
        _decode(model["init_kwargs"]),
    )
    edm_shapes, modules = {}, {}
    for m in entry["modules"]:
        prefix = m["path"] + "." if m["path"] else ""
        modules[m["path"]] = reader.ModuleInfo(m["class"], _decode(m["attrs"]))
        edm_shapes.update({prefix + k: tuple(s) for k, s in m["params"].items() if s})
        edm_shapes.update({prefix + k: tuple(b["shape"]) for k, b in m["buffers"].items() if b})
    shapes = flax_shapes(config)
    facts = architecture.network_facts(config)
    entries = name_map.plan(
        shapes, edm_shapes, modules, facts, model["class"], config.data.image_size, f"{name}.pkl"
    )
    assert len(entries) == len(jax.tree.leaves(shapes))
    edm_params = sum(int(np.prod(s)) for m in entry["modules"] for s in m["params"].values() if s)
    freqs = 128 if config.model.fourier_param else 0  # EDM's buffer, cm's parameter
    assert count_params(shapes) == edm_params + freqs
    expected = {
        "cifar10_uncond_vp": 55_733_891,
        "cifar10_cond_ve": 56_400_643,
        "imagenet64_cond_adm": 295_899_267,
    }
    assert edm_params == expected[name]


# --- Refused files and configs ---------------------------------------------------------------


def _refused(path, config=None, error=ValueError) -> str:
    with pytest.raises(error) as e:
        network = load.read_network(str(path))
        if config is not None:
            load.check(config, network)
            load.plan(config, network, flax_shapes(config))
    message = str(e.value)
    assert one_sentence(message), message
    return message


def test_not_a_pickle_and_missing_files_are_one_sentence(tmp_path):
    text = tmp_path / "notes.pkl"
    text.write_text("not a pickle at all")
    assert str(text) in _refused(text)
    zipped = tmp_path / "training-state.pt"
    torch.save({"w": torch.ones(2)}, zipped)  # torch.save's zip layout, not an EDM snapshot
    assert "not a readable EDM network pickle" in _refused(zipped)
    assert "edm_import.path is empty" in _refused("")
    assert "does not exist" in _refused(tmp_path / "absent.pkl", error=FileNotFoundError)


def test_a_forbidden_global_is_refused_before_anything_runs(tmp_path):
    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"ema": Exploit()}))
    message = _refused(path)
    assert "system" in message and "nothing in it was run" in message
    assert not marker.exists()


def test_missing_ema_is_one_sentence(tmp_path, poison):
    path = tmp_path / "no_ema.pkl"
    path.write_bytes(edm_snapshot(None, poison))
    assert "has no 'ema' network" in _refused(path)


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda p, m: {**m, "class": "VEPrecond"} if p == "" else m, "holds a VEPrecond"),
        (lambda p, m: {**m, "class": "MyUNet"} if p == "model" else m, "wraps a MyUNet"),
        (
            lambda p, m: (
                {**m, "params": {**m["params"], "weight": [128, 31]}}
                if p == "model.map_layer0"
                else m
            ),
            "model.map_layer0.weight has shape (128, 31) where the config's network needs "
            "(128, 32)",
        ),
        (
            lambda p, m: (
                {**m, "buffers": {**m["buffers"], "extra": {"shape": [3]}}}
                if p == "model.map_layer1"
                else m
            ),
            "model.map_layer1.extra (3,) has no place in the config's network",
        ),
        (
            lambda p, m: (
                {**m, "attrs": {**m["attrs"], "num_groups": 4}}
                if p == "model.enc.16x16_block0.norm0"
                else m
            ),
            "model.enc.16x16_block0.norm0.num_groups is 4",
        ),
    ],
    ids=["precond_class", "model_class", "shape", "extra_tensor", "groups"],
)
def test_unknown_classes_and_mismatches_are_one_sentence(tmp_path, poison, change, expected):
    path, _ = write_tiny(tmp_path, "ddpmpp_tiny", poison, edit=change)
    message = _refused(path, config_for("ddpmpp_tiny", path))
    assert expected in message and str(path) in message


@pytest.mark.parametrize(
    "name, field, value, expected",
    [
        ("ddpmpp_tiny", "model.channels", 16, "set --config.model.channels=32"),
        ("ddpmpp_tiny", "model.use_labels", False, "set --config.model.use_labels=True"),
        ("ddpmpp_tiny", "model.augment_dim", 0, "set --config.model.augment_dim=9"),
        (
            "ddpmpp_tiny",
            "method.noise_label",
            "250_log_sigma",
            "set --config.method.noise_label=log_sigma_over_4",
        ),
        ("ddpmpp_tiny", "method.name", "ict", "set --config.method.name=edm"),
        ("ncsnpp_tiny", "model.fourier_param", False, "set --config.model.fourier_param=True"),
        ("ncsnpp_tiny", "model.embedding", "positional", "set --config.model.embedding=fourier"),
        ("adm_tiny", "model.name", "unet", "set --config.model.name=adm"),
        ("adm_tiny", "model.dropout", 0.2, "set --config.model.dropout=0.1"),
    ],
)
def test_a_config_that_differs_from_the_file_is_one_sentence(
    tmp_path, poison, name, field, value, expected
):
    path, _ = write_tiny(tmp_path, name, poison)
    config = config_for(name, path)
    section, key = field.split(".")
    config[section][key] = value
    message = _refused(path, config)
    assert expected in message, message


def test_a_published_file_name_suggests_its_config(tmp_path, poison):
    net = build_modules(manifest()["ddpmpp_tiny"], poison)
    path = tmp_path / "edm-cifar10-32x32-cond-vp.pkl"
    path.write_bytes(edm_snapshot(net, poison))
    config = config_for("ddpmpp_tiny", path)
    config.model.channels = 16
    assert "(for this file: --config=configs/cifar10_edm.py:cond)" in _refused(path, config)


# --- The mode --------------------------------------------------------------------------------


@pytest.mark.slow
def test_import_mode_writes_a_run_that_sample_mode_reads(tmp_path, poison):
    path, state = write_tiny(tmp_path, "ddpmpp_micro", poison)
    config = config_for("ddpmpp_micro", path)
    config.sampling.num_samples = 8
    config.sampling.batch_size = 8
    config.sampling.heun_steps = 2
    workdir = str(tmp_path / "run")
    modes.run("import", config, workdir)

    exp = experiment.build(config)
    ckpt = Checkpointer(workdir, read_only=True)
    restored = ckpt.restore(experiment.abstract_state(exp, config))
    ckpt.close()
    assert ckpt.restored_step == 0 and int(restored.step) == 0
    np.testing.assert_array_equal(
        restored.params["map_layer1"]["kernel"], state["model.map_layer1.weight"].T
    )
    assert len(restored.ema) == 1  # EDM's half-life EMA: the file's EMA network
    for ema in restored.ema:
        for a, b in zip(jax.tree.leaves(ema), jax.tree.leaves(restored.params), strict=True):
            np.testing.assert_array_equal(a, b)
    record = fileio.read_json(tmp_path / "run" / "import.json")
    assert record["source"] == str(path) and record["network"] == "EDMPrecond(SongUNet)"
    assert fileio.read_json(tmp_path / "run" / "config.json")["edm_import"]["path"] == str(path)

    written = modes.run("sample", config, workdir)
    images, labels = written["heun2"]
    assert images.shape == (8, 8, 8, 3) and images.dtype == np.uint8
    assert (tmp_path / "run" / "samples" / "heun2_step00000000.npz").exists()

    with pytest.raises(ValueError, match="already holds a run") as e:  # never over a run
        modes.run("import", config, workdir)
    assert one_sentence(str(e.value))
