"""cm's EDM import against EDM's own torch networks; outside the test suite (it needs torch and
an NVlabs/edm checkout, which cm does not ship). BENCHMARKS.md, "EDM checkpoint import
(issue 14)", has the numbers.

    git clone https://github.com/NVlabs/edm /tmp/edm   # commit 008a4e5
    python -m benchmarks.edm_import_check --edm=/tmp/edm [--full] [--manifest=PATH]

For each network EDM's code builds an EDMPrecond with random weights (every parameter redrawn,
so that no layer is zero), EDM's torch_utils.persistence pickles it the way EDM's training loop
writes its snapshots (a dict with ema, loss_fn, augment_pipe and dataset_kwargs), `cm` imports
the file with its restricted reader (cm/edm_import), and cm's network F and denoiser D are
compared with EDM's on the same random inputs: noise levels from 0.002 to 80, random labels,
with and without augmentation labels. `--full` adds the published architectures at full size.
`--manifest=PATH` writes the module tree (classes, attributes, tensor names and shapes) of every
network checked, the reference tests/test_edm_import.py builds its EDM-format files from.
"""

import argparse
import gzip
import io
import json
import os
import pickle
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from cm import experiment
from cm.edm_import import load
from cm.models import count_params
from configs import cifar10_edm, imagenet64_edm

SIGMAS = (0.002, 0.1, 1.0, 10.0, 80.0)
BATCH = len(SIGMAS)
SEED = 0

# name -> (cm config, its overrides, EDMPrecond keyword arguments as EDM's train.py passes them)
_DDPMPP = dict(
    model_type="SongUNet",
    embedding_type="positional",
    encoder_type="standard",
    decoder_type="standard",
    channel_mult_noise=1,
    resample_filter=[1, 1],
)
_NCSNPP = dict(
    model_type="SongUNet",
    embedding_type="fourier",
    encoder_type="residual",
    decoder_type="standard",
    channel_mult_noise=2,
    resample_filter=[1, 3, 3, 1],
)
_TINY_SONG = dict(model_channels=32, channel_mult=[1, 2, 2], num_blocks=2, attn_resolutions=[8])
_TINY_OVERRIDES = {
    "data.image_size": 16,
    "model.channels": 32,
    "model.channel_mult": (1, 2, 2),
    "model.num_blocks": 2,
    "model.attn_resolutions": (8,),
}
_CIFAR = dict(model_channels=128, channel_mult=[2, 2, 2], augment_dim=9, dropout=0.13)
NETWORKS = {
    "ddpmpp_tiny": (
        "configs/cifar10_edm.py:cond",
        _TINY_OVERRIDES,
        dict(
            img_resolution=16,
            img_channels=3,
            label_dim=10,
            **_DDPMPP,
            **_TINY_SONG,
            augment_dim=9,
            dropout=0.13,
            use_fp16=False,
        ),
    ),
    "ncsnpp_tiny": (
        "configs/cifar10_edm.py:ve",
        _TINY_OVERRIDES,
        dict(
            img_resolution=16,
            img_channels=3,
            label_dim=0,
            **_NCSNPP,
            **_TINY_SONG,
            augment_dim=9,
            dropout=0.13,
            use_fp16=False,
        ),
    ),
    # The smallest one, for the suite's end-to-end test of --mode=import and --mode=sample.
    "ddpmpp_micro": (
        "configs/cifar10_edm.py:cond",
        {
            "data.image_size": 8,
            "model.channels": 16,
            "model.channel_mult": (1, 2),
            "model.num_blocks": 1,
            "model.attn_resolutions": (4,),
        },
        dict(
            img_resolution=8,
            img_channels=3,
            label_dim=10,
            **_DDPMPP,
            model_channels=16,
            channel_mult=[1, 2],
            num_blocks=1,
            attn_resolutions=[4],
            augment_dim=9,
            dropout=0.13,
            use_fp16=False,
        ),
    ),
    "adm_tiny": (
        "configs/imagenet64_edm.py",
        {
            "data.image_size": 16,
            "data.num_classes": 5,
            "model.channels": 64,
            "model.channel_mult": (1, 2),
            "model.num_blocks": 2,
            "model.attn_resolutions": (8,),
            "model.augment_dim": 9,
        },
        dict(
            img_resolution=16,
            img_channels=3,
            label_dim=5,
            model_type="DhariwalUNet",
            model_channels=64,
            channel_mult=[1, 2],
            num_blocks=2,
            attn_resolutions=[8],
            augment_dim=9,
            dropout=0.10,
            use_fp16=False,
        ),
    ),
}
FULL = {
    "cifar10_uncond_vp": (
        "configs/cifar10_edm.py",
        {},
        dict(img_resolution=32, img_channels=3, label_dim=0, **_DDPMPP, **_CIFAR, use_fp16=False),
    ),
    "cifar10_cond_ve": (
        "configs/cifar10_edm.py:ve_cond",
        {},
        dict(img_resolution=32, img_channels=3, label_dim=10, **_NCSNPP, **_CIFAR, use_fp16=False),
    ),
    "imagenet64_cond_adm": (
        "configs/imagenet64_edm.py",
        {},
        dict(
            img_resolution=64,
            img_channels=3,
            label_dim=1000,
            model_type="DhariwalUNet",
            model_channels=192,
            channel_mult=[1, 2, 3, 4],
            dropout=0.10,
            use_fp16=True,
        ),
    ),
}
CONFIGS = {
    "configs/cifar10_edm.py": lambda: cifar10_edm.get_config(),
    "configs/cifar10_edm.py:cond": lambda: cifar10_edm.get_config("cond"),
    "configs/cifar10_edm.py:ve": lambda: cifar10_edm.get_config("ve"),
    "configs/cifar10_edm.py:ve_cond": lambda: cifar10_edm.get_config("ve_cond"),
    "configs/imagenet64_edm.py": lambda: imagenet64_edm.get_config(),
}


