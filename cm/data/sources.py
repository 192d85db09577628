"""Training images: where they come from (the batch at a step is cm/data/batches.py's).

Sources (`config.data.name`, one loader each in `LOADERS`):
  digits  scikit-learn's 8x8 digits with labels, shipped inside scikit-learn, so the demo
          downloads nothing; split "train" = the first 1500 images, "test" = the other 297.
  tfds    a tensorflow_datasets dataset prepared beforehand in the array_record format and read
          by random access (`tfds.data_source`); each process reads only its own rows.
  npz     an .npz file with 'images' uint8 [N,H,W,C] (or [N,H,W]) and optional integer 'labels'
          [N] in [0, data.num_classes).
  folder  a folder of png/jpg/jpeg/webp files, searched recursively; class subfolders give
          labels; every file is checked when the source is opened (an unreadable one is an
          error then, not mid-training); each image is center-cropped, resized and decoded
          when first read.
  latents a latent dataset written by --mode=encode (cm/data/latent_data.py), standardized floats.
Files are read through cm/io/fileio.py, so data.path may be local or on a bucket (gs://).

Every source is random access (`Source.get(indices)`), so the order of the data is ours to
choose: cm/data/batches.py makes the batch at a step a pure function of (seed, step).
"""

from __future__ import annotations

import functools
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np

from cm.data import latent_data
from cm.io import fileio

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
DIGITS_TRAIN_SIZE = 1500  # digits "train" = images [0, 1500), "test" = [1500, 1797)
_CHECK_THREADS = 16  # folder images checked at once when the source is opened (I/O bound)
_NAMED_BAD_FILES = 3  # how many unreadable files the error names (it also gives their count)


class Source(Protocol):
    """Random access to N labelled images."""

    num_classes: int  # labels lie in [0, num_classes); 1 for unlabelled data (all zeros)

    def __len__(self) -> int: ...

    def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Images uint8 [n,H,W,C] (latents: float32) and labels int32 [n] (zeros if unlabelled)
        at `indices` [n]."""
        ...


class ArraySource:
    """Images and labels held in memory (digits, npz)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray | None = None):
        if images.ndim == 3:
            images = images[..., None]  # [N,H,W] -> [N,H,W,1]
        self.images = images  # uint8 [N,H,W,C]
        n = len(images)
        self.labels = np.zeros(n, np.int32) if labels is None else labels.astype(np.int32)  # [N]
        self.num_classes = int(self.labels.max()) + 1 if n else 1

    def __len__(self) -> int:
        return len(self.images)

    def get(self, indices):
        return self.images[indices], self.labels[indices]


class TfdsSource:
    """Random access to one split of a prepared tfds dataset (array_record files)."""

    def __init__(self, data_source, num_classes: int):
        self._ds = data_source  # tfds ArrayRecordDataSource: records are dicts of numpy arrays
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self._ds)

    def get(self, indices):
        keys = [int(i) for i in indices]
        getitems = getattr(self._ds, "__getitems__", None)  # one batched read where available
        records = getitems(keys) if getitems else [self._ds[k] for k in keys]
        images = np.stack([np.asarray(r["image"], np.uint8) for r in records])  # [n,H,W,C]
        if images.ndim == 3:
            images = images[..., None]
        labels = np.array([r.get("label", 0) for r in records], np.int32)  # [n]
        return images, labels


