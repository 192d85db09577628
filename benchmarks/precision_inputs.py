"""What the precision studies share (benchmarks/precision_study.py, precision_tangent.py): the
variants, the network of a paper config with its residual branches opened, the image-like
batch and the per-sample relative norms.

Variants: the repo's own paths, built through cm.experiment.network_forms from the config
with model.dtype and model.matmul_precision set (benchmarks/perf.py's modes): "f32 highest"
(the reference), "f32 default" (the device's default; XLA:CPU runs it as highest) and "bf16"
(model.dtype = bfloat16, as training runs it); and, because a CPU cannot run them, two
accelerator defaults emulated on the float32 network (benchmarks/emulated_matmul.py): "tf32
emulated" (NVIDIA GPUs) and "bf16-pass emulated" (TPUs).

The network is a paper config's at initialization, with one change: EDM's initialization
scales the layers that close a residual branch (each block's conv1, the attention projection)
and the output conv by 1e-5, so a fresh network outputs about 1e-5 and the studies would see
only the exact skip paths. Those kernels are redrawn from the ordinary Xavier-uniform
initializer (gain 1); each study then scales the output conv so that the network's output has
unit RMS at a middle noise level (a trained output's target has about unit variance).

Data: CIFAR-10 is not available offline, so a deterministic batch of smooth random fields (an
amplitude spectrum falling as 1/frequency, as natural images have), scaled to [-1, 1].
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import emulated_matmul, perf, tiny
from cm import experiment, methods
from cm.models import build_model, inits

REFERENCE = "f32 highest"
# name -> (model.dtype, model.matmul_precision, emulated mantissa bits of conv / matmul inputs)
VARIANTS = {
    REFERENCE: (*perf.PRECISION_MODES[REFERENCE][:2], None),
    "f32 default": (*perf.PRECISION_MODES["f32 default"][:2], None),
    "bf16": (*perf.PRECISION_MODES["bf16"][:2], None),
    "tf32 emulated": ("float32", "highest", emulated_matmul.TF32_BITS),
    "bf16-pass emulated": ("float32", "highest", emulated_matmul.BFLOAT16_BITS),
}
DROWNS, DEGRADES = 1.0, 0.1  # noise/signal thresholds of the readings
# Kernels that EDM's initialization scales by 1e-5 (role "zero" in cm/models/inits.py).
BRANCH_CLOSERS = ("conv1", "proj", "out_conv")
ZERO_INIT_BOUND = 1e-3  # such a kernel's largest entry at initialization is far below this
CHROMA = 0.3  # weight of each channel's own field next to the shared luminance field


def paper_config(get_config, quick: bool):
    """A paper config (its network, method and laws), its network tiny when quick: one 8 x 8
    level of 8 channels (tiny.TINY_PAPER_NETWORK, the device check's --quick network)."""
    c = get_config()
    return tiny.with_overrides(c, tiny.TINY_PAPER_NETWORK) if quick else c


def variant_config(config, name: str):
    """A copy of `config` computing in variant `name`'s dtype and matmul precision."""
    c = config.copy_and_resolve_references()
    c.model.dtype, c.model.matmul_precision, _ = VARIANTS[name]
    return c


def variant_forms(config, name: str):
    """The method's network forms (cm.experiment.network_forms: train, sample, teacher) as the
    run of variant `name` computes them."""
    c = variant_config(config, name)
    entry = methods.get(c.method.name)
    return experiment.network_forms(c, entry, build_model(c, entry.second_noise_label))


def emulated(fn, name: str):
    """`fn` with variant `name`'s conv / matmul inputs rounded, when the variant is emulated."""
    bits = VARIANTS[name][2]
    return fn if bits is None else emulated_matmul.with_rounded_matmul_inputs(fn, bits)


def check_variants(variants) -> None:
    """One ValueError naming the unknown entries of --variants."""
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise ValueError(f"Unknown --variants {unknown}; valid: {list(VARIANTS)}.")


def smooth_fields(seed: int, batch: int, size: int, channels: int) -> np.ndarray:
    """Deterministic image-like batch [B, H, W, C] in [-1, 1]: Gaussian fields whose amplitude
    spectrum falls as 1 / frequency, a shared luminance field plus CHROMA x one per channel."""
    rng = np.random.default_rng(seed)
    freq = np.fft.fftfreq(size)
    amplitude = 1.0 / np.maximum(np.hypot(freq[:, None], freq[None, :]), 1.0 / size)  # [H, W]
    white = rng.standard_normal((batch, channels + 1, size, size))
    fields = np.fft.ifft2(np.fft.fft2(white) * amplitude).real  # [B, C + 1, H, W]
    images = fields[:, :1] + CHROMA * fields[:, 1:]  # [B, C, H, W]
    lo = images.min(axis=(1, 2, 3), keepdims=True)
    hi = images.max(axis=(1, 2, 3), keepdims=True)
    return (2.0 * (images - lo) / (hi - lo) - 1.0).transpose(0, 2, 3, 1).astype(np.float32)


def study_noise(seed: int, shape) -> np.ndarray:
    """The studies' fixed standard normal noise of `shape`, float32."""
    return np.random.default_rng([seed, 1]).standard_normal(shape).astype(np.float32)


def randomize_branch_closers(params, seed: int):
    """`params` with every BRANCH_CLOSERS kernel redrawn from the ordinary Xavier-uniform
    initializer (cm/models/inits.py, role "default"); checks that each was near zero."""
    flat = flax.traverse_util.flatten_dict(params)
    draw = inits.scheme("song").kernel("default")
    key = jax.random.key(seed)
    for n, path in enumerate(sorted(flat)):
        if path[-1] != "kernel" or path[-2] not in BRANCH_CLOSERS:
            continue
        if float(jnp.max(jnp.abs(flat[path]))) > ZERO_INIT_BOUND:
            raise RuntimeError(f"{'/'.join(path)} is not a near-zero initialized kernel.")
        flat[path] = draw(jax.random.fold_in(key, n), flat[path].shape)
    return flax.traverse_util.unflatten_dict(flat)


def open_network(config, seed: int):
    """The parameters of `config`'s network with its branch closers redrawn (module docstring),
    before the output conv is scaled."""
    exp = experiment.build(variant_config(config, REFERENCE))
    # jitted: a few times faster than the eager initializer, and the same values (bit for bit
    # on the tiny networks)
    params = jax.jit(lambda: experiment.init_params(exp, config))()
    return randomize_branch_closers(params, seed)


def scale_output(params, factor: float):
    """`params` with the output conv's kernel and bias times `factor`: the network's output
    (linear in them) times `factor`."""
    params = dict(params)
    params["out_conv"] = jax.tree.map(lambda w: w * factor, params["out_conv"])
    return params


def per_sample_norm(a) -> np.ndarray:
    """Euclidean norm of each sample of a [B, ...] array, in float64. Returns [B]."""
    a = np.asarray(a, np.float64)
    return np.sqrt(np.sum(np.square(a), axis=tuple(range(1, a.ndim))))


def relative(numerator, denominator) -> float:
    """Mean over samples of ||numerator_b|| / ||denominator_b||."""
    return float(np.mean(per_sample_norm(numerator) / per_sample_norm(denominator)))


def rms(a) -> float:
    """Root mean square of all elements, in float64."""
    return float(np.sqrt(np.mean(np.square(np.asarray(a, np.float64)))))
