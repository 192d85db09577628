"""Defaults shared by every experiment config; each config overrides what its paper changes."""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    """Every field any part of `cm` reads, at its paper default (PAPERS.md sections 1, 2, 5)."""
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.name = "digits"  # digits | tfds | npz | folder
    c.data.tfds_name = ""  # e.g. "cifar10", "imagenet_resized/64x64"
    c.data.tfds_dir = ""  # tfds data_dir; "" uses TFDS_DATA_DIR or ~/tensorflow_datasets
    c.data.path = ""  # .npz file or image folder
    c.data.split = "train"
    c.data.image_size = 8
    c.data.channels = 1
    c.data.num_classes = 10  # 0 = no labels
    c.data.random_flip = False

    c.model = ml_collections.ConfigDict()
    c.model.name = "unet"
    c.model.channels = 32
    c.model.channel_mult = (1, 2)
    c.model.num_blocks = 2
    c.model.attn_resolutions = (4,)
    c.model.dropout = 0.0
    c.model.embedding = "positional"  # positional | fourier
    c.model.fourier_scale = 16.0
    c.model.norm = "group"  # group | nsln
    c.model.num_groups = 32
    c.model.use_labels = True  # condition on data.num_classes labels when > 0
    c.model.dtype = "float32"  # float32 | bfloat16 (compute dtype; parameters stay float32)

    c.method = ml_collections.ConfigDict()
    c.method.name = "ict"  # ict | edm
    c.method.sigma_min = 0.002
    c.method.sigma_max = 80.0
    c.method.rho = 7.0
    c.method.sigma_data = 0.5
    c.method.p_mean = -1.1  # iCT index distribution (EDM training uses -1.2)
    c.method.p_std = 2.0  # iCT index distribution (EDM training uses 1.2)
    c.method.s0 = 10
    c.method.s1 = 1280
    c.method.distance = "pseudo_huber"  # pseudo_huber | l2
    c.method.huber_c_factor = 0.00054  # c = factor * sqrt(d)

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "radam"  # radam | adam | adamw
    c.optim.learning_rate = 1e-4
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.0
    c.optim.warmup_steps = 0
    c.optim.grad_clip = 0.0  # 0 = off

    c.training = ml_collections.ConfigDict()
    c.training.batch_size = 1024  # global, over all devices and hosts
    c.training.num_steps = 400_000
    c.training.ema_rates = (0.99993,)
    c.training.log_every = 100
    c.training.checkpoint_every = 5000
    c.training.keep_checkpoints = 3
    c.training.snapshot_every = 1000  # parameter-only stream (online + EMA), kept forever; 0 = off
    c.training.sample_every = 10_000  # 0 = off
    c.training.grid_samples = 64
    # Stop (with a checkpoint) after this many steps in one process, 0 = run to num_steps: for
    # clusters with job time limits; the same command resumes.
    c.training.steps_per_run = 0

    c.sampling = ml_collections.ConfigDict()
    c.sampling.num_samples = 64
    c.sampling.batch_size = 64  # global, per call over all devices
    c.sampling.consistency_levels = ((), (0.821,))  # each: the levels after the first step
    c.sampling.heun_steps = 18
    c.sampling.churn = 0.0
    c.sampling.s_tmin = 0.0
    c.sampling.s_tmax = float("inf")
    c.sampling.s_noise = 1.0
    c.sampling.params = "ema"  # ema | online
    c.sampling.seed = 1
    return c
