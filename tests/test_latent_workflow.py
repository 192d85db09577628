"""The latent workflow end to end on a tiny random VAE: --mode=encode (resumed after a kill),
training on the standardized latents, and sampling that decodes to images."""

import os

import jax
import numpy as np
import pytest
from helpers import tiny_config

from cm import encode, experiment, keys, latents, modes
from cm.data import latent_data
from cm.models import vae, vae_weights
from configs.common import latent_data as latent_config

pytestmark = pytest.mark.slow  # trains or launches processes

NUM_IMAGES = 12
SCALE = 0.18215  # docs/methods.md section 3


def _config(tmp_path):
    """Tiny: 8x8 RGB images, 3 classes -> a 2-level VAE (f = 2) -> 4x4x4 latents."""
    c = tiny_config()
    c.vae.block_out_channels = (8, 16)
    c.vae.layers_per_block = 1
    c.vae.norm_num_groups = 4
    c.vae.weights_path = str(tmp_path / "vae.safetensors")
    c.vae.batch_size = 5  # rounded up to 8 on the 4 devices: the last batch is padded
    c.vae.part_images = 8  # two parts: [0, 8) and [8, 12)
    c.vae.images.name = "npz"
    c.vae.images.path = str(tmp_path / "images.npz")
    c.vae.images.image_size = 8
    c.vae.images.channels = 3
    c.vae.images.num_classes = 3
    latent_config(c, str(tmp_path / "latents.npz"))
    c.model.channel_mult = (1,)  # one level: the network's compile time dominates the test
    c.model.attn_resolutions = ()
    c.training.num_steps = 1
    c.training.checkpoint_every = 1
    c.training.snapshot_every = 0
    c.training.power_ema_stds = ()
    c.sampling.consistency_levels = ((0.821,),)  # 2 steps: two network calls, then decoding
    return c


