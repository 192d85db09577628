"""EDM diffusion baseline on CIFAR-10 (PAPERS.md section 5): DDPM++, Heun 18 steps.

    python launch.py --config=configs/cifar10_edm.py --workdir=gs://bucket/cifar10_edm

Prepare the data once (array_record: random access, exact resume), then pass
--config.data.tfds_dir=DIR:

    tfds build cifar10 --data_dir=DIR --file_format=array_record

Optimizer and schedule follow EDM's CIFAR-10 recipe: Adam 1e-3, batch 512, 200 Mimg
(390625 steps), learning-rate warmup over 10 Mimg (19531 steps), dropout 0.13, EMA half-life
0.5 Mimg = rate 0.5^(512/500000) = 0.99929 per step (EDM's EMA ramp-up is not modelled).
"""

from configs.common import base_config
from configs.variants import parse_variant


def get_config(arg=None):
    parse_variant(__file__, arg)
    c = base_config()
    c.data.name = "tfds"
    c.data.tfds_name = "cifar10"
    c.data.image_size = 32
    c.data.channels = 3
    c.data.num_classes = 10
    c.data.random_flip = True

    # DDPM++ (PAPERS.md section 6): 55,732,739 parameters.
    c.model.name = "unet"
    c.model.channels = 128
    c.model.channel_mult = (2, 2, 2)
    c.model.num_blocks = 4
    c.model.attn_resolutions = (16,)
    c.model.dropout = 0.13
    c.model.embedding = "positional"
    c.model.noise_mult = 1
    c.model.encoder_type = "standard"
    c.model.resample_filter = (1, 1)
    c.model.use_labels = False
    # EDM's training loop turns TF32 off for cuDNN convolutions and cuBLAS matmuls and trains
    # CIFAR-10 in float32 (no --fp16): full float32.
    c.model.matmul_precision = "highest"

    c.method.name = "edm"
    c.method.p_mean = -1.2
    c.method.p_std = 1.2

    c.optim.name = "adam"
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 19_531
    c.optim.eps = 1e-8

    c.training.batch_size = 512
    c.training.num_steps = 390_625  # 200 Mimg
    c.training.ema_rates = (0.99929,)

    c.sampling.num_samples = 50_000
    c.sampling.batch_size = 1024
    c.sampling.heun_steps = 18
    return c
