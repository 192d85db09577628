"""Train state and optimizer: everything a resumed run needs, and nothing else."""

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer steps taken; also indexes data and randomness
    params: Any
    opt_state: Any
    # One parameter tree per config.training.ema_rates entry, same order, then EDM's half-life
    # EMA when training.ema_halflife_images > 0 (num_emas).
    ema: tuple
    # One tree per config.training.power_ema_stds entry (EDM2 power-function EMAs, power_ema.py).
    power_ema: tuple = ()


@flax.struct.dataclass
class MethodTrainState(TrainState):
    """TrainState plus a method's own state (cm/methods/table.py). Only methods that have auxiliary
    parameters or extra state use it, so the states and checkpoints of the others keep
    TrainState's layout exactly."""

    # Trainable auxiliary parameters (e.g. sCM's weighting w(t)): the same optimizer trains
    # them with their own state; never sampled, EMA'd, snapshotted or merged. () = none.
    aux: Any = ()
    aux_opt_state: Any = ()
    # Untrained state: a frozen teacher, a target EMA (the method's update_extra). () = none.
    extra: Any = ()


def _radam(c, lr):
    return optax.radam(lr, b1=c.b1, b2=c.b2, eps=c.eps)


def _adam(c, lr):
    return optax.adam(lr, b1=c.b1, b2=c.b2, eps=c.eps)


OPTIMIZERS = {"radam": _radam, "adam": _adam}


def make_optimizer(optim_config) -> optax.GradientTransformation:
    """Optimizer from config.optim: optional clipping, coupled L2 weight decay, optional warmup.

    Weight decay is added to the gradient before the adaptive update (PyTorch's RAdam/Adam
    `weight_decay`, which the sLCT recipe uses), not decoupled as in AdamW.
    """
    c = optim_config
    if c.name not in OPTIMIZERS:
        raise ValueError(f"Unknown optim.name {c.name!r}; valid: {sorted(OPTIMIZERS)}.")
    lr = c.learning_rate
    if c.warmup_steps > 0:
        lr = optax.linear_schedule(0.0, c.learning_rate, c.warmup_steps)
    parts = []
    if c.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(c.grad_clip))
    if c.weight_decay > 0:
        parts.append(optax.add_decayed_weights(c.weight_decay))
    parts.append(OPTIMIZERS[c.name](c, lr))
    return optax.chain(*parts)


def create(params, tx, num_ema: int, num_power_ema: int = 0, aux=None, extra=None) -> TrainState:
    """Step 0: EMAs (and power EMAs) start at the initial parameters. A TrainState, or with
    `aux` or `extra` (not None) a MethodTrainState."""
    parts = dict(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        ema=tuple(jax.tree.map(jnp.copy, params) for _ in range(num_ema)),
        power_ema=tuple(jax.tree.map(jnp.copy, params) for _ in range(num_power_ema)),
    )
    if aux is None and extra is None:
        return TrainState(**parts)
    aux = () if aux is None else aux
    return MethodTrainState(
        **parts,
        aux=aux,
        aux_opt_state=tx.init(aux) if jax.tree.leaves(aux) else (),
        extra=() if extra is None else extra,
    )


def aux_and_extra(train_state: TrainState) -> tuple:
    """(aux, extra) of a MethodTrainState; ((), ()) for a TrainState."""
    if isinstance(train_state, MethodTrainState):
        return train_state.aux, train_state.extra
    return (), ()


def step_method_state(new: TrainState, old: TrainState, tx, aux_grads, update_extra):
    """`new` (the step's updated TrainState fields) with the method's own state stepped: the
    auxiliary parameters updated by `tx` from `aux_grads`, and extra = update_extra(old extra,
    new params, old step) when the method has an update (else kept). A TrainState is returned
    unchanged."""
    if not isinstance(old, MethodTrainState):
        return new
    aux, aux_opt_state = old.aux, old.aux_opt_state
    if jax.tree.leaves(aux):
        updates, aux_opt_state = tx.update(aux_grads, aux_opt_state, aux)
        aux = optax.apply_updates(aux, updates)
    extra = old.extra if update_extra is None else update_extra(old.extra, new.params, old.step)
    return new.replace(aux=aux, aux_opt_state=aux_opt_state, extra=extra)


@dataclasses.dataclass(frozen=True)
class HalflifeEMA:
    """EDM's EMA by half-life in images with a ramp-up (docs/methods.md section 5)."""

    halflife_images: float
    rampup_ratio: float  # 0 = no ramp-up (EDM's ema_rampup_ratio=None)
    batch_size: int  # global batch: images per step

    def beta(self, step) -> jax.Array:
        """beta = 0.5 ^ (batch / max(min(halflife, ratio * images_seen), 1e-8)).

        `step` is the number of optimizer steps taken BEFORE this update, so images_seen =
        step * batch counts the images before the current batch, as EDM's training_loop.py
        does (it adds the batch to cur_nimg after the EMA update); the first update therefore
        has beta = 0 and copies the parameters.
        """
        images = jnp.asarray(step, jnp.float32) * self.batch_size
        halflife = jnp.float32(self.halflife_images)
        if self.rampup_ratio > 0:
            halflife = jnp.minimum(halflife, self.rampup_ratio * images)
        return 0.5 ** (self.batch_size / jnp.maximum(halflife, 1e-8))


def halflife_ema(training_config) -> HalflifeEMA | None:
    """config.training's half-life EMA, or None when training.ema_halflife_images is 0."""
    t = training_config
    if t.ema_halflife_images < 0 or t.ema_rampup_ratio < 0:
        raise ValueError(
            "training.ema_halflife_images and training.ema_rampup_ratio must be >= 0; "
            "set them to 0 (off) or a positive value."
        )
    if t.ema_halflife_images == 0:
        return None
    return HalflifeEMA(float(t.ema_halflife_images), float(t.ema_rampup_ratio), t.batch_size)


def num_emas(training_config) -> int:
    """EMA trees in the state: one per constant rate, plus the half-life EMA when on."""
    return len(training_config.ema_rates) + (training_config.ema_halflife_images > 0)


def update_emas(emas: tuple, params, rates, step=0, halflife: HalflifeEMA | None = None) -> tuple:
    """ema <- beta * ema + (1 - beta) * params for each EMA: beta = rate for the constant
    rates, then (last entry) beta = halflife.beta(step), `step` = steps before this update."""
    betas = tuple(rates) + ((halflife.beta(step),) if halflife is not None else ())
    return tuple(
        jax.tree.map(lambda e, p, r=beta: r * e + (1.0 - r) * p, ema, params)
        for ema, beta in zip(emas, betas, strict=True)
    )


def sampling_params(train_state: TrainState, which: str):
    """The parameters to sample from: the first EMA, or the online ones."""
    if which == "ema" and train_state.ema:
        return train_state.ema[0]
    if which in ("ema", "online"):
        return train_state.params
    raise ValueError(f"Unknown sampling.params {which!r}; valid: ['ema', 'online'].")
