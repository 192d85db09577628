"""The latent dataset file that --mode=encode writes and `data.name = "latents"` reads.

One .npz holds
  latents  float32 [N, h, w, c]  scale_factor * one VAE posterior sample per image
  labels   int32 [N]             the image dataset's labels (zeros if unlabelled)
  mean     float32 [h, w, c]     per-element mean of `latents` over the dataset
  std      float32 [h, w, c]     per-element standard deviation (ddof 0) of `latents`
  scale_factor, num_classes      scalars; num_classes of the image dataset
Training sees x = (latents - mean) / std * latent_std (sLCT: std 0.5, docs/methods.md section 3);
decoding undoes both steps (`unstandardize`, then division by scale_factor).
"""

import numpy as np

from cm.io import fileio

FIELDS = ("latents", "labels", "mean", "std", "scale_factor", "num_classes")


def image_data(config):
    """The data config of the real images: vae.images for a latent run (data.name = "latents",
    whose samples are decoded to those images), data otherwise. FID references use it."""
    return config.vae.images if config.data.name == "latents" else config.data


def standardize(z, mean, std, latent_std: float):
    """Scaled latents [..., h, w, c] -> the network's data space (per-element std latent_std)."""
    return (z - mean) / std * latent_std


def unstandardize(x, mean, std, latent_std: float):
    """The inverse of `standardize`: the network's data space -> scaled latents."""
    return x / latent_std * std + mean


def statistics(latents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-element mean and std (float64 accumulation) of latents [N, h, w, c] -> [h, w, c]."""
    z = latents.astype(np.float64)
    mean = z.mean(axis=0)
    std = np.sqrt(np.mean(np.square(z - mean), axis=0))
    return mean.astype(np.float32), std.astype(np.float32)


def write(path: str, latents: np.ndarray, labels: np.ndarray, scale_factor: float, classes: int):
    """Writes the latent dataset with its statistics; atomic (a partial file never appears: one
    upload on object stores)."""
    mean, std = statistics(latents)
    if not np.all(std > 0):
        raise ValueError(
            f"The {len(latents)} encoded latents have zero spread in some elements, so they "
            "cannot be standardized: encode a dataset of more than one distinct image."
        )
    fileio.save_npz_atomic(
        path,
        latents=latents.astype(np.float32),
        labels=labels.astype(np.int32),
        mean=mean,
        std=std,
        scale_factor=np.float32(scale_factor),
        num_classes=np.int32(classes),
    )


def read_stats(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) float32 [h, w, c] of a latent dataset file, without reading the latents."""
    _check(path)
    stats = fileio.load_npz(path, keys=("mean", "std"))
    return stats["mean"], stats["std"]


def _check(path: str) -> None:
    if not path or not fileio.is_file(path):
        raise FileNotFoundError(
            f"No latent dataset at data.path={path!r}: write it first with the same --config "
            "and --mode=encode (it encodes the images of vae.images)."
        )


class LatentSource:
    """Random access to a latent dataset, standardized per element to std `latent_std`."""

    def __init__(self, path: str, latent_std: float):
        _check(path)
        f = fileio.load_npz(path)
        missing = [k for k in FIELDS if k not in f]
        if missing:
            raise ValueError(
                f"{path} lacks {missing}, so it is not a latent dataset of --mode=encode; "
                "write it again with --mode=encode."
            )
        z, mean, std = f["latents"], f["mean"], f["std"]
        self.labels = f["labels"].astype(np.int32)  # [N]
        self.num_classes = max(int(f["num_classes"]), 1)
        self.latents = standardize(z, mean, std, latent_std).astype(np.float32)  # [N, h, w, c]

    def __len__(self) -> int:
        return len(self.latents)

    def get(self, indices):
        """Standardized latents float32 [n, h, w, c] and labels int32 [n]."""
        return self.latents[indices], self.labels[indices]


def load_source(data_config) -> LatentSource:
    """The `latents` entry of cm.data.LOADERS."""
    return LatentSource(data_config.path, data_config.latent_std)
