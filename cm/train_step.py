"""The jitted data-parallel training step (and the global batch it takes), apart from the loop
in cm/train.py so that benchmarks need none of the loop's logging and checkpoint libraries."""

import jax
import optax

from cm import experiment, keys, power_ema, state


def make_train_step(exp: experiment.Experiment, ema_rates, seed: int):
    """jit(step_fn) with replicated donated state and a batch sharded over 'data'."""

    def step_fn(train_state: state.TrainState, batch):
        rng = keys.indexed(seed, "train", train_state.step)
        aux, extra = state.aux_and_extra(train_state)  # ((), ()) for methods without them

        def loss_fn(params, aux):
            return exp.loss_fn(params, batch, rng, train_state.step, aux=aux, extra=extra)

        grad_fn = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)
        (_, metrics), (grads, aux_grads) = grad_fn(train_state.params, aux)
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
        new_state = state.step_method_state(
            new_state, train_state, exp.tx, aux_grads, exp.update_extra
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
