"""Our Flax FID Inception equals pytorch-fid's (same random weights), read through our .pth reader.

The reference is pytorch-fid's own `fid_inception_v3()`: torchvision's Inception3 with the FID
blocks patched in, exactly the network behind pt_inception-2015-12-05-6726825d.pth. torch,
torchvision and pytorch-fid are test-only dependencies (requirements-dev.txt and
requirements-reference.txt). PyPI's torchvision wheel carries compiled operators built for
another torch, so its package __init__ fails to import beside the pinned CPU torch; its model
code is pure Python, so the package is entered without running that __init__.
"""

import importlib.util
import pickle
import sys
import types

import jax
import numpy as np
import pytest

from cm.evaluation import inception, resize
from cm.io import torch_pickle

torch = pytest.importorskip("torch")
nn = torch.nn


def _pytorch_fid_inception_module():
    """pytorch_fid.inception, with torchvision's Python modules but not its compiled ops."""
    if "torchvision" not in sys.modules:
        spec = importlib.util.find_spec("torchvision")
        assert spec is not None, "pip install --no-deps -r requirements-reference.txt"
        package = types.ModuleType("torchvision")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec  # diffusers' find_spec("torchvision") in the same worker needs it
        sys.modules["torchvision"] = package
        package.__version__ = importlib.import_module("torchvision.version").__version__
    return importlib.import_module("pytorch_fid.inception")


def fid_inception_v3():
    """pytorch-fid's FID Inception, built without downloading its weights (random instead)."""
    module = _pytorch_fid_inception_module()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, "load_state_dict_from_url", lambda *a, **k: None)
        patch.setattr(nn.Module, "load_state_dict", lambda self, *a, **k: None)
        return module.fid_inception_v3()


def calibrated(seed: int, images_nchw):
    """A randomly initialized network whose BatchNorm statistics are those of `images`, so
    that activations keep unit scale through all 94 layers (as with trained weights)."""
    torch.manual_seed(seed)
    net = fid_inception_v3()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # running stats = average over the calibration pass
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    net.train()
    with torch.no_grad():
        net(images_nchw)
    return net.eval()


SMALL = 107  # the last feature map is 2x2, so border padding and pooling still matter
BATCH = 2


def _pool_and_logits(net, x_nhwc):
    """(pool [B, 2048], logits [B, 1008]) as numpy; the pool is read at torchvision's avgpool."""
    seen = []
    hook = net.avgpool.register_forward_hook(lambda m, i, out: seen.append(out.flatten(1)))
    with torch.no_grad():
        logits = net(_nchw(x_nhwc))
    hook.remove()
    return seen[0].numpy(), logits.numpy()


def _nchw(x_nhwc):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x_nhwc).transpose(0, 3, 1, 2)))


def _net_and_weights(images_nhwc, directory):
    """A random torch network calibrated on `images` and its state dict saved by torch.save."""
    net = calibrated(0, _nchw(images_nhwc))
    path = directory / inception.WEIGHTS_FILE
    torch.save(net.state_dict(), path)
    return net, str(path)


@pytest.fixture(scope="module")
def net_and_weights(tmp_path_factory):
    u8 = np.random.default_rng(0).integers(0, 256, (BATCH, SMALL, SMALL, 3), dtype=np.uint8)
    return _net_and_weights((u8.astype(np.float32) - 128) / 128, tmp_path_factory.mktemp("w"))


@pytest.mark.parametrize("zip_format", [True, False])
def test_reader_matches_torch_load(tmp_path, zip_format):
    """Both torch.save layouts; views (offsets, strides) into shared storages; dtypes."""
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state = {
        "w": base.t(),  # non-contiguous
        "row": base[2],  # offset into the same storage
        "every_other": base.flatten()[1::2],
        "d": torch.linspace(0, 1, 5, dtype=torch.float64),
        "n": torch.tensor([3, -1], dtype=torch.int64),
        "h": torch.ones(2, 2, dtype=torch.float16),
    }
    path = tmp_path / "sd.pth"
    torch.save(state, path, _use_new_zipfile_serialization=zip_format)
    got = torch_pickle.read_state_dict(path.read_bytes())
    assert set(got) == set(state)
    for k, v in state.items():
        assert got[k].dtype == v.numpy().dtype
        np.testing.assert_array_equal(got[k], v.numpy())


def test_reader_refuses_arbitrary_objects(tmp_path):
    path = tmp_path / "bad.pth"
    torch.save({"w": torch.zeros(2), "f": print}, path)
    with pytest.raises(Exception, match="not part of a tensor state dict"):
        torch_pickle.read_state_dict(path.read_bytes())


class _Marker:
    """Unpickling this calls _record: a stand-in for a payload that runs code."""

    def __reduce__(self):
        return (_record, ("ran",))


_RAN = []


def _record(value):
    _RAN.append(value)


def test_reader_runs_no_code_from_legacy_headers():
    """A legacy file is a stream of pickles; its first (the magic number) is read before
    anything is known about the file, so it too must refuse every global."""
    data = pickle.dumps(_Marker())
    with pytest.raises(pickle.UnpicklingError, match="header of a legacy torch.save file"):
        torch_pickle.read_state_dict(data)
    assert _RAN == []
    pickle.loads(data)  # the payload does run under a plain unpickler
    assert _RAN == ["ran"]


def _max_diffs(ours: dict, pool, logits, weight) -> dict:
    return {
        "pool": float(np.abs(np.asarray(ours["pool"]) - pool).max()),
        "logits": float(np.abs(np.asarray(ours["logits"]) - logits).max()),
        "logits_unbiased": float(
            np.abs(np.asarray(ours["logits_unbiased"]) - pool @ weight.T).max()
        ),
    }


@pytest.mark.slow  # builds two Inception networks in float64: about 25 s
def test_equals_torch_in_float64(net_and_weights):
    """Same weights (read from the .pth by our reader), float64 on both sides: the networks
    agree to rounding, so every layer, pool and padding rule is the same."""
    net, path = net_and_weights
    x = np.random.default_rng(1).uniform(-1, 1, (BATCH, SMALL, SMALL, 3))  # float64
    pool, logits = _pool_and_logits(net.double(), x)
    weight = net.fc.weight.detach().numpy()
    net.float()
    variables = jax.tree.map(lambda a: np.asarray(a, np.float64), inception.load_variables(path))
    with jax.enable_x64(True):
        ours = jax.jit(inception.FIDInceptionV3().apply)(variables, x)
        assert ours["pool"].dtype == np.float64
        diffs = _max_diffs(ours, pool, logits, weight)
    assert max(diffs.values()) < 1e-9 * max(np.abs(pool).max(), 1.0), diffs


@pytest.mark.slow
def test_equals_torch_at_299_in_float32(tmp_path):
    """The protocol's path in float32: a uint8 32x32 image, our TF1 resize to 299, both nets."""
    u8 = np.random.default_rng(2).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    x = np.asarray(resize.preprocess(u8, inception.INPUT_SIZE))  # [1, 299, 299, 3]
    net, path = _net_and_weights(x, tmp_path)
    pool, logits = _pool_and_logits(net, x)
    weight = net.fc.weight.detach().numpy()
    ours = jax.jit(inception.FIDInceptionV3().apply)(inception.load_variables(path), x)
    diffs = _max_diffs(ours, pool, logits, weight)
    # Random BatchNorm statistics amplify float32 rounding over 94 layers more than trained
    # weights do; the float64 test above is the exact check.
    assert max(diffs.values()) < 1e-3 * np.abs(pool).max(), diffs
