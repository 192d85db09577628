"""Which EDM networks `cm` imports, and whether a config describes the one in a file.

EDM's snapshots hold an EDMPrecond wrapping a SongUNet (DDPM++ or NCSN++) or a DhariwalUNet
(ADM) as `model`. Their constructor arguments are in the file (`_init_kwargs`); those not given
take the defaults of EDM's training/networks.py, recorded below. `check_config` compares them
with the config field by field, so a file and a config that disagree give one sentence naming
the field and the value to set, before any tensor is mapped.
"""

import math

from cm import experiment
from cm.models import build_model
from cm.models.embeddings import MAX_POSITIONS

# Published NVlabs/edm snapshots -> the config that describes each (docs/workflows.md,
# "Importing EDM checkpoints"). The ECT recipe starts from edm-cifar10-32x32-uncond-vp.pkl.
PUBLISHED = {
    "edm-cifar10-32x32-uncond-vp.pkl": "configs/cifar10_edm.py",
    "edm-cifar10-32x32-cond-vp.pkl": "configs/cifar10_edm.py:cond",
    "edm-cifar10-32x32-uncond-ve.pkl": "configs/cifar10_edm.py:ve",
    "edm-cifar10-32x32-cond-ve.pkl": "configs/cifar10_edm.py:ve_cond",
    "edm-imagenet-64x64-cond-adm.pkl": "configs/imagenet64_edm.py",
}
PRECOND = "EDMPrecond"
PRECOND_DEFAULTS = dict(label_dim=0, sigma_data=0.5)
# Defaults of EDM's SongUNet and DhariwalUNet constructors (NVlabs/edm training/networks.py).
_UNET_DEFAULTS = dict(label_dim=0, augment_dim=0, channel_mult_emb=4, label_dropout=0, dropout=0.10)
MODEL_DEFAULTS = {
    "SongUNet": dict(
        _UNET_DEFAULTS,
        model_channels=128,
        channel_mult=[1, 2, 2, 2],
        num_blocks=4,
        attn_resolutions=[16],
        embedding_type="positional",
        channel_mult_noise=1,
        encoder_type="standard",
        decoder_type="standard",
        resample_filter=[1, 1],
    ),
    "DhariwalUNet": dict(
        _UNET_DEFAULTS,
        model_channels=192,
        channel_mult=[1, 2, 3, 4],
        num_blocks=3,
        attn_resolutions=[32, 16, 8],
    ),
}
MODEL_NAMES = {"SongUNet": "unet", "DhariwalUNet": "adm"}  # EDM class -> config.model.name
# What cm's networks fix where EDM has an argument; a file with another value cannot be mapped.
EMB_MULT = 4  # UNet.emb_mult: embedding width = 4 * channels (EDM's channel_mult_emb)
GROUPS = 32  # EDM's GroupNorm(num_groups=32), at least 4 channels per group
ADM_FIXED = dict(embedding="positional", noise_mult=1, encoder_type="standard")


def suggestion(source: str) -> str:
    """' (for this file: --config=...)' when the file name is a published one, else ''."""
    name = str(source).rsplit("/", 1)[-1]
    return f" (for this file: --config={PUBLISHED[name]})" if name in PUBLISHED else ""


def _same(a, b) -> bool:
    if isinstance(a, float | int) and isinstance(b, float | int):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def _rows(config, model_class: str):
    """(EDM argument, cm config field or None if cm fixes it, cm's value in EDM's terms)."""
    m, d = config.model, config.data
    rows = [
        ("img_resolution", "data.image_size", d.image_size),
        ("in_channels", "data.channels", d.channels),
        ("out_channels", "data.channels", d.channels),
        ("label_dim", "data.num_classes", experiment.num_label_classes(config)),
        ("augment_dim", "model.augment_dim", m.augment_dim),
        ("model_channels", "model.channels", m.channels),
        ("channel_mult", "model.channel_mult", list(m.channel_mult)),
        ("num_blocks", "model.num_blocks", m.num_blocks),
        ("attn_resolutions", "model.attn_resolutions", sorted(m.attn_resolutions)),
        ("dropout", "model.dropout", m.dropout),
        ("channel_mult_emb", None, EMB_MULT),
        ("label_dropout", None, 0),
    ]
    if model_class == "SongUNet":
        rows += [
            ("embedding_type", "model.embedding", m.embedding),
            ("channel_mult_noise", "model.noise_mult", m.noise_mult),
            ("encoder_type", "model.encoder_type", m.encoder_type),
            ("decoder_type", None, "standard"),
            ("resample_filter", "model.resample_filter", list(m.resample_filter)),
        ]
    return rows


