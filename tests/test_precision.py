"""The evaluation networks (FID Inception, SD VAE) run at full float32 precision on any device,
and GroupNorm uses the two-pass variance, as PyTorch does (docs/methods.md section 7).

On a CPU every float32 matmul is exact float32 anyway, so a numeric test could not fail here:
the tests read the precision that each convolution and matmul carries in the traced program,
which is what a GPU (TF32 by default) or a TPU (bfloat16 passes by default) would honour.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cm.evaluation import inception, inception_metric
from cm.models import vae
from cm.models.norms import make_norm

MATMULS = ("conv_general_dilated", "dot_general")
HIGHEST = (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST)


def _matmul_precisions(jaxpr):
    """[(primitive name, precision param)] of every conv and dot in a jaxpr and the jaxprs
    nested in its equations (jit, custom_jvp, ...)."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in MATMULS:
            found.append((eqn.primitive.name, eqn.params.get("precision")))
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple | list) else (value,):
                inner = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
                if hasattr(inner, "eqns"):
                    found.extend(_matmul_precisions(inner))
    return found


def _assert_all_highest(fn, *args, at_least: int):
    found = _matmul_precisions(jax.make_jaxpr(fn)(*args).jaxpr)
    assert len(found) >= at_least, found  # the walk sees the whole network
    assert all(p == HIGHEST for _, p in found), {str(p) for _, p in found}


@pytest.mark.slow
def test_fid_inception_features_run_every_matmul_at_highest_precision():
    variables = jax.eval_shape(inception.init_variables, jax.random.key(0))
    images = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.uint8)
    # 94 convolutions (stem 5, 3 x A 7, B 4, 4 x C 10, D 6, 2 x E 9) and the classifier.
    _assert_all_highest(inception_metric.inception_features, variables, images, at_least=95)
    # An explicit precision is kept even inside a lower device default.
    with jax.default_matmul_precision("bfloat16"):
        _assert_all_highest(inception_metric.inception_features, variables, images, at_least=95)


TINY = vae.VAEConfig(block_out_channels=(8, 16), layers_per_block=2, norm_num_groups=4)


@pytest.mark.parametrize("method", ["encode", "decode"])
def test_vae_encoder_and_decoder_run_every_matmul_at_highest_precision(method):
    model = vae.AutoencoderKL(TINY)
    params = jax.eval_shape(lambda: vae.init_params(TINY, jax.random.key(0)))
    if method == "encode":
        x = jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32)
    else:
        x = jax.ShapeDtypeStruct((1, 4, 4, TINY.latent_channels), jnp.float32)

    def apply(p, x):
        return model.apply({"params": p}, x, method=method)

    # Each side: conv_in, 2 or 3 convs per resnet, the resampling, mid block (2 resnets, 4
    # dense + 2 einsums), conv_out and the 1x1 (post-)quant conv: well over 15.
    _assert_all_highest(apply, params, x, at_least=15)


def _group_norm_float64(x: np.ndarray, groups: int, eps: float) -> np.ndarray:
    """GroupNorm (scale 1, bias 0) of float32 x [B, H, W, C], computed in float64."""
    b, h, w, c = x.shape
    g = x.astype(np.float64).reshape(b, h, w, groups, c // groups)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = np.square(g - mean).mean(axis=(1, 2, 4), keepdims=True)
    return ((g - mean) / np.sqrt(var + eps)).reshape(x.shape)


def test_group_norms_use_the_two_pass_variance_on_a_large_mean():
    # Mean 1000, std 0.1: the one-pass E[x^2] - E[x]^2 subtracts two numbers near 1e6 whose
    # float32 spacing (0.06) is six times the variance (0.01), so it returns noise; the
    # two-pass mean((x - mean)^2) keeps the output within 0.005 of float64.
    x = (1e3 + 0.1 * np.random.default_rng(0).standard_normal((2, 8, 8, 16))).astype(np.float32)
    want = _group_norm_float64(x, 4, 1e-6)

    def error(norm):
        y = norm.apply(norm.init(jax.random.key(0), x), x)
        return float(np.abs(np.asarray(y) - want).max())

    assert error(nn.GroupNorm(4, epsilon=1e-6, use_fast_variance=True)) > 1.0  # x discriminates
    networks = make_norm("group", 16, 4, 1e-6, jnp.float32, "norm")  # U-Net, ADM
    assert error(networks) < 0.02
    assert error(vae._norm(vae.VAEConfig(norm_num_groups=4, norm_eps=1e-6), "norm")) < 0.02
