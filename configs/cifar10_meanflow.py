"""MeanFlow on CIFAR-10 (docs/methods.md section 9): the paper's recipe (arXiv 2505.13447;
the authors' CIFAR-10 code Gsunshine/py-meanflow, cifar10_v0.sh), reported FID 2.92 at 1 step.

    python launch.py --config=configs/cifar10_meanflow.py --workdir=gs://bucket/cifar10_mf

Prepare the data once, then pass --config.data.tfds_dir=DIR:

    tfds build cifar10 --data_dir=DIR --file_format=array_record

U-Net (DDPM++-style, 2x noise channels, (2, 2, 2), [1, 3, 3, 1] resampling) reading (t, t - r)
as two concatenated positional embeddings, dropout 0.2; t, r logit-normal(-2, 2) sorted, r = t
for 25% of the batch, adaptive weighting p = 0.75, eps = 1e-3; Adam 6e-4 with a 200-epoch
warm-up, batch 1024, EMA 0.9999. EDM's augmentation as the recipe runs it (`--use_edm_aug` in
both scripts): meanflow/training/train_loop.py builds EDM's AugmentPipe with p = 0.12, xflip
1e8, scale 1, aniso 1, translate_frac 1 and yflip = rotate_frac = 0, which gives 6 labels
(x-flip, scale, 2 aniso, 2 translation); meanflow/models/model_configs.py sets augment_dim = 6,
and the U-Net adds them through a bias-free layer to its concatenated (t, t - r) embedding;
sampling passes no labels (zeros). The dataset flips too (meanflow/training/data_transform.py:
RandomHorizontalFlip for training).
"""

from configs import cifar10_edm
from configs.common import base_config, cifar10_data
from configs.variants import parse_variant

VARIANTS = ()  # no variants besides the default


def get_config(arg=None):
    parse_variant(__file__, arg, VARIANTS)
    c = base_config()
    cifar10_data(c)
    c.data.num_classes = 0  # unconditional
    c.data.random_flip = True  # data_transform.py: RandomHorizontalFlip, besides the pipe's x-flip

    c.model = cifar10_edm.get_config().model
    c.model.noise_mult = 2
    c.model.resample_filter = (1, 3, 3, 1)
    c.model.embedding = "positional"
    c.model.augment_dim = 6  # model_configs.py with --use_edm_aug
    c.model.use_labels = False
    c.model.dropout = 0.2
    # Full float32, the JVP at the network's precision (docs/methods.md section 11). The
    # authors' CIFAR-10 code runs TF32 and the tangent study allows it (emulated); `default`
    # becomes the choice once a device's real TF32 path confirms it.
    c.model.dtype = "float32"
    c.model.matmul_precision = "highest"

    c.method.name = "meanflow"
    c.method.mf_condition = "t_minus_r"
    c.method.mf_time_scale = 1.0
    c.method.mf_t_mean, c.method.mf_t_std = -2.0, 2.0
    c.method.mf_r_mean, c.method.mf_r_std = -2.0, 2.0
    c.method.mf_tr_order = "sorted"
    c.method.mf_equal_fraction = 0.25
    c.method.mf_norm_p = 0.75
    c.method.mf_norm_eps = 1e-3
    c.method.jvp_dtype = "model"  # one pass: the JVP's primal is the prediction (section 11)
    c.method.jvp_matmul_precision = "model"

    # train_loop.py's AugmentPipe (module docstring): EDM's CIFAR-10 pipeline without y-flips
    # and rotations; strengths (scale_std, aniso_std, translate_frac_std, ...) at EDM's defaults.
    c.augment.p = 0.12
    c.augment.xflip = 1e8
    c.augment.yflip = 0.0
    c.augment.scale = 1.0
    c.augment.rotate_frac = 0.0
    c.augment.aniso = 1.0
    c.augment.translate_frac = 1.0

    c.optim.name = "adam"
    c.optim.learning_rate = 6e-4
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999  # unverified
    c.optim.eps = 1e-8
    c.optim.warmup_steps = 9_766  # 200 epochs of 50k images at batch 1024
    c.optim.grad_clip = 0.0

    c.training.batch_size = 1024
    c.training.num_steps = 800_000  # unverified
    c.training.ema_rates = (0.9999, 0.99995, 0.9996)  # the first is sampled from
    c.training.ema_halflife_images = 0

    c.sampling.num_samples = 50_000
    c.sampling.batch_size = 1024
    c.sampling.meanflow_times = ((1.0, 0.0), (1.0, 0.5, 0.0))
    return c
