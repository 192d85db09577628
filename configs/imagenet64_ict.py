"""iCT on class-conditional ImageNet 64x64 (docs/methods.md section 2): ADM, batch 4096, 800k steps.

    python launch.py --config=configs/imagenet64_ict.py --workdir=gs://bucket/imagenet64_ict

Prepare the data once (it needs the ImageNet archives, see the tfds catalog; array_record
gives random access, so resuming is exact), then pass --config.data.tfds_dir=DIR:

    tfds build imagenet_resized/64x64 --data_dir=DIR --file_format=array_record

Values marked (unverified) come from secondary sources (docs/methods.md); optimizer and curriculum
are the CIFAR-10 ones.
"""

from configs.common import base_config, ict_recipe
from configs.variants import parse_variant

VARIANTS = ()  # no variants besides the default


def get_config(arg=None):
    parse_variant(__file__, arg, VARIANTS)
    c = base_config()
    c.data.name = "tfds"
    c.data.tfds_name = "imagenet_resized/64x64"
    c.data.image_size = 64
    c.data.channels = 3
    c.data.num_classes = 1000
    c.data.random_flip = True  # (unverified) guided-diffusion's loader default

    # ADM (EDM's DhariwalUNet, docs/methods.md section 6): 295,899,267 parameters.
    c.model.name = "adm"
    c.model.channels = 192
    c.model.channel_mult = (1, 2, 3, 4)
    c.model.num_blocks = 3
    c.model.attn_resolutions = (32, 16, 8)
    c.model.dropout = 0.2  # (unverified)
    c.model.dropout_max_resolution = 16  # (unverified) dropout only at 16x16 and below
    c.model.embedding = "positional"
    c.model.use_labels = True
    ict_recipe(c)  # curriculum, loss, optimizer, float32 (configs/common.py)
    # 250 ln(sigma), as the PyTorch consistency-model code (openai/consistency_models) feeds
    # its ImageNet 64 ADM (docs/methods.md section 1).
    c.method.noise_label = "250_log_sigma"

    c.training.batch_size = 4096  # (unverified)
    c.training.num_steps = 800_000  # (unverified)
    c.training.ema_rates = (0.99997,)  # (unverified)

    c.sampling.consistency_levels = ((), (1.526,))  # 2-step level (unverified)
    return c
