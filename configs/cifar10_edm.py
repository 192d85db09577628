"""EDM diffusion baseline on CIFAR-10 (docs/methods.md section 5): DDPM++, Heun 18 steps.

    python launch.py --config=configs/cifar10_edm.py --workdir=gs://bucket/cifar10_edm

Variants, one per published NVlabs/edm snapshot, which --mode=import reads from
edm_import.path (default ~/.cache/cm/edm/<file>; docs/methods.md section 8):

    (none)    DDPM++, unconditional          edm-cifar10-32x32-uncond-vp.pkl
    cond      DDPM++, class-conditional      edm-cifar10-32x32-cond-vp.pkl
    ve        NCSN++, unconditional          edm-cifar10-32x32-uncond-ve.pkl
    ve_cond   NCSN++, class-conditional      edm-cifar10-32x32-cond-ve.pkl

("vp" / "ve" name EDM's network configs; all four use EDM's preconditioning and training.)

    python launch.py --config=configs/cifar10_edm.py:ve --workdir=runs/edm_ve --mode=import

Prepare the data once (array_record: random access, exact resume), then pass
--config.data.tfds_dir=DIR:

    tfds build cifar10 --data_dir=DIR --file_format=array_record

EDM's CIFAR-10 recipe (its train.py defaults): Adam 1e-3, batch 512, 200 Mimg (390625 steps),
learning-rate warmup over 10 Mimg (19531 steps), dropout 0.13, no dataset x-flips but EDM's
augmentation pipeline with p = 0.12 whose 9 labels condition DDPM++ (augment_dim = 9), and the
EMA by half-life 0.5 Mimg with ramp-up ratio 0.05, which sampling uses.
"""

from configs.common import base_config, cifar10_data
from configs.variants import parse_variant

VARIANTS = ("cond", "ve", "ve_cond")
CACHE = "~/.cache/cm/edm"  # where the README tells users to put the downloaded snapshots


def get_config(arg=None):
    variant = parse_variant(__file__, arg, VARIANTS)
    ncsnpp, cond = variant.startswith("ve"), variant.endswith("cond")
    c = base_config()
    cifar10_data(c)
    c.data.num_classes = 10
    c.data.random_flip = False  # EDM's --xflip=False: flips come from the augmentation

    # DDPM++ (docs/methods.md section 6): 55,733,891 parameters with the augmentation layer.
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
    c.model.use_labels = cond  # EDM's --cond
    c.model.augment_dim = 9  # EDM's train.py with --augment > 0
    if ncsnpp:
        # NCSN++ as EDM's train.py --arch=ncsnpp builds it (56,397,827 parameters in EDM with
        # the augmentation layer; cm adds the 128 Fourier frequencies, which EDM keeps in a
        # buffer: model.fourier_param, so an imported network keeps its own).
        c.model.embedding = "fourier"
        c.model.fourier_scale = 16.0  # EDM's FourierEmbedding default
        c.model.fourier_param = True
        c.model.noise_mult = 2
        c.model.encoder_type = "residual"
        c.model.resample_filter = (1, 3, 3, 1)
    # EDM's training loop turns TF32 off for cuDNN convolutions and cuBLAS matmuls and trains
    # CIFAR-10 in float32 (no --fp16): full float32. (The precision study of docs/methods.md
    # section 2, Readings, concerns consistency losses; EDM's loss has no such small difference.)
    c.model.dtype = "float32"
    c.model.matmul_precision = "highest"

    c.method.name = "edm"
    c.method.p_mean = -1.2
    c.method.p_std = 1.2
    # EDM's EDMPrecond feeds ln(sigma)/4 to every network, DDPM++ included (docs/methods.md
    # section 1; NVlabs/edm training/networks.py).
    c.method.noise_label = "log_sigma_over_4"

    # EDM's train.py: AugmentPipe(p=0.12, xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1,
    # translate_frac=1) with the pipeline's default strengths (configs/common.py).
    c.augment.p = 0.12
    c.augment.xflip = 1e8
    c.augment.yflip = 1.0
    c.augment.scale = 1.0
    c.augment.rotate_frac = 1.0
    c.augment.aniso = 1.0
    c.augment.translate_frac = 1.0

    c.optim.name = "adam"
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 19_531
    c.optim.eps = 1e-8

    c.training.batch_size = 512
    c.training.num_steps = 390_625  # 200 Mimg
    # EDM's EMA only (so it is the first EMA, which sampling and snapshots use): half-life
    # 500 kimg, ramp-up ratio 0.05 (EDM's --ema=0.5 and ema_rampup_ratio).
    c.training.ema_rates = ()
    c.training.ema_halflife_images = 500_000
    c.training.ema_rampup_ratio = 0.05

    c.sampling.num_samples = 50_000
    c.sampling.batch_size = 1024
    c.sampling.heun_steps = 18

    name = f"edm-cifar10-32x32-{'cond' if cond else 'uncond'}-{'ve' if ncsnpp else 'vp'}.pkl"
    c.edm_import.path = f"{CACHE}/{name}"
    return c
