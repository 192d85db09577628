"""LPIPS's frozen weights (cm/models/lpips.py) from the two files the reference code loads, read by
our .pth reader (cm/io/torch_pickle.py: nothing in the file runs, no torch needed):

  method.lpips_vgg_path  torchvision's ImageNet VGG16, vgg16-397923af.pth (what the lpips
                         package, piq and CM's codes start from): features.<i>.weight
                         [out, in, 3, 3] and features.<i>.bias [out] of the 13 convolutions;
                         the classifier's tensors are ignored.
  method.lpips_lin_path  the lpips package's calibrated heads, lpips/weights/v0.1/vgg.pth:
                         lin<k>.model.1.weight [1, C, 1, 1] for the five compared layers.

A missing file, a missing tensor, a wrong shape or a negative head weight stops with one
sentence naming the file to download and the config value to set.
"""

import pickle
import zipfile

import jax
import numpy as np

from cm.io import fileio, torch_pickle
from cm.models import lpips

VGG_FILE = "vgg16-397923af.pth"
VGG_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
LIN_FILE = "lpips/weights/v0.1/vgg.pth"
LIN_URL = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth"


def _conv_specs() -> dict:
    """{conv name: (torchvision features index, in channels, out channels)}. features holds,
    per block, conv + ReLU per convolution and then a max pooling."""
    specs, index, channels = {}, 0, 3
    names = iter(lpips.CONV_NAMES)
    for out, convs in lpips.VGG16_BLOCKS:
        for _ in range(convs):
            specs[next(names)] = (index, channels, out)
            index, channels = index + 2, out  # conv, ReLU
        index += 1  # pooling
    return specs


CONV_SPECS = _conv_specs()  # conv1_1: (0, 3, 64), conv1_2: (2, 64, 64), conv2_1: (5, 64, 128), ...
LIN_CHANNELS = {name: out for name, (out, _) in zip(lpips.LAYERS, lpips.VGG16_BLOCKS, strict=True)}


def shapes() -> dict:
    """The weights' pytree as float32 ShapeDtypeStructs (no file is read)."""
    f32 = np.float32
    return {
        "vgg": {
            name: {
                "kernel": jax.ShapeDtypeStruct((3, 3, cin, cout), f32),
                "bias": jax.ShapeDtypeStruct((cout,), f32),
            }
            for name, (_, cin, cout) in CONV_SPECS.items()
        },
        "lin": {name: jax.ShapeDtypeStruct((c,), f32) for name, c in LIN_CHANNELS.items()},
    }


def _help(field: str) -> str:
    if field == "method.lpips_vgg_path":
        return f"download {VGG_URL} (torchvision's VGG16) and set --config.{field} to it"
    return f"download {LIN_URL} (the lpips package's v0.1 heads) and set --config.{field} to it"


def _read(path: str, field: str) -> dict:
    if not path or not fileio.is_file(path):
        raise FileNotFoundError(f"No LPIPS weights file at {field}={path!r}: {_help(field)}.")
    try:
        return torch_pickle.read_state_dict(fileio.read_bytes(path))
    except (pickle.UnpicklingError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise ValueError(
            f"{field}={path!r} is not a readable torch state dict ({e}); {_help(field)}."
        ) from None


def _tensor(state_dict: dict, key: str, shape: tuple, path: str, field: str) -> np.ndarray:
    if key not in state_dict:
        raise ValueError(
            f"{field}={path!r} has no tensor {key}, so it is not the expected file; {_help(field)}."
        )
    array = state_dict[key]
    if array.shape != shape:
        raise ValueError(
            f"{field}={path!r} has {key} of shape {tuple(array.shape)} where LPIPS needs "
            f"{shape}; {_help(field)}."
        )
    return np.asarray(array, np.float32)


def from_state_dicts(vgg_sd: dict, lin_sd: dict, vgg_path="", lin_path="") -> dict:
    """The weights' pytree (numpy float32, layout of cm/models/lpips.py) from the two state dicts;
    the paths only name the files in the messages."""
    vgg_field, lin_field = "method.lpips_vgg_path", "method.lpips_lin_path"
    vgg = {}
    for name, (i, cin, cout) in CONV_SPECS.items():
        w = _tensor(vgg_sd, f"features.{i}.weight", (cout, cin, 3, 3), vgg_path, vgg_field)
        b = _tensor(vgg_sd, f"features.{i}.bias", (cout,), vgg_path, vgg_field)
        vgg[name] = {"kernel": w.transpose(2, 3, 1, 0), "bias": b}  # OIHW -> HWIO
    lin = {}
    for k, (name, c) in enumerate(LIN_CHANNELS.items()):
        w = _tensor(lin_sd, f"lin{k}.model.1.weight", (1, c, 1, 1), lin_path, lin_field)
        if not np.all(w >= 0):
            raise ValueError(
                f"{lin_field}={lin_path!r} has negative weights in lin{k}, but LPIPS's heads are "
                f"non-negative; {_help(lin_field)}."
            )
        lin[name] = w.reshape(c)
    return {"vgg": vgg, "lin": lin}


def load(vgg_path: str, lin_path: str) -> dict:
    """The weights' pytree (numpy float32) from the two files (module docstring)."""
    vgg_sd = _read(vgg_path, "method.lpips_vgg_path")
    lin_sd = _read(lin_path, "method.lpips_lin_path")
    return from_state_dicts(vgg_sd, lin_sd, vgg_path, lin_path)


def load_from_config(method_config) -> dict:
    """`load` of method.lpips_vgg_path and method.lpips_lin_path."""
    return load(method_config.lpips_vgg_path, method_config.lpips_lin_path)