def make_config(name: str, overrides: dict):
    c = CONFIGS[name]()
    for dotted, value in overrides.items():
        section, field = dotted.split(".")
        c[section][field] = value
    return c


def edm_modules(edm_path: str):
    """EDM's training/networks.py, loss.py and augment.py, imported from the checkout."""
    sys.path.insert(0, edm_path)
    from training import augment, loss, networks  # noqa: PLC0415 (EDM's code, not cm's)

    return networks, loss, augment


def randomize(torch, net, seed: int):
    """Redraw every parameter (EDM zero-initializes layers, which would hide a wrong map)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.ndim > 1:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / np.sqrt(fan_in))
            elif name.endswith("weight"):  # GroupNorm scale
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def snapshot_bytes(net, loss, augment) -> bytes:
    """The dict EDM's training loop pickles (training/training_loop.py), with EDM's own
    persistence doing the pickling of every network object."""
    data = dict(
        ema=net,
        loss_fn=loss.EDMLoss(),
        augment_pipe=augment.AugmentPipe(
            p=0.12, xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1
        ),
        dataset_kwargs=dict(class_name="training.dataset.ImageFolderDataset", path="x.zip"),
    )
    return pickle.dumps(data)


def _encode(value):
    """Plain JSON for a module attribute; numpy scalars keep their type."""
    if isinstance(value, np.generic):
        return {"__numpy__": value.dtype.name, "value": value.item()}
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    return value


def manifest_entry(torch, net, config_name: str, overrides: dict, full: bool) -> dict:
    """Module tree of `net`: per module its path, class, attributes, init kwargs (root and
    model, or all for tiny networks), parameters and buffers (shape or None, small buffers with
    their values), and submodule names in order."""
    modules = []
    for path, module in net.named_modules():
        params = {k: (None if v is None else list(v.shape)) for k, v in module._parameters.items()}
        buffers = {}
        for k, v in module._buffers.items():
            if v is None:
                buffers[k] = None
            elif v.numel() <= 16:
                buffers[k] = {"shape": list(v.shape), "values": v.flatten().tolist()}
            else:
                buffers[k] = {"shape": list(v.shape)}
        attrs = {
            k: _encode(v)
            for k, v in vars(module).items()
            if not k.startswith("_")
            and isinstance(v, bool | int | float | str | list | tuple | np.generic | type(None))
        }
        entry = {
            "path": path,
            "class": type(module).__name__,
            "torch_container": not hasattr(module, "_init_kwargs"),
            "attrs": attrs,
            "params": params,
            "buffers": buffers,
            "children": [k for k, v in module._modules.items()],
        }
        if hasattr(module, "_init_kwargs") and (not full or path in ("", "model")):
            entry["init_kwargs"] = _encode(module._init_kwargs)
        modules.append(entry)
    return {"config": config_name, "overrides": overrides, "modules": modules}


def compare(torch, net, config, params, seed: int, with_augment: bool) -> dict:
    """Max |difference| and max |difference| / max |EDM| of F and D on random inputs."""
    rng = np.random.default_rng(seed)
    res, ch = config.data.image_size, config.data.channels
    x = rng.standard_normal((BATCH, res, res, ch)).astype(np.float32) * np.float32(10.0)
    sigma = np.asarray(SIGMAS, np.float32)
    classes = experiment.num_label_classes(config)
    labels = rng.integers(0, classes, BATCH) if classes else None
    aug_dim = config.model.augment_dim
    aug = rng.standard_normal((BATCH, aug_dim)).astype(np.float32) if with_augment else None
    exp = experiment.build(config)

    onehot = None
    if labels is not None:
        onehot = torch.nn.functional.one_hot(torch.as_tensor(labels), classes).float()
    xt = torch.as_tensor(x.transpose(0, 3, 1, 2))
    extra = {} if aug is None else {"augment_labels": torch.as_tensor(aug)}
    with torch.no_grad():
        d_edm = net(xt, torch.as_tensor(sigma), onehot, **extra).numpy().transpose(0, 2, 3, 1)
        s = torch.as_tensor(sigma).reshape(-1, 1, 1, 1)
        c_in = 1 / (0.5**2 + s**2).sqrt()
        f_edm = net.model(c_in * xt, (s.log() / 4).flatten(), onehot, **extra)
        f_edm = f_edm.numpy().transpose(0, 2, 3, 1)
    jl = None if labels is None else jnp.asarray(labels)
    ja = None if aug is None else jnp.asarray(aug)
    d_cm = np.asarray(exp.denoise(params, jnp.asarray(x), jnp.asarray(sigma), jl, False, None, ja))
    c_in_np = (1 / np.sqrt(0.25 + sigma**2))[:, None, None, None]
    extra_cm = {} if ja is None else {"augment_labels": ja}
    f_cm = np.asarray(
        exp.model.apply(
            {"params": params},
            jnp.asarray(c_in_np * x),
            jnp.log(jnp.asarray(sigma)) / 4,
            jl,
            train=False,
            **extra_cm,
        )
    )
    out = {}
    for key, ours, theirs in (("F", f_cm, f_edm), ("D", d_cm, d_edm)):
        diff = float(np.abs(ours - theirs).max())
        out[key] = (diff, diff / float(np.abs(theirs).max()))
    return out


def check(torch, modules, name, spec, seed, forward=True) -> dict:
    networks, loss, augment = modules
    config_name, overrides, kwargs = spec
    torch.manual_seed(seed)
    net = networks.EDMPrecond(**kwargs)
    randomize(torch, net, seed)
    net = net.eval().requires_grad_(False)
    data = snapshot_bytes(net, loss, augment)
    config = make_config(config_name, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"{name}.pkl")
        with open(path, "wb") as f:
            f.write(data)
        start = time.time()
        network = load.read_network(path)
        exp = experiment.build(config)
        shapes = experiment.param_shapes(exp, config)
        params = load.flax_params(config, network, shapes)
        seconds = time.time() - start
    torch_count = sum(p.numel() for p in net.parameters())
    row = dict(
        name=name,
        config=config_name + "".join(f" {k}={v}" for k, v in overrides.items()),
        file_mb=len(data) / 2**20,
        tensors=len(network.tensors),
        edm_params=torch_count,
        cm_params=count_params(params),
        import_s=seconds,
    )
    if forward:
        params = jax.tree.map(jnp.asarray, params)
        row["no_aug"] = compare(torch, net, config, params, seed + 1, False)
        if config.model.augment_dim:
            row["aug"] = compare(torch, net, config, params, seed + 2, True)
    return row, net


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--edm", required=True, help="an NVlabs/edm checkout")
    parser.add_argument("--full", action="store_true", help="also the full-size networks")
    parser.add_argument("--full_forward", action="store_true", help="and run them (slow)")
    parser.add_argument("--manifest", default="", help="write the module trees here (.json.gz)")
    args = parser.parse_args()
    import torch  # noqa: PLC0415 (outside the suite only)

    jax.config.update("jax_default_matmul_precision", "highest")
    modules = edm_modules(args.edm)
    specs = dict(NETWORKS)
    if args.full:
        specs.update(FULL)
    manifest = {
        "generator": "python -m benchmarks.edm_import_check --edm=EDM --full --manifest=PATH "
        "(NVlabs/edm 008a4e5, torch " + torch.__version__ + ")",
        "networks": {},
    }
    for i, (name, spec) in enumerate(specs.items()):
        full = name in FULL
        row, net = check(torch, modules, name, spec, SEED + 10 * i, not full or args.full_forward)
        print(json.dumps(row))
        manifest["networks"][name] = manifest_entry(torch, net, spec[0], spec[1], full)
    if args.manifest:
        buffer = io.BytesIO()
        with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as f:
            f.write(json.dumps(manifest, sort_keys=True).encode())
        with open(args.manifest, "wb") as f:
            f.write(buffer.getvalue())
        print(f"wrote {args.manifest} ({len(buffer.getvalue())} bytes)")


if __name__ == "__main__":
    main()
