"""sCT on CIFAR-10 (docs/methods.md section 9): continuous-time consistency training from
scratch, sCM's recipe (arXiv 2410.11081, its CIFAR-10 hyperparameter table) as far as `cm`
could verify it; numbers marked "unverified" are from the formula sheet or memory of the paper
and were not checked against its table.

    python launch.py --config=configs/cifar10_sct.py --workdir=gs://bucket/cifar10_sct

Prepare the data once (array_record: random access, exact resume), then pass
--config.data.tfds_dir=DIR:

    tfds build cifar10 --data_dir=DIR --file_format=array_record

TrigFlow over NCSN++ (configs/cifar10_edm.py:ve's network) with sCM's c_noise(t) = t fed to
positional embeddings (its Figure 4), the lognormal-tangent time law (-1.0, 1.4), tangent
warm-up 10k steps, normalization c = 0.1, the learned weighting w(t) with the 1 / sigma prior.
Samplers: 1 step from t_max = arctan(80 / 0.5) and 2 steps with t = 1.1.
"""

from configs import cifar10_edm
from configs.common import base_config, cifar10_data
from configs.variants import parse_variant

VARIANTS = ()  # no variants besides the default


def get_config(arg=None):
    parse_variant(__file__, arg, VARIANTS)
    c = base_config()
    cifar10_data(c)
    c.data.num_classes = 0  # sCM's CIFAR-10 numbers are unconditional
    c.data.random_flip = True

    # NCSN++ with positional time embeddings (sCM: Fourier scales destabilize dF/dt).
    c.model = cifar10_edm.get_config("ve").model
    c.model.embedding = "positional"
    c.model.fourier_param = False
    c.model.augment_dim = 0
    c.model.use_labels = False
    c.model.dropout = 0.2  # unverified (sCM's table as remembered)
    c.model.matmul_precision = "highest"  # full float32 for consistency training

    c.method.name = "sct"
    c.method.trig_form = "trigflow"
    c.method.trig_time_scale = 1.0
    c.method.sigma_data = 0.5
    c.method.sigma_max = 80.0  # t_max = arctan(80 / 0.5) = 1.5645
    c.method.scm_p_mean = -1.0
    c.method.scm_p_std = 1.4
    c.method.scm_tangent_warmup_steps = 10_000
    c.method.scm_tangent_c = 0.1
    c.method.scm_tangent_norm = "l2"
    c.method.scm_prior_weighting = True
    c.method.scm_weighting_channels = 128
    c.method.scm_weighting_fourier_scale = 1.0

    c.augment.p = 0.0

    c.optim.name = "adam"
    c.optim.learning_rate = 1e-4  # unverified
    c.optim.b1 = 0.9
    c.optim.b2 = 0.99  # unverified (sCM uses EDM2-style Adam betas)
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
