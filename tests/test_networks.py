"""The paper networks at full size: exact parameter counts, output shapes, norms, conditioning.

Everything here runs under `jax.eval_shape`, so nothing is compiled or allocated: a 296 M
parameter ADM costs a trace of a second or two. The expected counts are those of the reference
implementations (EDM's training/networks.py; guided-diffusion's UNetModel gives the same ADM
numbers), measured with PyTorch as written in BENCHMARKS.md ("Networks").
"""

import functools

import jax
import jax.numpy as jnp
import pytest

from cm import experiment, modes
from cm.models import build_model, count_params
from configs import cifar10_edm, cifar10_ict, common, imagenet64_ict


def slct(norm="nsln"):
    c = common.slct_latent_model(common.base_config())
    c.data.num_classes = 0  # CelebA-HQ: unconditional
    c.model.norm = norm
    return c


def _without_augment(c):
    c.model.augment_dim = 0
    return c


def _with_augment(c):
    c.model.augment_dim = 9
    return c


CONFIGS = {
    "cifar10_ict": (lambda: cifar10_ict.get_config(), 56_395_523),  # NCSN++
    "cifar10_ict:deep": (lambda: cifar10_ict.get_config("deep"), 97_610_499),
    # DDPM++ with EDM's augmentation layer: 55,732,739 + 9 * 128 (bias-free map_augment).
    "cifar10_edm": (lambda: cifar10_edm.get_config(), 55_733_891),
    "ddpmpp": (lambda: _without_augment(cifar10_edm.get_config()), 55_732_739),
    "imagenet64_ict": (lambda: imagenet64_ict.get_config(), 295_899_267),  # ADM, conditional
    # ADM with augment_dim 9: + 9 * 192 (EDM's DhariwalUNet(..., augment_dim=9) has 295,900,995).
    "imagenet64_ict:augment": (lambda: _with_augment(imagenet64_ict.get_config()), 295_900_995),
    "slct_latent:group": (lambda: slct("group"), 151_325_956),
    "slct_latent:nsln": (lambda: slct("nsln"), 158_355_972),  # NsLN biases are H x W x C
}


@functools.cache
def abstract_params_and_output(name: str):
    """(parameter shapes, output shape) of CONFIGS[name]'s network: one trace, nothing computed,
    cached for the tests that share a network."""
    config = CONFIGS[name][0]()
    model = build_model(config)
    h, w, c = experiment.image_shape(config)
    labels = jnp.zeros((2,), jnp.int32) if experiment.num_label_classes(config) else None
    x = jax.ShapeDtypeStruct((2, h, w, c), jnp.float32)
    init = lambda k, x: model.init_with_output(k, x, jnp.zeros(2), labels, train=False)
    out, variables = jax.eval_shape(init, jax.random.key(0), x)
    return variables["params"], out


@pytest.mark.parametrize("name", list(CONFIGS))
def test_parameter_count_and_shape(name):
    make, expected = CONFIGS[name]
    config = make()
    params, out = abstract_params_and_output(name)
    assert count_params(params) == expected
    shape = (2, config.data.image_size, config.data.image_size, config.data.channels)
    assert out.shape == shape and out.dtype == jnp.float32
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params))


def test_summary_mode_prints_the_reference_count(capsys):
    """`launch.py --mode=summary` prints the per-module table ending in 'parameters: N'."""
    table = modes.summary(cifar10_ict.get_config(), "unused")
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == table.splitlines()[-1] == "parameters: 56395523"
    assert ["enc_32x32_conv", str(3 * 128 * 9 + 128)] in [line.split() for line in lines]


def test_nsln_replaces_every_norm_of_adm():
    """sLCT: no GroupNorm scale anywhere, and every norm's bias spans its (H, W, C) input."""
    params, _ = abstract_params_and_output("slct_latent:nsln")
    paths = jax.tree_util.tree_leaves_with_path(params)
    assert not [p for p, _ in paths if "scale" in jax.tree_util.keystr(p)]
    norms = [
        (jax.tree_util.keystr(p), s.shape) for p, s in paths if "norm" in jax.tree_util.keystr(p)
    ]
    # 44 blocks (19 encoder, 25 decoder), 19 attentions (8 encoder, in0, 10 decoder), output.
    assert len(norms) == 2 * 44 + 19 + 1
    assert all(len(shape) == 3 for _, shape in norms)
    assert params["enc_8x8_block0"]["attn"]["norm"]["bias"].shape == (8, 8, 384)
    assert params["out_norm"]["bias"].shape == (32, 32, 128)


def test_paper_network_structure():
    """The config values reach the networks: NCSN++ options, ADM class conditioning and
    dropout only at 16x16 and below."""
    ncsnpp = build_model(cifar10_ict.get_config())
    assert (ncsnpp.encoder_type, ncsnpp.resample_filter, ncsnpp.noise_mult) == (
        "residual",
        (1, 3, 3, 1),
        2,
    )
    assert (ncsnpp.embedding, ncsnpp.fourier_scale, ncsnpp.head_channels) == ("fourier", 0.02, 0)
    adm = build_model(imagenet64_ict.get_config())
    assert (adm.num_classes, adm.dropout, adm.dropout_max_resolution) == (1000, 0.2, 16)
    assert (adm.mapping, adm.adaptive_scale, adm.head_channels, adm.norm_eps) == (
        "adm",
        True,
        64,
        1e-5,
    )
    params, _ = abstract_params_and_output("imagenet64_ict")
    assert params["map_label"]["kernel"].shape == (1000, 768) and "map_augment" not in params
    assert params["dec_32x32_block0"]["attn"]["qkv"]["kernel"].shape == (384, 3 * 384)


def test_augment_layer_is_a_bias_free_map_into_the_noise_embedding():
    """EDM's map_augment: Linear(augment_dim, noise channels, bias=False) for both U-Nets."""
    ddpmpp, _ = abstract_params_and_output("cifar10_edm")
    assert set(ddpmpp["map_augment"]) == {"kernel"}
    assert ddpmpp["map_augment"]["kernel"].shape == (9, 128)  # noise embedding: 128 channels
    adm, _ = abstract_params_and_output("imagenet64_ict:augment")
    assert set(adm["map_augment"]) == {"kernel"} and adm["map_augment"]["kernel"].shape == (9, 192)
