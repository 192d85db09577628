"""--mode=encode: an image dataset -> the latent dataset that data.name = "latents" reads.

Every image of config.vae.images -> scale_factor * one VAE posterior sample -> the file at
config.data.path with its per-element mean and std (cm/data/latent_data.py). Data parallel over all
devices of all processes, with a progress line; progress is saved every vae.part_images images
in <data.path>.parts/, so a killed encode resumes with the same command. The final file
appears atomically (cm/io/fileio.py: a rename on disk, one upload on a bucket, where a rename
would be a copy), and the parts are deleted after it.
"""

import json

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cm import experiment, latents
from cm.data import latent_data, sources
from cm.io import fileio, progress
from cm.models import vae_weights


def _check_latent_config(config) -> None:
    if config.data.name != "latents":
        raise ValueError(
            f"--mode=encode writes the latent dataset that data.name='latents' reads, but "
            f"data.name={config.data.name!r}: use a latent config (configs/common.py latent_data)."
        )
    if not config.data.path:
        raise ValueError(
            "--mode=encode needs data.path, the latent dataset file to write: set "
            "--config.data.path=LATENTS.npz."
        )
    want = latents.latent_shape(config)
    got = experiment.image_shape(config)
    if got != want:
        raise ValueError(
            f"The VAE turns {config.vae.images.image_size} px images into latents of shape "
            f"{want} but data.image_size and data.channels give {got}; set them to match."
        )


def _image_source(config):
    """The images to encode; errors name the vae.images fields, not the data fields."""
    try:
        return sources.load_source(config.vae.images)
    except (ValueError, FileNotFoundError) as e:
        raise type(e)(str(e).replace("data.", "vae.images.")) from None


def _global_batch(config, devices: int) -> int:
    """vae.batch_size rounded up to a multiple of the device count."""
    return -(-config.vae.batch_size // devices) * devices


def _parts_dir(config) -> str:
    return config.data.path + ".parts"


def _part_path(parts_dir: str, start: int, stop: int) -> str:
    return str(fileio.path(parts_dir) / f"part_{start:010d}_{stop:010d}.npz")


def _encode_settings(config, num_images: int) -> dict:
    """What the saved parts depend on; parts written under other settings are discarded.
    As JSON reads it back (tuples become lists), so that equal settings compare equal."""
    v = config.vae
    settings = {
        "images": v.images.to_dict(),
        "num_images": num_images,
        "weights_path": str(fileio.local_absolute(v.weights_path)),
        "scale_factor": v.scale_factor,
        "seed": v.seed,
        "part_images": v.part_images,
    }
    return json.loads(json.dumps(settings, default=str))


def _prepare_parts(parts_dir: str, settings: dict) -> None:
    """Keeps parts saved under the same settings; starts over otherwise (process 0 only)."""
    meta = fileio.path(parts_dir) / "settings.json"
    if jax.process_index() == 0 and _stale(meta, settings):
        fileio.rmtree(parts_dir)
        fileio.makedirs(parts_dir)
        fileio.write_json_atomic(meta, settings)
    multihost_utils.sync_global_devices("cm.latents.prepare_parts")


def _stale(meta, settings: dict) -> bool:
    """No parts yet, or parts of other settings: start over."""
    return not fileio.is_file(meta) or fileio.read_json(meta) != settings


def encode(config, workdir: str):
    """--mode=encode: the latent dataset of config.vae.images -> config.data.path."""
    del workdir  # the latent dataset lives at data.path, shared by every run that trains on it
    _check_latent_config(config)
    out = config.data.path
    if fileio.is_file(out):
        print(f"{out} exists; delete it to encode again.")
        return out
    source = _image_source(config)
    cfg = latents.model_config(config)
    params = vae_weights.load(config.vae.weights_path, cfg)
    mesh = experiment.make_mesh()
    params = latents.replicate(params, mesh)
    encoder = latents.make_encoder(cfg, config.vae.scale_factor, config.vae.seed, mesh)
    batch = _global_batch(config, mesh.size)
    if batch % jax.process_count():
        raise ValueError(
            f"vae.batch_size rounded to the devices ({batch}) must divide over the "
            f"{jax.process_count()} processes; set vae.batch_size to a multiple of the devices."
        )
    n, part = len(source), config.vae.part_images
    parts_dir = _parts_dir(config)
    _prepare_parts(parts_dir, _encode_settings(config, n))
    # a bar on a terminal, a line every ~10 % in a log file; parts saved earlier count as done
    report = progress.reporter("encode", "images") if jax.process_index() == 0 else _quiet
    for start in range(0, n, part):
        stop = min(start + part, n)
        path = _part_path(parts_dir, start, stop)
        if not fileio.is_file(path):
            z, labels = _encode_range(source, encoder, params, mesh, start, stop, batch, n, report)
            if jax.process_index() == 0:
                fileio.save_npz_atomic(path, latents=z, labels=labels)
        else:
            report(stop, n)
    multihost_utils.sync_global_devices("cm.latents.parts_written")
    if jax.process_index() == 0:
        z, labels = _read_parts(parts_dir, n, part)
        classes = config.vae.images.num_classes or source.num_classes
        latent_data.write(out, z, labels, config.vae.scale_factor, classes)  # one upload
        fileio.rmtree(parts_dir)  # only after the final file is complete
        print(f"{n} latents of shape {z.shape[1:]} -> {out}")
    multihost_utils.sync_global_devices("cm.latents.done")
    return out


def _encode_range(source, encoder, params, mesh, start, stop, batch: int, n: int, report):
    """Latents float32 [stop - start, h, w, c] and labels of images [start, stop)."""
    p, count = jax.process_index(), jax.process_count()
    local = batch // count
    sharding = NamedSharding(mesh, P("data"))
    zs, ys = [], []
    for first in range(start, stop, batch):
        # The padded tail repeats image n - 1; its rows are dropped below.
        indices = np.minimum(np.arange(first, first + batch), n - 1)  # [batch]
        rows = indices[p * local : (p + 1) * local]
        pics, labels = source.get(rows)  # uint8 [local, H, W, C]
        pics = pics.astype(np.float32) / 127.5 - 1.0
        z = encoder(
            params,
            jax.make_array_from_process_local_data(sharding, pics),
            jax.make_array_from_process_local_data(sharding, rows.astype(np.int32)),
        )
        z = multihost_utils.process_allgather(z, tiled=True)  # [batch, h, w, c]
        y = multihost_utils.process_allgather(labels.astype(np.int32), tiled=True)
        keep = min(batch, stop - first)
        zs.append(np.asarray(z)[:keep])
        ys.append(np.asarray(y)[:keep])
        report(first + keep, n)
    return np.concatenate(zs), np.concatenate(ys)


def _read_parts(parts_dir: str, n: int, part: int):
    zs, ys = [], []
    for start in range(0, n, part):
        f = fileio.load_npz(_part_path(parts_dir, start, min(start + part, n)))
        zs.append(f["latents"])
        ys.append(f["labels"])
    return np.concatenate(zs), np.concatenate(ys)


def _quiet(done: int, total: int):
    """The progress report of the processes other than 0: nothing."""
