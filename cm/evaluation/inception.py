"""Inception-v3 of the FID lineage (TF's 2015-12-05 graph, as ported by pytorch-fid), in Flax.

Differences from the classification Inception-v3 that FID depends on:
  - the average pools in the A, C and E blocks exclude the padding from the average;
  - the pool branch of the last block (Mixed_7c) is a 3x3 max pool, not an average pool;
  - BatchNorm eps is 1e-3, and the classifier has 1008 outputs.
InceptionC's branch7x7dbl_5 outputs 192 channels (public JAX ports give it c7, which loading
the real weights would reject and random-init comparisons catch).

Module names equal the keys of pytorch-fid's state dict (`Mixed_6b.branch7x7dbl_5.conv.weight`
is params['Mixed_6b']['branch7x7dbl_5']['conv']['kernel']), so loading is a renaming.
Images are NHWC. The network is convolutional up to the global pool; inputs must be at least
75x75 (299x299 in the FID protocol). Every convolution and matmul runs at full float32
precision (HIGHEST) whatever the device default (TF32 or bfloat16 passes on GPUs and TPUs
would move the features, and FID with them, away from the float32 reference).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cm.io import fileio, torch_pickle

INPUT_SIZE = 299  # the FID protocol's input resolution
MIN_INPUT_SIZE = 75  # smaller inputs vanish before the global pool
NUM_CLASSES = 1008  # the 2015-12-05 graph's classifier width
FEATURE_DIM = 2048  # pool3 features
BN_EPS = 1e-3
PRECISION = jax.lax.Precision.HIGHEST  # of every conv and matmul: float32 on any device
WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + WEIGHTS_FILE
)


class ConvBN(nn.Module):
    """Conv (no bias) -> BatchNorm (running statistics) -> ReLU: torchvision's BasicConv2d."""

    features: int
    kernel: tuple[int, int]
    strides: int = 1
    padding: tuple[int, int] = (0, 0)

    @nn.compact
    def __call__(self, x):
        ph, pw = self.padding
        x = nn.Conv(
            self.features,
            self.kernel,
            self.strides,
            padding=((ph, ph), (pw, pw)),
            use_bias=False,
            precision=PRECISION,
            name="conv",
        )(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, name="bn")(x)
        return nn.relu(x)


def _avg_pool_same(x):
    """3x3 stride-1 average that ignores the zero padding (TF's pool; count_include_pad=False)."""
    return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_valid(x):
    return nn.max_pool(x, (3, 3), (2, 2))