class FolderSource:
    """Image files under a folder; decoded lazily per index, with an in-memory cache.

    If every image lies inside a subfolder, the label is the index of its top-level subfolder
    in sorted order (an ImageNet-style layout); otherwise every label is 0.
    """

    def __init__(self, root: str, image_size: int, channels: int, cache_bytes: int = 1 << 30):
        relative = [r for r in fileio.walk_files(root) if r.lower().endswith(IMAGE_EXTENSIONS)]
        self.paths = [str(fileio.path(root) / r) for r in relative]
        parts = [r.split("/") for r in relative]
        labelled = bool(parts) and all(len(q) > 1 for q in parts)  # every file in a subfolder
        self.class_names = sorted({q[0] for q in parts}) if labelled else []
        index = {name: i for i, name in enumerate(self.class_names)}
        self.labels = np.array([index.get(q[0], 0) for q in parts], np.int32)  # [N]
        self.num_classes = max(len(self.class_names), 1)
        self.image_size, self.mode = image_size, {1: "L", 3: "RGB"}[channels]
        # Cache decoded images up to cache_bytes: a small folder is read from disk only once.
        cache_size = max(1, cache_bytes // (image_size * image_size * channels))
        self._load = functools.lru_cache(maxsize=cache_size)(self._load_uncached)

    def __len__(self) -> int:
        return len(self.paths)

    def _load_uncached(self, i: int) -> np.ndarray:
        from PIL import Image

        try:
            with fileio.open_file(self.paths[i]) as f, Image.open(f) as im:
                im = im.convert(self.mode)
                w, h = im.size
                s = min(w, h)
                box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
                size = (self.image_size, self.image_size)
                im = im.resize(size, Image.Resampling.LANCZOS, box=box)  # center crop + resize
                x = np.asarray(im, np.uint8)
        except (OSError, SyntaxError, ValueError) as e:  # damaged after the check at opening
            raise ValueError(
                f"The image file {self.paths[i]} cannot be decoded ({e}); delete or replace it "
                "and run the same command again."
            ) from None
        return x[..., None] if x.ndim == 2 else x  # [S,S,C]

    def get(self, indices):
        images = np.stack([self._load(int(i)) for i in indices])  # [n,S,S,C]
        return images, self.labels[indices]


def _load_digits(cfg) -> Source:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # [1797,8,8] in 0..255
    splits = {"train": slice(0, DIGITS_TRAIN_SIZE), "test": slice(DIGITS_TRAIN_SIZE, None)}
    if cfg.split not in splits:
        raise ValueError(
            f"data.split={cfg.split!r} is not a digits split; use one of {list(splits)}."
        )
    s = splits[cfg.split]
    source = ArraySource(images[s], digits.target[s])
    source.num_classes = 10
    return source


def tfds_prepare_command(name: str, data_dir: str) -> str:
    """The shell command that prepares tfds dataset `name` under `data_dir` for random access."""
    return f"tfds build {name} --data_dir={data_dir} --file_format=array_record"


def _load_tfds(cfg) -> Source:
    import tensorflow_datasets as tfds

    if not cfg.tfds_name:
        raise ValueError("data.name='tfds' needs data.tfds_name, e.g. 'cifar10'.")
    try:
        builder = tfds.builder(cfg.tfds_name, data_dir=cfg.tfds_dir or None)
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(
            f"data.tfds_name={cfg.tfds_name!r} is not a tfds dataset; see the catalog at "
            "https://www.tensorflow.org/datasets/catalog/overview."
        ) from None
    root = str(builder.data_dir_root)
    python_cmd = (
        f"python -c \"import tensorflow_datasets as tfds; tfds.builder('{cfg.tfds_name}', "
        f"data_dir='{root}', file_format='array_record').download_and_prepare()\""
    )
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"tfds dataset {cfg.tfds_name!r} is not prepared in {root}: prepare it on a machine "
            f"with internet with `{tfds_prepare_command(cfg.tfds_name, root)}` "
            f"(or `{python_cmd}`), copy {root} to where every process can read it and set "
            "data.tfds_dir to it."
        )
    file_format = str(getattr(builder.info.file_format, "value", builder.info.file_format))
    if file_format != "array_record":
        raise ValueError(
            f"tfds dataset {cfg.tfds_name!r} in {builder.data_dir} is stored as {file_format}, "
            "which has no random access: prepare it again into another data.tfds_dir with "
            f"`{tfds_prepare_command(cfg.tfds_name, '<DIR>')}`."
        )
    if any(part.split("[")[0] not in builder.info.splits for part in cfg.split.split("+")):
        raise ValueError(
            f"data.split={cfg.split!r} is not a split of {cfg.tfds_name!r}; "
            f"use one of {sorted(builder.info.splits)}."
        )
    features = builder.info.features
    # A ClassLabel feature knows its number of classes; unlabelled data reads as label 0.
    num_classes = getattr(features["label"], "num_classes", 1) if "label" in features else 1
    return TfdsSource(builder.as_data_source(split=cfg.split), num_classes)


def _load_npz(cfg) -> Source:
    expected = "'images' uint8 [N,H,W,C] or [N,H,W] and optional 'labels' int [N]"
    if not cfg.path or not fileio.is_file(cfg.path):
        raise FileNotFoundError(f"data.path={cfg.path!r} is not an .npz file with {expected}.")
    try:
        arrays = fileio.load_npz(cfg.path)
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise ValueError(
            f"data.path={cfg.path!r} is not a readable .npz file ({e}); write it with np.savez "
            f"and {expected}."
        ) from None
    images, labels = arrays.get("images"), arrays.get("labels")
    if images is None or images.dtype != np.uint8 or images.ndim not in (3, 4):
        found = {k: f"{v.dtype}{list(v.shape)}" for k, v in arrays.items()}
        raise ValueError(f"{cfg.path} holds {found}; it needs {expected}.")
    if labels is not None:
        _check_labels(cfg, labels, len(images))
    return ArraySource(images, labels)


