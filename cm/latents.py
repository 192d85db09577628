"""Latent space (sLCT, docs/methods.md section 3): the VAE pieces a latent run uses.

`make_encoder`: images -> scale_factor * one posterior sample (image i draws its noise from
key i of the "vae_posterior" stream of vae.seed, cm/keys.py, so latents do not depend on the
batch size or the device count);
--mode=encode (cm/encode.py) runs it over a dataset.
`LatentDecoding` wraps the samplers of a latent run so that they return images: network
output -> unstandardize -> / scale_factor -> VAE decoder, inside the same jitted per-device
program.
"""

import functools

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cm import keys
from cm.data import latent_data
from cm.io import fileio
from cm.models import vae, vae_weights

_DECODER_PARTS = ("post_quant_conv", "decoder")  # the parameters decoding needs


def model_config(config) -> vae.VAEConfig:
    return vae.vae_config(config.vae, config.vae.images.channels)


def latent_shape(config) -> tuple[int, int, int]:
    """(h, w, c) of the latents of config.vae.images."""
    cfg = model_config(config)
    size = config.vae.images.image_size
    if size % cfg.downsampling_factor:
        raise ValueError(
            f"vae.images.image_size={size} is not a multiple of the VAE's downsampling factor "
            f"{cfg.downsampling_factor}; resize the images to a multiple."
        )
    h = size // cfg.downsampling_factor
    return (h, h, cfg.latent_channels)


@functools.cache  # one compiled encoder per setting, also across resumed encodes
def make_encoder(cfg: vae.VAEConfig, scale_factor: float, seed: int, mesh):
    """jit fn(params, images [B, H, W, C] in [-1, 1], indices int32 [B]) -> scaled latents
    [B, h, w, c], with batch arrays sharded over 'data' and parameters replicated."""
    model = vae.AutoencoderKL(cfg)
    base = keys.stream(seed, "vae_posterior")

    def encode(params, images, indices):
        mean, logvar = model.apply({"params": params}, images, method="encode")  # [B, h, w, c]
        keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(indices)  # [B]
        noise = jax.vmap(lambda k: jax.random.normal(k, mean.shape[1:]))(keys)  # [B, h, w, c]
        return scale_factor * vae.posterior_sample(mean, logvar, noise)

    data_sharded = NamedSharding(mesh, P("data"))
    return jax.jit(
        encode,
        in_shardings=(NamedSharding(mesh, P()), data_sharded, data_sharded),
        out_shardings=data_sharded,
    )


def replicate(tree, mesh):
    """Host numpy arrays -> global arrays replicated over `mesh` (any number of processes;
    every process holds the same values)."""
    sharding = NamedSharding(mesh, P())

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(put, tree)


class LatentDecoding:
    """Turns the per-device and parallel samplers of a latent run into image samplers.

    `per_device(sample_fn)` decodes inside the per-device program: its params are
    {'net': network params, 'vae': decoder params}. `bind(parallel)` supplies the decoder
    params (loaded from vae.weights_path on first use), so callers pass network params only.
    """

    def __init__(self, config, mesh):
        self.cfg = model_config(config)
        self.mean, self.std = latent_data.read_stats(config.data.path)  # [h, w, c] each
        self.latent_std = config.data.latent_std
        self.scale_factor = config.vae.scale_factor
        self.weights_path = config.vae.weights_path
        self.mesh = mesh
        if not fileio.is_file(self.weights_path):  # fail at start-up, not at the first grid
            raise FileNotFoundError(
                f"No VAE weights at vae.weights_path={self.weights_path!r} to decode samples: "
                f"{vae_weights.WEIGHTS_HELP}."
            )

    def decode(self, vae_params, x):
        """Network outputs [B, h, w, c] -> images [B, f h, f w, 3], about [-1, 1]."""
        z = latent_data.unstandardize(x, self.mean, self.std, self.latent_std)
        model = vae.AutoencoderKL(self.cfg)
        return model.apply({"params": vae_params}, z / self.scale_factor, method="decode")

    def per_device(self, sample_fn):
        def sample_and_decode(params, rng, labels, shape):
            return self.decode(params["vae"], sample_fn(params["net"], rng, labels, shape))

        return sample_and_decode

    @functools.cached_property
    def params(self):
        full = vae_weights.load(self.weights_path, self.cfg)
        decoder = {k: full[k] for k in _DECODER_PARTS}
        return replicate(decoder, self.mesh)

    def bind(self, parallel):
        def sampler(params, rng, global_batch, ordered=False):
            return parallel({"net": params, "vae": self.params}, rng, global_batch, ordered)

        return sampler
