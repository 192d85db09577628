"""Consistency distillation on CIFAR-10 (docs/methods.md section 8), CM's recipe
(openai/consistency_models_cifar10 configs/cifar10_ve_cd.py) with a teacher that `cm` can load.

Import an EDM network once (docs/workflows.md, "Importing EDM checkpoints"), or train one with
configs/cifar10_edm.py; it is both the frozen teacher and the student's starting point:

    python launch.py --config=configs/cifar10_edm.py --workdir=gs://bucket/edm_vp --mode=import
    python launch.py --config=configs/cifar10_cd.py --workdir=gs://bucket/cifar10_cd \
        --config.method.init_from=gs://bucket/edm_vp

Prepare the data once (array_record: random access, exact resume), then pass
--config.data.tfds_dir=DIR:

    tfds build cifar10 --data_dir=DIR --file_format=array_record

The distance is CM's LPIPS (docs/methods.md section 8), whose two weight files a training start
reads (then its checkpoints carry them: a resume, --mode=sample and --mode=eval need neither;
--mode=summary needs none). On a machine with internet download them to their default places,
or anywhere with --config.method.lpips_vgg_path and --config.method.lpips_lin_path:

    https://download.pytorch.org/models/vgg16-397923af.pth
        -> ~/.cache/cm/vgg16-397923af.pth           (torchvision's ImageNet VGG16)
    https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth
        -> ~/.cache/cm/lpips/v0.1/vgg.pth           (the lpips package's v0.1 heads)

A missing or wrong file stops the start with one sentence before anything is written;
--config.method.distance=pseudo_huber trains without them.

CM's recipe: N = 18, Heun, uniform weighting, the stop-gradient student as target (the
"consistency" loss of jcm passes no target parameters: mu = 0), batch 512, 800k steps, RAdam
4e-4 without warm-up (jcm's RAdam branch applies no schedule) or clipping, EMA 0.9999, dropout 0,
the student initialized from the teacher, LPIPS on images upsampled to 224 with VGG16's max
pooling (jcm's LPIPS port); the 2-step sampler of CM's notebook (editing_multistep_sampling.ipynb:
ts = [0, 11, 17] on the N = 18 grid, level 0.5853481), clipping each x0 estimate to [-1, 1]
before re-noising it. One reading (docs/methods.md section 8): CM's teacher was its own
NCSN++ EDM; here the network is configs/cifar10_edm.py's DDPM++ (the imported
edm-cifar10-32x32-uncond-vp.pkl, as ECT's), whose weights method.init_from must match.
"""

from configs import cifar10_edm
from configs.common import base_config, cifar10_data
from configs.variants import parse_variant

VARIANTS = ()  # no variants besides the default


def get_config(arg=None):
    parse_variant(__file__, arg, VARIANTS)
    c = base_config()
    cifar10_data(c)
    c.data.num_classes = 10
    c.data.random_flip = True  # jcm's default data.random_flip

    # The teacher's network (configs/cifar10_edm.py: DDPM++ with EDM's augmentation layer,
    # which reads zero labels here). CM distils with dropout 0.
    c.model = cifar10_edm.get_config().model
    c.model.dropout = 0.0
    # jcm sets none: JAX's default (TF32 on A100s). At N = 18 the top pair's difference is
    # about 90 times iCT's finest, so TF32's noise over it is an estimated 0.1 there and less
    # below (docs/methods.md section 11).
    c.model.matmul_precision = "default"

    c.method.name = "cd"
    c.method.cd_num_scales = 18
    c.method.cd_target_ema = 0.0  # mu = 0: the stop-gradient student (jcm's CIFAR-10 CD)
    c.method.sigma_min = 0.002
    c.method.sigma_max = 80.0
    c.method.rho = 7.0
    c.method.distance = "lpips"  # CM's CIFAR-10 CD (jcm configs/cifar10_ve_cd.py)
    c.method.lpips_resize = 224  # jcm resizes to 224 x 224 (bilinear) before LPIPS
    c.method.lpips_pooling = "max"  # jcm's LPIPS (lpips-j on flaxmodels' VGG16): max pooling
    c.method.noise_label = "log_sigma_over_4"  # jcm and EDM: c_noise = ln(sigma)/4
    c.method.init_from = ""  # the teacher: an EDM workdir (see the command above)
    c.method.init_params = "ema"

    c.augment.p = 0.0

    c.optim.name = "radam"
    c.optim.learning_rate = 4e-4
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.warmup_steps = 0
    c.optim.grad_clip = 0.0

    c.training.batch_size = 512
    c.training.num_steps = 800_000
    c.training.ema_rates = (0.9999,)
    c.training.ema_halflife_images = 0

    c.sampling.num_samples = 50_000
    c.sampling.batch_size = 1024
    # CM's notebook samples its CIFAR-10 CD model with ts = [0, 11, 17] on the N = 18 Karras grid
    # counted from sigma_max: t_11 = (80^(1/7) + 11/17 (0.002^(1/7) - 80^(1/7)))^7 = 0.5853481
    # (iCT's 0.821 is a level of another grid).
    c.sampling.consistency_levels = ((), (0.5853481,))
    c.method.cd_clip_denoised = True  # the notebook clips each x0 estimate to [-1, 1]
    return c
