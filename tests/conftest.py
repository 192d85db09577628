"""Test set-up: 4 simulated CPU devices, so every data-parallel path runs as on a real node."""

import jax

jax.config.update("jax_num_cpu_devices", 4)
