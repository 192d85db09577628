"""The Flax AutoencoderKL equals diffusers' torch AutoencoderKL with the same random weights,
and the diffusers-format safetensors loader maps every weight both ways.

torch and diffusers are test-only dependencies (requirements-dev.txt).
"""

import jax
import numpy as np
import pytest

from cm.models import count_params, vae, vae_weights

torch = pytest.importorskip("torch")

# A tiny VAE with the SD structure: 2 levels (f = 2), 2 resnets per encoder level (3 per decoder
# level), a channel change with its 1x1 shortcut on both sides, mid attention.
TINY = vae.VAEConfig(block_out_channels=(8, 16), layers_per_block=2, norm_num_groups=4)


def _torch_vae(cfg: vae.VAEConfig, seed: int = 0):
    """diffusers' AutoencoderKL of architecture `cfg`, with random weights and biases that
    move every norm away from the identity."""
    # diffusers imports torchvision when it is installed; the pinned CPU torch cannot load
    # torchvision's compiled operators, and the VAE does not need them.
    from diffusers.utils import import_utils

    import_utils._torchvision_available = False
    from diffusers import AutoencoderKL

    levels = len(cfg.block_out_channels)
    torch.manual_seed(seed)
    model = AutoencoderKL(
        in_channels=cfg.image_channels,
        out_channels=cfg.image_channels,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups,
    ).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _state(model) -> dict:
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


@pytest.fixture(scope="module")
def reference():
    model = _torch_vae(TINY)
    return model, vae_weights.from_state_dict(_state(model), TINY)


def test_sd_vae_parameter_count():
    # diffusers' AutoencoderKL with the SD VAE config has 83,653,863 parameters (counted with
    # diffusers 0.42.1 when this test was written).
    shapes = jax.eval_shape(lambda: vae.init_params(vae.VAEConfig(), jax.random.key(0)))
    assert count_params(shapes) == 83_653_863
    assert vae.VAEConfig().downsampling_factor == 8


def test_encoder_and_decoder_match_diffusers(reference):
    torch_model, params = reference
    model = vae.AutoencoderKL(TINY)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32)  # [B, H, W, 3]
    z = rng.normal(size=(2, 4, 4, 4)).astype(np.float32)  # [B, h, w, latent]
    with torch.no_grad():
        posterior = torch_model.encode(_nchw(x)).latent_dist
        want_mean, want_logvar = _nhwc(posterior.mean), _nhwc(posterior.logvar)
        want_image = _nhwc(torch_model.decode(_nchw(z)).sample)

    @jax.jit
    def encode_and_decode(p, x, z):
        return model.apply({"params": p}, x, method="encode"), model.apply(
            {"params": p}, z, method="decode"
        )

    (mean, logvar), image = encode_and_decode(params, x, z)
    assert mean.shape == (2, 4, 4, 4) and image.shape == (2, 8, 8, 3)
    assert np.abs(want_mean).max() > 0.1 and np.abs(want_image).max() > 0.1  # not degenerate
    np.testing.assert_allclose(mean, want_mean, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(logvar, want_logvar, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(image, want_image, atol=2e-5, rtol=1e-4)
    # One posterior sample: mean + exp(logvar / 2) * noise, as diffusers' sample().
    noise = rng.normal(size=mean.shape).astype(np.float32)
    got = vae.posterior_sample(mean, logvar, noise)
    np.testing.assert_allclose(got, want_mean + np.exp(0.5 * want_logvar) * noise, atol=1e-4)


def test_safetensors_round_trip_both_ways(reference, tmp_path):
    from safetensors.torch import load_file, save_file

    torch_model, params = reference
    path = str(tmp_path / "diffusion_pytorch_model.safetensors")
    save_file(torch_model.state_dict(), path)  # a diffusers-format file written by torch
    loaded = vae_weights.load(path, TINY)
    jax.tree.map(np.testing.assert_array_equal, loaded, params)
    # Our writer gives back exactly the file's tensors, under the same names.
    ours = str(tmp_path / "ours.safetensors")
    vae_weights.save(loaded, ours)
    back = load_file(ours)
    state = torch_model.state_dict()
    assert set(back) == set(state)
    for k, v in state.items():
        np.testing.assert_array_equal(back[k].numpy(), v.numpy(), err_msg=k)


def test_legacy_attention_names_load(reference):
    torch_model, params = reference
    renames = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    legacy = {}
    for key, value in _state(torch_model).items():
        for new, old in renames.items():
            if f".{new}." in key:
                key = key.replace(f".{new}.", f".{old}.")
                value = value[..., None, None] if value.ndim == 2 else value  # 1x1 conv form
        legacy[key] = value
    jax.tree.map(np.testing.assert_array_equal, vae_weights.from_state_dict(legacy, TINY), params)


def test_missing_or_mismatched_weights_are_one_sentence(reference, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"vae.weights_path=.*sd-vae-ft-mse"):
        vae_weights.load(str(tmp_path / "absent.safetensors"), TINY)
    torch_model, _ = reference
    state = _state(torch_model)
    state.pop("decoder.conv_out.bias")
    state["encoder.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=r"1 parameters missing .*decoder.conv_out.bias.* 1 unex"):
        vae_weights.from_state_dict(state, TINY)
    wider = vae.VAEConfig(block_out_channels=(8, 32), layers_per_block=2, norm_num_groups=4)
    with pytest.raises(ValueError, match=r"has shape .* set the vae\.\* architecture fields"):
        vae_weights.from_state_dict(_state(torch_model), wider)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        vae_weights.load(str(broken), TINY)
