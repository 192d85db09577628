"""sCD on CIFAR-10 (docs/methods.md section 9): continuous-time consistency distillation of an
EDM network, after sCM (arXiv 2410.11081); numbers marked "unverified" were not checked
against the paper's tables.

Import an EDM network once (README, "Importing EDM checkpoints"), or train one with
configs/cifar10_edm.py; it is the frozen teacher and the student's starting point (TrigFlow's
edm form reuses it exactly, F = -net(x_t / sd, c_noise(sd tan t))):

    python launch.py --config=configs/cifar10_edm.py --workdir=gs://bucket/edm_vp --mode=import
    python launch.py --config=configs/cifar10_scd.py --workdir=gs://bucket/cifar10_scd \
        --config.method.init_from=gs://bucket/edm_vp

Prepare the data once, then pass --config.data.tfds_dir=DIR:

    tfds build cifar10 --data_dir=DIR --file_format=array_record

A reading: sCM distils its own TrigFlow-trained teacher; here the teacher is
configs/cifar10_edm.py's DDPM++ (edm-cifar10-32x32-uncond-vp.pkl), so method.init_from must
match that network.
"""

from configs import cifar10_edm
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

    c.model = cifar10_edm.get_config().model  # the teacher's network (reads zero aug labels)
    c.model.dropout = 0.2  # unverified
    c.model.matmul_precision = "highest"

    c.method.name = "scd"
    c.method.trig_form = "edm"  # the student starts as the EDM teacher
    c.method.noise_label = "log_sigma_over_4"  # EDM's c_noise of sigma = sd tan t
    c.method.sigma_data = 0.5
    c.method.sigma_max = 80.0
    c.method.scm_p_mean = -1.0
    c.method.scm_p_std = 1.4
    c.method.scm_tangent_warmup_steps = 10_000
    c.method.scm_tangent_c = 0.1
    c.method.scm_tangent_norm = "l2"
    c.method.scm_prior_weighting = True
    c.method.init_from = ""  # the teacher: an EDM workdir (see the command above)
    c.method.init_params = "ema"

    c.augment.p = 0.0

    c.optim.name = "adam"
    c.optim.learning_rate = 1e-4  # unverified
    c.optim.b1 = 0.9
    c.optim.b2 = 0.99  # unverified
    c.optim.eps = 1e-8
    c.optim.warmup_steps = 0
    c.optim.grad_clip = 0.0

    c.training.batch_size = 512  # unverified
    c.training.num_steps = 400_000  # unverified
    c.training.ema_rates = (0.9999,)  # unverified
    c.training.ema_halflife_images = 0

    c.sampling.num_samples = 50_000
    c.sampling.batch_size = 1024
    c.sampling.trigflow_mid_times = ((), (1.1,))
    return c
