"""NVlabs/edm's published networks as `cm` checkpoints (docs/methods.md section 8).

reader.py        restricted unpickler: the module tree and the tensors; nothing from the file runs
architecture.py  the file's EDMPrecond(SongUNet | DhariwalUNet) arguments against the config
name_map.py      Flax <-> EDM names, layouts, per-module checks; every tensor used once
load.py          file -> EMA network -> Flax params tree (also for method.init_from)
run.py           --mode=import: a step-0 checkpoint whose params and every EMA are the file's EMA
"""