class InceptionA(nn.Module):
    pool_features: int

    @nn.compact
    def __call__(self, x):  # [B, 35, 35, C] -> [B, 35, 35, 224 + pool_features]
        b1 = ConvBN(64, (1, 1), name="branch1x1")(x)
        b5 = ConvBN(48, (1, 1), name="branch5x5_1")(x)
        b5 = ConvBN(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
        b3 = ConvBN(64, (1, 1), name="branch3x3dbl_1")(x)
        b3 = ConvBN(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = ConvBN(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = ConvBN(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_same(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    @nn.compact
    def __call__(self, x):  # [B, 35, 35, 288] -> [B, 17, 17, 768]
        b3 = ConvBN(384, (3, 3), strides=2, name="branch3x3")(x)
        bd = ConvBN(64, (1, 1), name="branch3x3dbl_1")(x)
        bd = ConvBN(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = ConvBN(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_valid(x)], axis=-1)


class InceptionC(nn.Module):
    channels_7x7: int

    @nn.compact
    def __call__(self, x):  # [B, 17, 17, 768] -> [B, 17, 17, 768]
        c7 = self.channels_7x7
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        b1 = ConvBN(192, (1, 1), name="branch1x1")(x)
        b7 = ConvBN(c7, (1, 1), name="branch7x7_1")(x)
        b7 = ConvBN(c7, **row, name="branch7x7_2")(b7)
        b7 = ConvBN(192, **col, name="branch7x7_3")(b7)
        bd = ConvBN(c7, (1, 1), name="branch7x7dbl_1")(x)
        bd = ConvBN(c7, **col, name="branch7x7dbl_2")(bd)
        bd = ConvBN(c7, **row, name="branch7x7dbl_3")(bd)
        bd = ConvBN(c7, **col, name="branch7x7dbl_4")(bd)
        bd = ConvBN(192, **row, name="branch7x7dbl_5")(bd)  # 192, not c7
        bp = ConvBN(192, (1, 1), name="branch_pool")(_avg_pool_same(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    @nn.compact
    def __call__(self, x):  # [B, 17, 17, 768] -> [B, 8, 8, 1280]
        b3 = ConvBN(192, (1, 1), name="branch3x3_1")(x)
        b3 = ConvBN(320, (3, 3), strides=2, name="branch3x3_2")(b3)
        b7 = ConvBN(192, (1, 1), name="branch7x7x3_1")(x)
        b7 = ConvBN(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = ConvBN(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = ConvBN(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_valid(x)], axis=-1)


class InceptionE(nn.Module):
    """pool='avg' for Mixed_7b; 'max' for Mixed_7c (the FID graph's quirk)."""

    pool: str

    @nn.compact
    def __call__(self, x):  # [B, 8, 8, C] -> [B, 8, 8, 2048]
        row, col = dict(kernel=(1, 3), padding=(0, 1)), dict(kernel=(3, 1), padding=(1, 0))
        b1 = ConvBN(320, (1, 1), name="branch1x1")(x)
        b3 = ConvBN(384, (1, 1), name="branch3x3_1")(x)
        b3 = jnp.concatenate(
            [
                ConvBN(384, **row, name="branch3x3_2a")(b3),
                ConvBN(384, **col, name="branch3x3_2b")(b3),
            ],
            axis=-1,
        )
        bd = ConvBN(448, (1, 1), name="branch3x3dbl_1")(x)
        bd = ConvBN(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate(
            [
                ConvBN(384, **row, name="branch3x3dbl_3a")(bd),
                ConvBN(384, **col, name="branch3x3dbl_3b")(bd),
            ],
            axis=-1,
        )
        if self.pool == "max":
            pooled = nn.max_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)))
        else:
            pooled = _avg_pool_same(x)
        bp = ConvBN(192, (1, 1), name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class Classifier(nn.Module):
    """The 1008-way linear layer; also returns the logits without bias, which the original
    Inception Score code (and torch-fidelity) uses."""

    @nn.compact
    def __call__(self, pool):  # [B, 2048] -> ([B, 1008], [B, 1008])
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (FEATURE_DIM, NUM_CLASSES))
        bias = self.param("bias", nn.initializers.zeros, (NUM_CLASSES,))
        unbiased = jnp.matmul(pool, kernel, precision=PRECISION)  # [B, 1008]
        return unbiased + bias, unbiased


class FIDInceptionV3(nn.Module):
    """Images [B, H, W, 3] scaled as (v - 128) / 128 -> {'pool' [B, 2048], 'logits' [B, 1008],
    'logits_unbiased' [B, 1008]}."""

    @nn.compact
    def __call__(self, x):
        x = ConvBN(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)  # 299 -> 149
        x = ConvBN(32, (3, 3), name="Conv2d_2a_3x3")(x)  # 147
        x = ConvBN(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        x = _max_pool_valid(x)  # 73
        x = ConvBN(80, (1, 1), name="Conv2d_3b_1x1")(x)
        x = ConvBN(192, (3, 3), name="Conv2d_4a_3x3")(x)  # 71
        x = _max_pool_valid(x)  # 35
        x = InceptionA(32, name="Mixed_5b")(x)  # 256 channels
        x = InceptionA(64, name="Mixed_5c")(x)  # 288
        x = InceptionA(64, name="Mixed_5d")(x)  # 288
        x = InceptionB(name="Mixed_6a")(x)  # 17x17x768
        x = InceptionC(128, name="Mixed_6b")(x)
        x = InceptionC(160, name="Mixed_6c")(x)
        x = InceptionC(160, name="Mixed_6d")(x)
        x = InceptionC(192, name="Mixed_6e")(x)
        x = InceptionD(name="Mixed_7a")(x)  # 8x8x1280
        x = InceptionE("avg", name="Mixed_7b")(x)  # 8x8x2048
        x = InceptionE("max", name="Mixed_7c")(x)
        pool = jnp.mean(x, axis=(1, 2))  # [B, 2048]
        logits, unbiased = Classifier(name="fc")(pool)
        return {"pool": pool, "logits": logits, "logits_unbiased": unbiased}


def init_variables(rng, size: int = MIN_INPUT_SIZE):
    """Random {'params', 'batch_stats'} (for tests and speed measurements)."""
    return FIDInceptionV3().init(rng, jnp.zeros((1, size, size, 3), jnp.float32))


# Flax leaf name -> (torch state dict suffix, array transform).
_LEAVES = {
    "kernel": ("weight", lambda w: w.transpose(2, 3, 1, 0) if w.ndim == 4 else w.T),
    "scale": ("weight", lambda w: w),
    "bias": ("bias", lambda w: w),
    "mean": ("running_mean", lambda w: w),
    "var": ("running_var", lambda w: w),
}


def variables_from_state_dict(state_dict: dict[str, np.ndarray], source: str = "state dict"):
    """pytorch-fid's state dict {name: array} -> Flax {'params', 'batch_stats'} (float32).

    Keys the network does not use (num_batches_tracked, an AuxLogits head) are ignored; a
    missing key or a wrong shape is an error naming it.
    """
    shapes = jax.eval_shape(init_variables, jax.random.key(0))

    def convert(path, shape):
        *modules, leaf = [p.key for p in path[1:]]  # path[0] is the collection
        suffix, transform = _LEAVES[leaf]
        key = ".".join([*modules, suffix])
        if key not in state_dict:
            raise ValueError(f"{source} has no {key!r}: it is not the FID Inception weights.")
        value = transform(np.asarray(state_dict[key], np.float32))
        if value.shape != shape.shape:
            raise ValueError(
                f"{source}: {key!r} has shape {state_dict[key].shape}, the FID Inception "
                f"needs {shape.shape} (after transposing to Flax layout)."
            )
        return value

    return jax.tree_util.tree_map_with_path(convert, shapes)


def missing_weights_message(path: str) -> str:
    return (
        f"The FID Inception weights {WEIGHTS_FILE} are not at eval.inception_path={path!r}: "
        f"download {WEIGHTS_URL} on a machine with internet, copy it there (or set "
        "--config.eval.inception_path to where it is)."
    )


def load_variables(path: str):
    """Flax variables of the FID Inception from pytorch-fid's .pth (or an .npz of its arrays).

    The .pth is read by our own unpickler (torch_pickle), so torch is not needed at run time.
    """
    if not path or not fileio.is_file(path):
        raise FileNotFoundError(missing_weights_message(path))
    if path.endswith(".npz"):
        state_dict = fileio.load_npz(path)
    else:
        state_dict = torch_pickle.read_state_dict(fileio.read_bytes(path))
    return variables_from_state_dict(state_dict, source=path)
