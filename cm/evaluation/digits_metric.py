"""A quality measure that needs no downloaded weights: the demo digits' 'classifier FID'.

A small MLP is trained deterministically (full batch, fixed seed, one-pixel random shifts as
augmentation, a few seconds on a CPU) on the digits "train" split and cached. Its penultimate
activations play Inception's role: the Frechet distance between the features of samples and
of the training split, and the classifier's accuracy on class-conditional samples (does a '7'
look like a 7?). The same distance for the held-out "test" split against the training split
is the floor a perfect model would reach with that many samples.
"""

import dataclasses
import hashlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import traverse_util

from cm.data import sources
from cm.evaluation import metrics
from cm.io import fileio


@dataclasses.dataclass(frozen=True)
class ClassifierSpec:
    """Everything that defines the classifier; its hash names the cache file."""

    hidden: tuple[int, ...] = (256, 64)  # the last width is the feature dimension
    steps: int = 300
    learning_rate: float = 3e-3
    weight_decay: float = 1e-3
    max_shift: int = 1  # augmentation: random translations by up to this many pixels
    seed: int = 0
    num_classes: int = 10
    version: int = 1  # bump when the training code changes

    def digest(self) -> str:
        return hashlib.sha256(repr(self).encode()).hexdigest()[:12]


class MLP(nn.Module):
    """Images in [-1, 1] [B, H, W, C] -> (logits [B, classes], features [B, hidden[-1]]).

    GELU rather than ReLU: no feature is ever exactly zero for all inputs, so the feature
    covariance stays non-singular.
    """

    hidden: tuple[int, ...]
    num_classes: int

    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        for width in self.hidden:
            x = nn.gelu(nn.Dense(width)(x))
        return nn.Dense(self.num_classes)(x), x


def _inputs(images) -> jnp.ndarray:
    """uint8 [B, H, W, C] -> float32 [B, H, W, C] in [-1, 1], as the generative model sees them."""
    return jnp.asarray(images, jnp.float32) / 127.5 - 1.0


def _shift(rng, x, max_shift: int):
    """Each image of x [B, H, W, C] translated by its own random offset in [-max_shift,
    max_shift]^2, the uncovered border filled with the background value -1."""
    b, h, w, c = x.shape
    m = max_shift
    padded = jnp.pad(x, ((0, 0), (m, m), (m, m), (0, 0)), constant_values=-1.0)
    offsets = jax.random.randint(rng, (b, 2), 0, 2 * m + 1)
    crop = lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, c))
    return jax.vmap(crop)(padded, offsets)


def _split(data_config, split: str):
    cfg = data_config.copy_and_resolve_references()
    cfg.split = split
    source = sources.load_source(cfg)
    return source.get(np.arange(len(source)))  # uint8 [N, 8, 8, 1], int32 [N]


def train_classifier(spec: ClassifierSpec, images, labels):
    """Parameters after spec.steps full-batch AdamW steps from key(spec.seed).

    One jitted fori_loop: dense layers only, so the loop costs nothing on XLA's CPU backend.
    """
    model = MLP(spec.hidden, spec.num_classes)
    x, y = _inputs(images), jnp.asarray(labels)
    params = model.init(jax.random.key(spec.seed), x[:1])["params"]
    tx = optax.adamw(spec.learning_rate, weight_decay=spec.weight_decay)

    augment_rng = jax.random.fold_in(jax.random.key(spec.seed), 1)

    def loss_fn(p, step):
        shifted = _shift(jax.random.fold_in(augment_rng, step), x, spec.max_shift)
        logits, _ = model.apply({"params": p}, shifted)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def train(params):
        def step(i, carry):
            p, opt = carry
            grads = jax.grad(loss_fn)(p, i)
            updates, opt = tx.update(grads, opt, p)
            return optax.apply_updates(p, updates), opt

        return jax.lax.fori_loop(0, spec.steps, step, (params, tx.init(params)))[0]

    return train(params)


def cache_path(path: str, spec: ClassifierSpec) -> str:
    """eval.digits_classifier_path, or ~/.cache/cm/digits_classifier_<spec digest>.npz."""
    return str(fileio.path(path or f"~/.cache/cm/digits_classifier_{spec.digest()}.npz"))


def load_or_train(data_config, path: str = "", spec: ClassifierSpec = ClassifierSpec()):
    """The classifier's parameters: from the cache file, else trained on the train split and
    cached (written atomically; a cache that cannot be written is skipped)."""
    path = cache_path(path, spec)
    if fileio.exists(path):
        return traverse_util.unflatten_dict(fileio.load_npz(path), sep="/")
    params = jax.device_get(train_classifier(spec, *_split(data_config, "train")))
    flat = traverse_util.flatten_dict(params, sep="/")
    try:
        fileio.save_npz_atomic(path, **flat)
        logging.info("Cached the digits classifier in %s.", path)
    except OSError as e:
        logging.warning("Could not cache the digits classifier in %s: %s", path, e)
    return params


class DigitsMetric:
    """Metric backend 'digits': {'digits_fd', 'digits_fd_matched', 'digits_accuracy'}.

    digits_fd_matched uses only as many samples as the test split has, so that it compares
    like with like against the floor (the distance is biased upwards at small N).
    """

    def __init__(self, config, workdir: str, mesh, spec: ClassifierSpec = ClassifierSpec()):
        del workdir, mesh  # a tiny MLP: one device, no files but the cache
        d = config.data
        if d.name != "digits":
            raise ValueError(
                f"eval.metrics 'digits' needs data.name='digits', not {d.name!r}; use "
                "--config.eval.metrics=inception for other data."
            )
        self.eps = config.eval.sqrtm_eps
        self.conditional = bool(d.num_classes and config.model.use_labels)
        model = MLP(spec.hidden, spec.num_classes)
        params = load_or_train(d, config.eval.digits_classifier_path, spec)
        self._apply = jax.jit(lambda x: model.apply({"params": params}, _inputs(x)))
        train_features = self.features(_split(d, "train")[0])[1]
        self.reference_mean = train_features.mean(axis=0)
        self.reference_cov = np.cov(train_features, rowvar=False)
        self.reference_count = len(train_features)
        self.test_images, self.test_labels = _split(d, "test")

    def features(self, images) -> tuple[np.ndarray, np.ndarray]:
        """uint8 [N, 8, 8, 1] -> (predicted class int [N], features float64 [N, F])."""
        logits, feats = self._apply(images)
        return np.asarray(jnp.argmax(logits, -1)), np.asarray(feats, np.float64)

    def _distance(self, feats) -> float:
        stats = metrics.RunningStats(feats.shape[1])
        stats.update(feats)
        return metrics.frechet_distance(
            stats.mean,
            stats.cov,
            self.reference_mean,
            self.reference_cov,
            self.eps,
            counts=(stats.count, self.reference_count),
        )

    def reference(self) -> dict[str, float]:
        """The floor: held-out real digits (test split) against the train split."""
        predicted, feats = self.features(self.test_images)
        return {
            "real_test/digits_fd": self._distance(feats),
            "real_test/digits_accuracy": float(np.mean(predicted == self.test_labels)),
        }

    def __call__(self, images, labels) -> dict[str, float]:
        predicted, feats = self.features(images)
        out = {
            "digits_fd": self._distance(feats),
            "digits_fd_matched": self._distance(feats[: len(self.test_images)]),
        }
        if self.conditional:
            out["digits_accuracy"] = float(np.mean(predicted == np.asarray(labels)))
        return out
