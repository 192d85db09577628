"""EDM diffusion on class-conditional ImageNet 64x64 (docs/methods.md section 5): ADM.

The network and recipe of NVlabs/edm's published edm-imagenet-64x64-cond-adm.pkl (EDM's
train.py --cond=1 --arch=adm --duration=2500 --batch=4096 --lr=1e-4 --ema=50 --dropout=0.10
--augment=0 --fp16=1), which --mode=import reads (docs/methods.md section 8):

    python launch.py --config=configs/imagenet64_edm.py --workdir=runs/edm_imagenet64 --mode=import
    python launch.py --config=configs/imagenet64_edm.py --workdir=runs/edm_imagenet64 --mode=eval

Sampling is EDM's stochastic sampler for this network (its README: 256 steps, S_churn 40,
S_min 0.05, S_max 50, S_noise 1.003; 511 evaluations). Training from scratch follows EDM's
recipe, except that EDM trained in float16 mixed precision (here: model.dtype) and on
center-cropped images (its dataset_tool), where the tfds dataset below is box-resized:

    tfds build imagenet_resized/64x64 --data_dir=DIR --file_format=array_record
"""

from configs.common import base_config
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
    c.data.random_flip = False  # EDM's --xflip default: off

    # ADM as EDM's DhariwalUNet defaults build it (docs/methods.md section 6): 295,899,267
    # parameters with 1000 classes; no augmentation layer (--augment=0).
    c.model.name = "adm"
    c.model.channels = 192
    c.model.channel_mult = (1, 2, 3, 4)
    c.model.num_blocks = 3
    c.model.attn_resolutions = (32, 16, 8)
    c.model.dropout = 0.10
    c.model.dropout_max_resolution = 0  # EDM: dropout in every block
    c.model.embedding = "positional"
    c.model.use_labels = True
    c.model.augment_dim = 0
    # EDM's training loop turns TF32 off (it trained this net under float16 autocast, which
    # cm's model.dtype=bfloat16 approximates): full float32, as configs/cifar10_edm.py.
    c.model.matmul_precision = "highest"

    c.method.name = "edm"
    c.method.p_mean = -1.2
    c.method.p_std = 1.2
    c.method.noise_label = "log_sigma_over_4"  # EDMPrecond (docs/methods.md section 1)

    c.optim.name = "adam"
    c.optim.learning_rate = 1e-4
    c.optim.warmup_steps = 2441  # EDM's lr ramp-up over 10 Mimg at batch 4096
    c.optim.eps = 1e-8

    c.training.batch_size = 4096
    c.training.num_steps = 610_352  # 2500 Mimg
    c.training.ema_rates = ()
    c.training.ema_halflife_images = 50_000_000  # EDM's --ema=50 (Mimg)
    c.training.ema_rampup_ratio = 0.05

    c.sampling.num_samples = 50_000
    c.sampling.batch_size = 1024
    c.sampling.heun_steps = 256
    c.sampling.churn = 40.0
    c.sampling.s_tmin = 0.05
    c.sampling.s_tmax = 50.0
    c.sampling.s_noise = 1.003

    c.edm_import.path = "~/.cache/cm/edm/edm-imagenet-64x64-cond-adm.pkl"
    return c
