"""The name map between EDM's torch networks and `cm`'s Flax U-Net, with its layout changes.

cm's module names follow EDM's (cm/models/unet.py), so the map is a rule, not a table:

  Flax                                  EDM (inside EDMPrecond, hence the `model.` prefix)
  map_noise/freqs                       model.map_noise.freqs  (NCSN++ buffer; fourier_param)
  map_{label,augment,layer0,layer1}     model.map_*            (Linear)
  enc_<R>x<R>_<name>/..., dec_...       model.enc.<R>x<R>_<name>..., model.dec....
    block norm0, norm1, conv0, conv1, skip, affine: same names; attn/norm -> norm2,
    attn/qkv -> qkv, attn/proj -> proj
  out_norm, out_conv                    SongUNet: model.dec.<R>x<R>_aux_norm / _aux_conv
                                        (R: the input resolution); DhariwalUNet:
                                        model.out_norm / model.out_conv

Leaves: kernel/scale -> weight, bias -> bias. Layouts: conv OIHW -> HWIO; Linear [out, in] ->
Dense [in, out]; attention's 1x1 convs -> Dense; qkv's output channels reordered, since EDM
splits them as (head, channel, q/k/v) and cm as (q/k/v, head, channel).

`plan` builds, from shapes alone, one Entry per Flax leaf and checks that every leaf finds
its EDM tensor with the right shape, that every EDM tensor is used exactly once (the resampling
filter buffers by a check of their values), and that the attributes EDM records per module
(GroupNorm groups and eps, heads, skip scale, adaptive scale, the positional embedding) equal
what the config's network computes; the first difference is one ValueError sentence. `apply`
then moves the arrays.
"""

import dataclasses
import math

import jax
import numpy as np

from cm.models.norms import group_count

PREFIX = "model."  # EDMPrecond keeps the network as `model`
LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias", "freqs": "freqs"}
ATTENTION_NAMES = {"norm": "norm2", "qkv": "qkv", "proj": "proj"}
FILTER_BUFFER = "resample_filter"  # EDM's Conv2d keeps its normalized 2D FIR kernel here


@dataclasses.dataclass(frozen=True)
class Entry:
    """Flax leaf `flax_path` <- EDM tensor `edm_name`, through `transform` (TRANSFORMS)."""

    flax_path: tuple
    edm_name: str
    transform: str
    heads: int = 1  # qkv only


def _qkv_order(channels: int, heads: int) -> np.ndarray:
    """[3C] EDM output channel for each cm output channel.

    cm reads qkv as (3, heads, C/heads): channel j*C + h*d + i; EDM as (heads, C/heads, 3):
    channel h*3d + 3i + j (d = C/heads, j = 0, 1, 2 for q, k, v).
    """
    d = channels // heads
    j, rest = np.divmod(np.arange(3 * channels), channels)
    h, i = np.divmod(rest, d)
    return h * 3 * d + 3 * i + j