def _check_labels(cfg, labels: np.ndarray, num_images: int) -> None:
    """Refuses labels that are not one class index in [0, data.num_classes) per image, when the
    file is opened: a float label would be truncated, a -1 would index the last class."""
    where = f"data.path={cfg.path!r}"
    if labels.shape != (num_images,):
        raise ValueError(
            f"{where} has labels of shape {list(labels.shape)} for {num_images} images; store "
            f"one class index per image, 'labels' int [{num_images}]."
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{where} has labels of dtype {labels.dtype}, not integers; store the class "
            "indices as an integer array (float labels are refused rather than truncated)."
        )
    if not num_images:
        return
    low, high, classes = int(labels.min()), int(labels.max()), cfg.num_classes
    if low < 0 or (classes and high >= classes):
        allowed = f"[0, {classes})" if classes else "[0, ...)"
        raise ValueError(
            f"{where} has labels from {low} to {high}, outside {allowed} of "
            f"data.num_classes={classes}; fix the labels or set data.num_classes to the "
            "number of classes."
        )


def _unreadable(path: str) -> bool:
    """True if `path` cannot be read as an image: PNG files are checked chunk by chunk against
    their checksums (Image.verify), other formats are decoded at reduced size (JPEG's draft
    mode), which finds truncated files that verify does not."""
    from PIL import Image

    try:
        with fileio.open_file(path) as f, Image.open(f) as im:
            if im.format == "PNG":
                im.verify()
            else:
                im.draft(im.mode, (1, 1))
                im.load()
    except Exception:  # PIL reports damage as OSError, SyntaxError, ValueError, struct.error...
        return True
    return False


def _load_folder(cfg) -> Source:
    if not cfg.path or not fileio.is_dir(cfg.path):
        raise FileNotFoundError(f"data.path={cfg.path!r} is not a folder of image files.")
    if cfg.channels not in (1, 3):
        raise ValueError(f"data.channels={cfg.channels} must be 1 (grayscale) or 3 (RGB).")
    source = FolderSource(cfg.path, cfg.image_size, cfg.channels)
    if not len(source):
        raise FileNotFoundError(f"data.path={cfg.path!r} holds no {'/'.join(IMAGE_EXTENSIONS)}.")
    with ThreadPoolExecutor(_CHECK_THREADS) as pool:
        unreadable = list(pool.map(_unreadable, source.paths))
    bad = [p for p, b in zip(source.paths, unreadable, strict=True) if b]
    if bad:
        more = ", ..." if len(bad) > _NAMED_BAD_FILES else ""
        named = ", ".join(bad[:_NAMED_BAD_FILES]) + more
        raise ValueError(
            f"data.path={cfg.path!r} holds {len(bad)} image files that cannot be read ({named}); "
            "delete or replace them."
        )
    return source


LOADERS: dict[str, Callable[..., Source]] = {
    "digits": _load_digits,
    "tfds": _load_tfds,
    "npz": _load_npz,
    "folder": _load_folder,
    "latents": latent_data.load_source,
}


def image_shape(data_config) -> tuple[int, int, int]:
    """(H, W, C) of the images the config asks for."""
    return (data_config.image_size, data_config.image_size, data_config.channels)


def load_source(data_config) -> Source:
    """The `Source` named by `data_config.name`, checked against the configured image shape."""
    if data_config.name not in LOADERS:
        raise ValueError(f"data.name={data_config.name!r} is unknown; use one of {list(LOADERS)}.")
    source = LOADERS[data_config.name](data_config)
    if not len(source):
        raise ValueError(f"data.name={data_config.name!r} gave an empty dataset.")
    got = source.get(np.array([0]))[0].shape[1:]
    want = image_shape(data_config)
    if got != want:
        raise ValueError(
            f"The {data_config.name} images have shape {got} but the config expects {want}; "
            "set data.image_size and data.channels to match the data."
        )
    if data_config.num_classes and source.num_classes > data_config.num_classes:
        raise ValueError(
            f"The {data_config.name} data has {source.num_classes} classes but "
            f"data.num_classes={data_config.num_classes}; raise it (or set 0 for no labels)."
        )
    return source