def _random_vae_params(cfg, seed: int):
    """Random VAE parameters drawn with numpy (a compiled Flax init takes far longer on the
    CPU): fan-in scaled kernels, norm scales near 1, small biases."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda: vae.init_params(cfg, jax.random.key(0)))

    def draw(path, leaf):
        name = path[-1].key
        if name == "kernel":
            return rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
        return (name == "scale") + 0.1 * rng.normal(size=leaf.shape)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def _write_inputs(c):
    """Random VAE weights in diffusers format, and smooth random images with labels."""
    cfg = latents.model_config(c)
    vae_weights.save(_random_vae_params(cfg, 3), c.vae.weights_path)
    rng = np.random.default_rng(0)
    coarse = rng.uniform(0, 255, (NUM_IMAGES, 2, 2, 3))
    images = np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2)  # [N, 8, 8, 3]
    images = (images + rng.uniform(-20, 20, images.shape)).clip(0, 255).astype(np.uint8)
    labels = np.arange(NUM_IMAGES) % 3
    np.savez(c.vae.images.path, images=images, labels=labels)
    return images, labels


def _expected_latents(c, images):
    """scale * (mean + exp(logvar / 2) * noise_i), noise_i from key i of the "vae_posterior"
    stream of vae.seed (cm/keys.py), computed
    on all images at once (encode works in padded batches of 8 over 4 devices)."""
    cfg = latents.model_config(c)
    params = vae_weights.load(c.vae.weights_path, cfg)
    x = images.astype(np.float32) / 127.5 - 1.0
    apply = jax.jit(lambda p, x: vae.AutoencoderKL(cfg).apply({"params": p}, x, method="encode"))
    mean, logvar = apply(params, x)
    noise = np.stack(
        [
            jax.random.normal(keys.indexed(c.vae.seed, "vae_posterior", i), mean.shape[1:])
            for i in range(len(x))
        ]
    )
    return SCALE * (np.asarray(mean) + np.exp(0.5 * np.asarray(logvar)) * noise)


def test_encode_train_sample_decode(tmp_path, monkeypatch, capsys):
    c = _config(tmp_path)
    images, labels = _write_inputs(c)

    # A kill after the first part: the part stays, the latent dataset does not appear yet.
    encode_range = encode._encode_range
    calls = []

    def killed_after_first_part(*args):
        if calls:
            raise KeyboardInterrupt
        calls.append(args[4:6])
        return encode_range(*args)

    monkeypatch.setattr(encode, "_encode_range", killed_after_first_part)
    with pytest.raises(KeyboardInterrupt):
        modes.run("encode", c, str(tmp_path))
    assert not os.path.exists(c.data.path)
    assert os.listdir(c.data.path + ".parts") != []
    # The same command resumes: only the second part is encoded.
    resumed = []
    monkeypatch.setattr(
        encode, "_encode_range", lambda *a: resumed.append(a[4:6]) or encode_range(*a)
    )
    modes.run("encode", c, str(tmp_path))
    assert calls == [(0, 8)] and resumed == [(8, 12)]
    assert not os.path.exists(c.data.path + ".parts")
    assert "encode: 12/12 images" in capsys.readouterr().out

    with np.load(c.data.path) as f:
        stored = {k: f[k] for k in f.files}
    assert stored["latents"].shape == (NUM_IMAGES, 4, 4, 4)
    np.testing.assert_allclose(stored["latents"], _expected_latents(c, images), atol=2e-5)
    np.testing.assert_array_equal(stored["labels"], labels)
    np.testing.assert_allclose(stored["mean"], stored["latents"].mean(0), atol=1e-6)
    np.testing.assert_allclose(stored["std"], stored["latents"].std(0), atol=1e-6)
    assert int(stored["num_classes"]) == 3

    # Training data: per-element mean 0 and std data.latent_std = 0.5.
    source = latent_data.LatentSource(c.data.path, c.data.latent_std)
    x, y = source.get(np.arange(NUM_IMAGES))
    np.testing.assert_allclose(x.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(x.std(0), 0.5, atol=1e-5)

    # Decoding undoes the standardization and the scale, then runs the VAE decoder.
    exp = experiment.build(c)
    decoding = latents.LatentDecoding(c, exp.mesh)
    cfg = latents.model_config(c)

    @jax.jit
    def ours_and_by_hand(decoder_params, full_params, x, z):
        by_hand = vae.AutoencoderKL(cfg).apply({"params": full_params}, z / SCALE, method="decode")
        return decoding.decode(decoder_params, x), by_hand

    full = vae_weights.load(c.vae.weights_path, cfg)
    got, want = ours_and_by_hand(decoding.params, full, x, stored["latents"])
    assert got.shape == (NUM_IMAGES, 8, 8, 3)
    np.testing.assert_allclose(got, want, atol=1e-5)

    # Train on the latents, then sample images.
    modes.run("train", c, str(tmp_path))
    written = modes.run("sample", c, str(tmp_path))
    assert set(written) == {"2step"} and "2step_step00000001.png" in os.listdir(
        tmp_path / "samples"
    )
    for pics, sample_labels in written.values():
        assert pics.dtype == np.uint8 and pics.shape == (8, 8, 8, 3)  # images, not latents
        assert sample_labels.shape == (8,) and sample_labels.max() < 3
        assert pics.std() > 0


def test_latent_user_errors(tmp_path):
    c = _config(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"No latent dataset .* --mode=encode"):
        latent_data.LatentSource(c.data.path, 0.5)
    plain = tiny_config()
    with pytest.raises(ValueError, match=r"--mode=encode writes .* data.name='digits'"):
        encode.encode(plain, str(tmp_path))
    c.data.image_size = 8
    with pytest.raises(ValueError, match=r"latents of shape \(4, 4, 4\) .* \(8, 8, 4\)"):
        encode.encode(c, str(tmp_path))
    c.data.image_size = 4
    with pytest.raises(FileNotFoundError, match=r"vae.images.path=.* is not an .npz file"):
        encode.encode(c, str(tmp_path))
    np.savez(c.vae.images.path, images=np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match=r"No VAE weights at vae.weights_path=.*sd-vae"):
        encode.encode(c, str(tmp_path))


def test_latent_file_statistics_and_standardization(tmp_path):
    z = np.array([[1.0, -2.0], [3.0, 2.0], [5.0, 0.0]], np.float32)[..., None, None]  # [3, 2, 1, 1]
    path = str(tmp_path / "latents.npz")
    latent_data.write(path, z, np.array([0, 1, 1]), 0.5, 2)
    mean, std = latent_data.read_stats(path)
    np.testing.assert_allclose(mean[:, 0, 0], [3.0, 0.0])  # by hand
    s = np.sqrt(8 / 3)  # both columns: squared deviations sum to 8 over 3 rows
    np.testing.assert_allclose(std[:, 0, 0], [s, s], rtol=1e-6)
    source = latent_data.LatentSource(path, latent_std=0.25)
    x, y = source.get(np.array([0, 2]))  # (z - mean) / std * 0.25
    np.testing.assert_allclose(x[:, :, 0, 0], [[-0.5 / s, -0.5 / s], [0.5 / s, 0.0]], rtol=1e-6)
    np.testing.assert_array_equal(y, [0, 1])
    assert source.num_classes == 2
    back = latent_data.unstandardize(x, mean, std, 0.25)
    np.testing.assert_allclose(back, z[[0, 2]], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="zero spread"):
        latent_data.write(path, z[:1], np.zeros(1), 0.5, 1)


def test_fid_reference_of_a_latent_run_reads_the_images(tmp_path):
    from cm.evaluation import reference_stats

    c = _config(tmp_path)
    assert latent_data.image_data(c) is c.vae.images
    assert reference_stats.stats_path(c, "W").endswith("fid_stats/npz-images.npz-train-8px.npz")
    assert latent_data.image_data(tiny_config()).name == "digits"
