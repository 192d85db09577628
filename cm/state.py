"""Train state and optimizer: everything a resumed run needs, and nothing else."""

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
    ema: tuple  # one parameter tree per config.training.ema_rates entry, same order
    # One tree per config.training.power_ema_stds entry (EDM2 power-function EMAs, power_ema.py).
    power_ema: tuple = ()


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


def create(params, tx, num_ema: int, num_power_ema: int = 0) -> TrainState:
    """Step 0: EMAs (and power EMAs) start at the initial parameters."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        ema=tuple(jax.tree.map(jnp.copy, params) for _ in range(num_ema)),
        power_ema=tuple(jax.tree.map(jnp.copy, params) for _ in range(num_power_ema)),
    )


def update_emas(emas: tuple, params, rates) -> tuple:
    """ema <- rate * ema + (1 - rate) * params, for each rate."""
    return tuple(
        jax.tree.map(lambda e, p, r=rate: r * e + (1.0 - r) * p, ema, params)
        for ema, rate in zip(emas, rates, strict=True)
    )