def _flag(value) -> str:
    """A value as a --config override writes it: sequences as a quoted tuple."""
    if isinstance(value, list | tuple):
        return "'(" + ", ".join(str(v) for v in value) + (",)'" if len(value) == 1 else ")'")
    return str(value)


def model_kwargs(model_class: str, kwargs: dict) -> dict:
    """The inner network's arguments with EDM's defaults filled in."""
    full = {**MODEL_DEFAULTS[model_class], **kwargs}
    full["attn_resolutions"] = sorted(full["attn_resolutions"])
    full["channel_mult"] = list(full["channel_mult"])
    full["resample_filter"] = list(full.get("resample_filter", [1, 1]))
    return full


def check_config(
    config, source: str, precond_class: str, precond_kwargs: dict, model_class: str, kwargs: dict
):
    """Raises one ValueError naming the first difference between the file's network and the
    network, preconditioning and noise label the config describes."""
    hint = suggestion(source)
    if precond_class != PRECOND:
        raise ValueError(
            f"{source} holds a {precond_class}; cm imports EDM's {PRECOND} networks (the "
            f"edm-*.pkl snapshots, not the baseline-*.pkl ones)."
        )
    if model_class not in MODEL_DEFAULTS:
        raise ValueError(
            f"{source} wraps a {model_class}; cm imports SongUNet (DDPM++, NCSN++) and "
            "DhariwalUNet (ADM)."
        )
    expected_name = MODEL_NAMES[model_class]
    if config.model.name != expected_name:
        raise ValueError(
            f"{source} holds a {model_class} but the config has model.name="
            f"{config.model.name!r}; set --config.model.name={expected_name}{hint}."
        )
    full = model_kwargs(model_class, kwargs)
    for key, field, ours in _rows(config, model_class):
        theirs = full.get(key)
        if _same(theirs, ours):
            continue
        if field is None:
            raise ValueError(
                f"{source} holds a {model_class} with {key}={theirs!r}, which cm's networks "
                f"do not implement (they have {key}={ours!r})."
            )
        setting = f"{field}={_flag(theirs)}"
        if key == "label_dim" and theirs and not config.model.use_labels:
            setting = "model.use_labels=True"
        elif key == "label_dim" and not theirs:
            setting = "model.use_labels=False"
        raise ValueError(
            f"{source} holds a {model_class} with {key}={theirs!r} but the config has "
            f"{field}={ours!r}; set --config.{setting}{hint}."
        )
    _check_fixed(config, source, model_class, full, {**PRECOND_DEFAULTS, **precond_kwargs}, hint)


def _check_fixed(config, source, model_class, full, precond, hint):
    """Config values the file implies without naming them as arguments."""
    m, method = config.model, config.method
    required = [
        ("model.norm", m.norm, "group"),  # EDM's GroupNorm everywhere
        ("model.num_groups", m.num_groups, GROUPS),
        ("model.dropout_max_resolution", m.dropout_max_resolution, 0),  # EDM: every block
        ("method.name", method.name, "edm"),  # the import is an EDM diffusion run
        ("method.noise_label", method.noise_label, "log_sigma_over_4"),  # EDMPrecond's c_noise
        ("method.sigma_data", method.sigma_data, precond["sigma_data"]),
    ]
    if model_class == "DhariwalUNet":
        required += [(f"model.{k}", m[k], v) for k, v in ADM_FIXED.items()]
        required.append(("model.resample_filter", list(m.resample_filter), [1, 1]))
    if full.get("embedding_type") == "fourier":
        required.append(("model.fourier_param", bool(m.fourier_param), True))
    for field, ours, theirs in required:
        if not _same(ours, theirs):
            raise ValueError(
                f"{source} needs {field}={theirs!r} (EDMPrecond({model_class})) but the config "
                f"has {ours!r}; set --config.{field}={_flag(theirs)}{hint}."
            )
    label_dim = precond.get("label_dim", 0)
    if label_dim != full.get("label_dim", 0):
        raise ValueError(
            f"{source} is inconsistent: EDMPrecond and its network differ in label_dim."
        )


def network_facts(config) -> dict:
    """The attributes EDM's modules record that cm's network fixes by its fields, for the
    per-module checks of name_map: GroupNorm eps, skip scale, adaptive scale, heads."""
    net = build_model(config)
    return dict(
        norm_eps=net.norm_eps,
        skip_scale=net.skip_scale,
        adaptive_scale=net.adaptive_scale,
        head_channels=net.head_channels,
        num_groups=net.num_groups,
        positional_endpoint=net.positional_endpoint,
        max_positions=MAX_POSITIONS,
        resample_filter=tuple(net.resample_filter),
    )
