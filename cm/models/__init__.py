"""Networks of `cm`: `build_model(config)` and parameter-count helpers.

MODELS maps config.model.name to a constructor; it is the only place a model name is resolved:
  unet  the DDPM++ / NCSN++ family (EDM's SongUNet); NCSN++ is encoder_type="residual",
        embedding="fourier", noise_mult=2, resample_filter=(1, 3, 3, 1).
  adm   ADM (EDM's DhariwalUNet), the same U-Net with ADM's settings (adm.py).
"""

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from cm.models.adm import adm_unet
from cm.models.unet import UNet

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _dtype(name: str):
    if name not in DTYPES:
        raise ValueError(f"Unknown model.dtype {name!r}; valid: {sorted(DTYPES)}.")
    return DTYPES[name]


def _num_classes(config) -> int:
    """Label count the network conditions on: 0 unless model.use_labels and data has labels."""
    n = config.data.num_classes
    return n if config.model.use_labels and n > 0 else 0


def _fields(config, second_noise_label: bool) -> dict:
    """The U-Net fields every architecture takes from config.model and config.data."""
    m = config.model
    return dict(
        out_channels=config.data.channels,
        channels=m.channels,
        channel_mult=tuple(m.channel_mult),
        num_blocks=m.num_blocks,
        attn_resolutions=tuple(m.attn_resolutions),
        dropout=m.dropout,
        dropout_max_resolution=m.dropout_max_resolution,
        embedding=m.embedding,
        fourier_scale=m.fourier_scale,
        fourier_param=bool(m.fourier_param),
        noise_mult=m.noise_mult,
        encoder_type=m.encoder_type,
        resample_filter=tuple(m.resample_filter),
        norm=m.norm,
        num_groups=m.num_groups,
        num_classes=_num_classes(config),
        augment_dim=m.augment_dim,
        dtype=_dtype(m.dtype),
        remat=bool(m.remat),
        # MeanFlow's u reads a second time label (docs/methods.md section 9).
        second_noise_label=second_noise_label,
    )


MODELS = {
    "unet": lambda fields: UNet(**fields),
    "adm": lambda fields: adm_unet(**fields),
}


def build_model(config, second_noise_label: bool = False):
    """The Flax module named by config.model.name, configured from config.model and config.data;
    `second_noise_label` when the method's network reads a second time label (its table
    entry's field, which experiment.build hands in).

    Call it as `model.apply({"params": p}, x, c_noise, labels, train=..., rngs={"dropout": k})`
    (and `augment_labels=` [B, model.augment_dim] in augmented training).
    """
    name = config.model.name
    if name not in MODELS:
        raise ValueError(f"Unknown model.name {name!r}; valid: {sorted(MODELS)}.")
    return MODELS[name](_fields(config, second_noise_label))


def _unwrap(params):
    """Accept either the `params` collection or a whole variables dict {'params': ...}."""
    if isinstance(params, Mapping) and set(params) == {"params"}:
        return params["params"]
    return params


def count_params(params) -> int:
    """Total number of scalars in a parameter tree (arrays or ShapeDtypeStructs)."""
    leaves = jax.tree_util.tree_leaves(_unwrap(params))
    return int(sum(int(np.prod(leaf.shape)) for leaf in leaves))


def param_table(params) -> str:
    """One row per top-level module with its parameter count; last line `parameters: N`."""
    params = _unwrap(params)
    rows = [(str(name), count_params(sub)) for name, sub in params.items()]
    total = count_params(params)
    width = max([len("module")] + [len(n) for n, _ in rows])
    digits = max(len("count"), len(str(total)))
    lines = [f"{'module':<{width}}  {'count':>{digits}}"]
    lines += [f"{name:<{width}}  {count:>{digits}}" for name, count in rows]
    lines.append(f"parameters: {total}")
    return "\n".join(lines)