TRANSFORMS = {
    "copy": lambda w, heads: w,
    "conv": lambda w, heads: w.transpose(2, 3, 1, 0),  # [O, I, kh, kw] -> [kh, kw, I, O]
    "linear": lambda w, heads: w.T,  # [O, I] -> [I, O]
    "conv1x1_linear": lambda w, heads: w[:, :, 0, 0].T,  # [O, I, 1, 1] -> [I, O]
    "qkv_kernel": lambda w, heads: w[_qkv_order(w.shape[1], heads), :, 0, 0].T,
    "qkv_bias": lambda w, heads: w[_qkv_order(w.shape[0] // 3, heads)],
}


def torch_shape(transform: str, flax_shape: tuple) -> tuple:
    """The shape the EDM tensor must have to give a Flax leaf of `flax_shape`."""
    s = tuple(flax_shape)
    if transform == "conv":
        return (s[3], s[2], s[0], s[1])
    if transform == "linear":
        return (s[1], s[0])
    if transform in ("conv1x1_linear", "qkv_kernel"):
        return (s[1], s[0], 1, 1)
    return s


def edm_module(path: tuple, model_class: str, resolution: int) -> str:
    """EDM's dotted module path (with `model.`) of a Flax module path such as
    ('dec_16x16_block0', 'attn', 'qkv')."""
    top, rest = path[0], list(path[1:])
    if top.startswith(("enc_", "dec_")):
        base = f"{top[:3]}.{top[4:]}"
    elif top in ("out_norm", "out_conv") and model_class == "SongUNet":
        base = f"dec.{resolution}x{resolution}_aux_{top[4:]}"
    else:
        base = top
    if rest[:1] == ["attn"]:
        rest = [ATTENTION_NAMES[rest[1]], *rest[2:]]
    return PREFIX + ".".join([base, *rest])


def _transform(path: tuple, ndim: int) -> str:
    leaf, parent = path[-1], path[-2] if len(path) > 1 else ""
    in_attention = len(path) > 2 and path[-3] == "attn"
    if leaf == "kernel" and in_attention:
        return "qkv_kernel" if parent == "qkv" else "conv1x1_linear"
    if leaf == "bias" and in_attention and parent == "qkv":
        return "qkv_bias"
    if leaf == "kernel":
        return "conv" if ndim == 4 else "linear"
    return "copy"


def _heads(facts: dict, channels: int) -> int:
    """Attention heads of cm's SelfAttention at this width (blocks.py)."""
    hc = facts["head_channels"]
    return max(1, channels // hc) if hc > 0 else 1


def filter_kernel(resample_filter) -> np.ndarray:
    """[1, 1, k, k] outer(f, f) / sum(f)^2: what EDM's Conv2d stores for resampling."""
    f = np.asarray(resample_filter, np.float64)
    return (np.outer(f, f) / f.sum() ** 2)[None, None]


class _Checker:
    """Accumulates the plan and stops at the first difference with one sentence."""

    def __init__(self, source, hint, shapes, modules, facts):
        self.source, self.hint = source, hint
        self.shapes, self.modules, self.facts = shapes, modules, facts
        self.used: set = set()

    def fail(self, text: str):
        raise ValueError(f"{self.source}: {text}{self.hint}.")

    def take(self, name: str, shape: tuple, flax_path: tuple):
        where = "/".join(flax_path)
        if name not in self.shapes:
            self.fail(f"the file has no {name} for the config's {where} {shape}")
        if name in self.used:
            self.fail(f"{name} would fill two leaves of the config's network ({where})")
        if tuple(self.shapes[name]) != tuple(shape):
            self.fail(
                f"{name} has shape {tuple(self.shapes[name])} where the config's network "
                f"needs {tuple(shape)} (for {where})"
            )
        self.used.add(name)

    def attr(self, module: str, key: str, ours, what: str):
        info = self.modules.get(module)
        theirs = None if info is None else info.attrs.get(key)
        same = (
            math.isclose(theirs, ours, rel_tol=1e-6)
            if isinstance(theirs, float | int) and not isinstance(theirs, bool)
            else theirs == ours
        )
        if not same:
            self.fail(
                f"{module}.{key} is {theirs!r} but the config's network has {ours!r} ({what})"
            )


def _check_norm(c: _Checker, edm: str, leaves: dict):
    """The per-module attributes EDM records, against cm's network."""
    f = c.facts
    if "scale" in leaves:  # a GroupNorm
        channels = leaves["scale"][0]
        c.attr(edm, "num_groups", group_count(channels, f["num_groups"]), "GroupNorm groups")
        c.attr(edm, "eps", f["norm_eps"], "GroupNorm eps")


def _check_block(c: _Checker, name: str, edm: str, block: dict):
    """A residual block: heads (0 without attention), skip scale, adaptive scale."""
    f = c.facts
    heads = 0
    if "attn" in block:
        heads = _heads(f, block["attn"]["proj"]["kernel"].shape[0])
    c.attr(edm, "num_heads", heads, f"attention heads of {name}")
    c.attr(edm, "skip_scale", f["skip_scale"], "residual skip scale")
    c.attr(edm, "adaptive_scale", f["adaptive_scale"], "scale-shift conditioning")


def plan(
    flax_shapes,
    edm_shapes: dict,
    modules: dict,
    facts: dict,
    model_class: str,
    resolution: int,
    source: str,
    hint: str = "",
) -> list[Entry]:
    """One Entry per Flax leaf of `flax_shapes` (a params tree of arrays or ShapeDtypeStructs);
    raises one ValueError at the first leaf, tensor or module attribute that does not match.

    edm_shapes: {state-dict name: shape} of the file's EDMPrecond; modules: {module path:
    reader.ModuleInfo}; facts: architecture.network_facts(config).
    """
    c = _Checker(source, hint, edm_shapes, modules, facts)
    entries = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(flax_shapes)[0]:
        keys = tuple(k.key for k in path)
        module = edm_module(keys[:-1], model_class, resolution)
        name = f"{module}.{LEAF_NAMES[keys[-1]]}"
        transform = _transform(keys, len(leaf.shape))
        heads = _heads(facts, leaf.shape[0]) if transform.startswith("qkv") else 1
        c.take(name, torch_shape(transform, leaf.shape), keys)
        entries.append(Entry(keys, name, transform, heads))
    _check_modules(c, flax_shapes, model_class, resolution)
    _check_filters(c)
    left = [n for n in edm_shapes if n not in c.used]
    if left:
        c.fail(
            f"{left[0]} {tuple(edm_shapes[left[0]])} has no place in the config's network "
            f"({len(left)} such tensors); the file and the config describe different networks"
        )
    return entries


def _check_modules(c: _Checker, flax_shapes, model_class: str, resolution: int):
    for top, sub in flax_shapes.items():
        edm = edm_module((top,), model_class, resolution)
        if "scale" in sub:
            _check_norm(c, edm, {k: v.shape for k, v in sub.items()})
        if "conv0" in sub:  # a residual block
            _check_block(c, top, edm, sub)
            for part, leaves in sub.items():
                if part == "attn":
                    norm = leaves["norm"]
                    _check_norm(c, f"{edm}.norm2", {k: v.shape for k, v in norm.items()})
                elif "scale" in leaves:
                    _check_norm(c, f"{edm}.{part}", {k: v.shape for k, v in leaves.items()})
    noise = c.modules.get(PREFIX + "map_noise")
    if noise is not None and noise.class_name == "PositionalEmbedding":
        c.attr(
            PREFIX + "map_noise",
            "endpoint",
            c.facts["positional_endpoint"],
            "positional embedding endpoint",
        )
        c.attr(
            PREFIX + "map_noise",
            "max_positions",
            c.facts["max_positions"],
            "positional embedding range",
        )


def _check_filters(c: _Checker):
    """Every resampling conv's filter buffer has the size of the config's model.resample_filter
    (its values: check_filter_values); the buffers are used by this check, not copied."""
    expected = filter_kernel(c.facts["resample_filter"])
    for name, shape in c.shapes.items():
        if name.rsplit(".", 1)[-1] != FILTER_BUFFER:
            continue
        if tuple(shape) != expected.shape:
            c.fail(
                f"{name} is a {tuple(shape)} filter but the config's model.resample_filter="
                f"{c.facts['resample_filter']} gives {expected.shape}"
            )
        c.used.add(name)


def check_filter_values(tensors: dict, resample_filter, source: str, hint: str = ""):
    """The values of every resampling filter buffer equal outer(f, f) / sum(f)^2."""
    expected = filter_kernel(resample_filter)
    for name, value in tensors.items():
        if name.rsplit(".", 1)[-1] == FILTER_BUFFER and not np.allclose(value, expected, atol=1e-7):
            raise ValueError(
                f"{source}: {name} is not the filter of model.resample_filter="
                f"{tuple(resample_filter)}{hint}."
            )


def apply(entries: list[Entry], tensors: dict) -> dict:
    """The Flax params tree (float32 numpy arrays) that the plan fills from `tensors`."""
    params: dict = {}
    for e in entries:
        node = params
        for key in e.flax_path[:-1]:
            node = node.setdefault(key, {})
        value = TRANSFORMS[e.transform](np.asarray(tensors[e.edm_name]), e.heads)
        node[e.flax_path[-1]] = np.ascontiguousarray(value, dtype=np.float32)
    return params
