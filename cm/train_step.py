"""The jitted data-parallel training step (and the global batch it takes), apart from the loop
in cm/train.py so that benchmarks need none of the loop's logging and checkpoint libraries."""

import jax
import optax

from cm import experiment, keys, power_ema, state


def make_train_step(exp: experiment.Experiment, ema_rates, seed: int):
    """jit(step_fn) with replicated donated state and a batch sharded over 'data'."""

    def step_fn(train_state: state.TrainState, batch):
        rng = keys.indexed(seed, "train", train_state.step)
        grad_fn = jax.value_and_grad(exp.loss_fn, has_aux=True)
        (_, metrics), grads = grad_fn(train_state.params, batch, rng, train_state.step)
        updates, opt_state = exp.tx.update(grads, train_state.opt_state, train_state.params)
        params = optax.apply_updates(train_state.params, updates)
        new_state = train_state.replace(
            step=train_state.step + 1,
            params=params,
            opt_state=opt_state,
            ema=state.update_emas(
                train_state.ema, params, ema_rates, train_state.step, exp.ema_halflife
            ),
            power_ema=power_ema.update(
                train_state.power_ema, params, train_state.step + 1, exp.power_ema_gammas
            ),
        )
        return new_state, {**metrics, "grad_norm": optax.tree.norm(grads)}

    return jax.jit(
        step_fn,
        in_shardings=(exp.replicated, exp.data_sharded),
        out_shardings=(exp.replicated, exp.replicated),
        donate_argnums=(0,),
    )


def global_batch(local_batch: dict, exp: experiment.Experiment) -> dict:
    """This process's rows -> one global array per key, sharded over 'data'."""
    return {
        k: jax.make_array_from_process_local_data(exp.data_sharded, v)
        for k, v in local_batch.items()
    }
