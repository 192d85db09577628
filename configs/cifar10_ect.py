"""ECT on CIFAR-10 (docs/methods.md section 8): tune EDM's DDPM++ into a consistency model, as
locuslab/ect's run_ecm.sh runs it: 200k steps, for which ECT's README gives FID 3.86 at 1 step
and 2.15 at 2 steps. `:400k` runs twice as long, the README's 400k row (3.60 / 2.11); its
script was not released, and its stage interval of 6.4 Mimg (8 stages, as the 200k run has)
is our inference.

Import EDM's edm-cifar10-32x32-uncond-vp.pkl once (docs/workflows.md, "Importing EDM
checkpoints"), then start from it:

    python launch.py --config=configs/cifar10_edm.py --workdir=gs://bucket/edm_vp --mode=import
    python launch.py --config=configs/cifar10_ect.py --workdir=gs://bucket/cifar10_ect \
        --config.method.init_from=gs://bucket/edm_vp

Prepare the data once (array_record: random access, exact resume), then pass
--config.data.tfds_dir=DIR:

    tfds build cifar10 --data_dir=DIR --file_format=array_record

The recipe (run_ecm.sh and ct_train.py's defaults): batch 128, 25.6 Mimg (200k steps), RAdam
1e-4 (betas 0.9, 0.999, eps 1e-8), dropout 0.2, no augmentation and no dataset flips, EMA 0.9999
(no ramp-up: --transfer turns it off), the stage doubling every 250 ticks of 12.8 kimg, the L2
norm (c = 0), 2-step level 0.821, full float32 (--tf32 defaults to False), no clip of the x0
estimate between sampling steps (generator_fn).
"""

from configs import cifar10_edm
from configs.common import base_config, cifar10_data
from configs.variants import parse_variant

VARIANTS = ("400k",)  # ECT's 400k-step row (README); "" = run_ecm.sh's 200k steps

# Per variant: (training steps at batch 128, images per stage). The default is run_ecm.sh's
# --duration=25.6 Mimg with --double=250 ticks x --tick=12.8 kimg = 3.2 Mimg (8 stages); the
# 400k run's interval is not published: 6.4 Mimg keeps its 8 stages (our inference).
SCHEDULES = {"": (200_000, 3_200_000), "400k": (400_000, 6_400_000)}


def get_config(arg=None):
    variant = parse_variant(__file__, arg, VARIANTS)
    num_steps, double_images = SCHEDULES[variant]
    c = base_config()
    cifar10_data(c)
    c.data.num_classes = 10
    c.data.random_flip = False  # ct_train.py's --xflip=False

    # EDM's DDPM++ exactly as configs/cifar10_edm.py (the network of the imported
    # edm-cifar10-32x32-uncond-vp.pkl), so method.init_from matches it parameter for parameter.
    # It keeps EDM's 9-label augmentation layer: ECT's network has none (--augment=0) and drops
    # those weights, and here the layer reads zero labels (augment.p = 0), so it adds nothing
    # and its weights get zero gradients: the same function as ECT's.
    c.model = cifar10_edm.get_config().model
    c.model.dropout = 0.2
    # ct_train.py: --tf32=False, float32 (no --fp16); docs/methods.md section 11.
    c.model.matmul_precision = "highest"

    c.method.name = "ect"
    c.method.p_mean = -1.1
    c.method.p_std = 2.0
    c.method.ect_q = 2.0
    c.method.ect_k = 8.0
    c.method.ect_b = 1.0
    c.method.ect_double_images = double_images  # SCHEDULES above
    # ECMLoss with c = 0 (run_ecm.sh keeps ct_train.py's -c 0.0): the Euclidean norm.
    c.method.distance = "l2_norm"
    c.method.noise_label = "log_sigma_over_4"  # ECMPrecond: c_noise = ln(sigma)/4
    # ECMPrecond's sigma_min (0.003, which ct_train.py does not override): the boundary of the
    # consistency function at sampling; the sampler starts at sigma_max = 80 (generator_fn).
    c.method.sigma_min = 0.003
    c.method.sigma_max = 80.0
    c.method.init_from = ""  # the imported EDM workdir (see the command above)
    c.method.init_params = "ema"  # ECT copies the pickle's EMA network into net and EMA
    c.method.ect_clip_denoised = False  # generator_fn re-noises the raw estimate

    c.augment.p = 0.0  # --augment=0.0

    c.optim.name = "radam"
    c.optim.learning_rate = 1e-4
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8

    c.training.batch_size = 128
    c.training.num_steps = num_steps  # SCHEDULES above: 25.6 Mimg (51.2 for :400k)
    c.training.ema_rates = (0.9999,)  # --ema_beta, constant (ema_rampup_ratio=None)
    c.training.ema_halflife_images = 0

    c.sampling.num_samples = 50_000
    c.sampling.batch_size = 1024
    c.sampling.consistency_levels = ((), (0.821,))  # --mid_t=0.821
    return c
