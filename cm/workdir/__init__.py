"""A run's workdir: checkpoints and their digests, the run record (config.json, starts/), the
workdir lock, and method.init_from's reading of another run's parameters."""
