"""iCT on CIFAR-10 (docs/methods.md section 2): NCSN++, batch 1024, 400k steps, RAdam 1e-4.

    python launch.py --config=configs/cifar10_ict.py --workdir=gs://bucket/cifar10_ict
    python launch.py --config=configs/cifar10_ict.py:deep --workdir=...   # iCT-deep

Prepare the data once (array_record: random access, exact resume), then pass
--config.data.tfds_dir=DIR:

    tfds build cifar10 --data_dir=DIR --file_format=array_record

"""

from configs.common import base_config, cifar10_data, ict_recipe
from configs.variants import parse_variant

VARIANTS = ("deep",)  # iCT-deep: twice the residual blocks


def get_config(arg=None):
    variant = parse_variant(__file__, arg, VARIANTS)
    c = base_config()
    cifar10_data(c)
    c.data.num_classes = 10
    c.data.random_flip = True

    # NCSN++ (docs/methods.md section 6): 56,395,523 parameters; deep: 97,610,499.
    c.model.name = "unet"
    c.model.channels = 128
    c.model.channel_mult = (2, 2, 2)
    c.model.num_blocks = 8 if variant == "deep" else 4
    c.model.attn_resolutions = (16,)
    c.model.dropout = 0.3
    c.model.embedding = "fourier"
    c.model.fourier_scale = 0.02
    c.model.noise_mult = 2
    c.model.encoder_type = "residual"
    c.model.resample_filter = (1, 3, 3, 1)
    c.model.use_labels = False
    ict_recipe(c)  # curriculum, loss, optimizer, float32 (configs/common.py)
    # ln(sigma)/4, as EDM's preconditioning and the CIFAR-10 JAX consistency-model / ECT code
    # feed NCSN++ (docs/methods.md section 1).
    c.method.noise_label = "log_sigma_over_4"

    c.training.batch_size = 1024
    c.training.num_steps = 400_000
    c.training.ema_rates = (0.99993,)

    c.sampling.consistency_levels = ((), (0.821,))
    return c
