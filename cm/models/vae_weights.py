"""diffusers-format AutoencoderKL weights (safetensors) <-> the Flax parameters of cm/models/vae.py.

Names map mechanically: 'encoder.down_blocks.0.resnets.1.conv1.weight' is the path
('encoder', 'down_blocks_0', 'resnets_1', 'conv1', 'kernel'): a numeric part joins the name
before it with '_'. Convolution kernels go from torch's [O, I, kh, kw] to [kh, kw, I, O],
linear weights from [O, I] to [I, O], norm weights become 'scale'. The attention names of
older diffusers files (query, key, value, proj_attn) are read as to_q, to_k, to_v, to_out.0.
Only numpy and the safetensors package are needed; torch is not.
"""

import jax
import numpy as np

from cm.io import fileio
from cm.models import vae

WEIGHTS_HELP = (
    "download diffusion_pytorch_model.safetensors of the Hugging Face repository "
    "stabilityai/sd-vae-ft-ema (configs/celebahq256_slct.py) or stabilityai/sd-vae-ft-mse "
    "(the default elsewhere) and set vae.weights_path to it"
)
_LEGACY_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _path_of(key: str, ndim: int) -> tuple[str, ...]:
    """diffusers state-dict key -> Flax parameter path."""
    *modules, leaf = key.split(".")
    if modules and modules[-1] in _LEGACY_NAMES:
        modules[-1:] = _LEGACY_NAMES[modules[-1]].split(".")
    path: list[str] = []
    for part in modules:
        if part.isdigit() and path:
            path[-1] = f"{path[-1]}_{part}"
        else:
            path.append(part)
    if leaf == "weight":
        leaf = "scale" if ndim == 1 else "kernel"
    return (*path, leaf)


def _key_of(path: tuple[str, ...]) -> str:
    """Flax parameter path -> diffusers state-dict key (the inverse of `_path_of`)."""
    parts = []
    for name in path[:-1]:
        stem, _, index = name.rpartition("_")
        parts += [stem, index] if index.isdigit() and stem else [name]
    leaf = "bias" if path[-1] == "bias" else "weight"
    return ".".join([*parts, leaf])


def _to_flax(array: np.ndarray, path: tuple[str, ...], want_ndim: int) -> np.ndarray:
    """A torch-layout tensor -> the Flax layout of the parameter at `path`."""
    if path[-1] != "kernel":
        return array
    if want_ndim == 2:  # Dense; older files store attention projections as 1x1 convolutions
        return array.reshape(array.shape[0], array.shape[1]).T  # [O, I(,1,1)] -> [I, O]
    return array.transpose(2, 3, 1, 0)  # [O, I, kh, kw] -> [kh, kw, I, O]


def _to_torch(array: np.ndarray, path: tuple[str, ...]) -> np.ndarray:
    if path[-1] != "kernel":
        return array
    return array.T if array.ndim == 2 else array.transpose(3, 2, 0, 1)


def from_state_dict(state: dict, cfg: vae.VAEConfig, source: str = "the weights") -> dict:
    """Flax parameters (numpy float32) of an AutoencoderKL state dict of numpy arrays.

    Every parameter of the architecture `cfg` must be present with its shape; extra entries
    (none in diffusers files) are an error too, as they mean a different architecture.
    """
    shapes = jax.eval_shape(lambda: vae.init_params(cfg, jax.random.key(0)))
    expected = {
        tuple(k.key for k in path): leaf.shape
        for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]
    }
    params, unexpected = {}, []
    for key, array in state.items():
        path = _path_of(key, np.ndim(array))
        if path not in expected:
            unexpected.append(key)
            continue
        value = _to_flax(np.asarray(array, np.float32), path, len(expected[path]))
        if value.shape != expected[path]:
            raise ValueError(
                f"{source}: {key} has shape {tuple(np.shape(array))}, which does not fit the "
                f"configured VAE ({_arch(cfg)}); set the vae.* architecture fields to the "
                "checkpoint's."
            )
        params[path] = value
    missing = sorted(".".join(p) for p in expected.keys() - params.keys())
    if missing or unexpected:
        raise ValueError(
            f"{source} does not match the configured VAE ({_arch(cfg)}): "
            f"{len(missing)} parameters missing (e.g. {missing[:2]}), {len(unexpected)} "
            f"unexpected (e.g. {unexpected[:2]}); set the vae.* architecture fields to the "
            "checkpoint's, or point vae.weights_path at an AutoencoderKL file."
        )
    return _nest(params)


def to_state_dict(params) -> dict[str, np.ndarray]:
    """diffusers state dict (numpy, torch layouts) of Flax VAE parameters."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {
        _key_of(tuple(k.key for k in path)): np.ascontiguousarray(
            _to_torch(np.asarray(leaf, np.float32), tuple(k.key for k in path))
        )
        for path, leaf in flat
    }


def load(path: str, cfg: vae.VAEConfig) -> dict:
    """Flax VAE parameters from a diffusers-format .safetensors file (any path, gs:// too)."""
    from safetensors.numpy import load

    if not path or not fileio.is_file(path):
        raise FileNotFoundError(f"No VAE weights at vae.weights_path={path!r}: {WEIGHTS_HELP}.")
    try:
        state = load(fileio.read_bytes(path))
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise ValueError(
            f"vae.weights_path={path!r} is not a readable safetensors file ({e}); {WEIGHTS_HELP}."
        ) from None
    return from_state_dict(state, cfg, source=path)


def save(params, path: str) -> None:
    """Writes Flax VAE parameters as a diffusers-format .safetensors file, atomically."""
    from safetensors.numpy import save

    fileio.write_bytes_atomic(path, save(to_state_dict(params)))


def _arch(cfg: vae.VAEConfig) -> str:
    return (
        f"block_out_channels={cfg.block_out_channels}, layers_per_block={cfg.layers_per_block}, "
        f"latent_channels={cfg.latent_channels}"
    )


def _nest(flat: dict) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = value
    return tree
