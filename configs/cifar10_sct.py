"""sCT on CIFAR-10 (docs/methods.md section 9): continuous-time consistency training, sCM's
recipe (arXiv 2410.11081, its CIFAR-10 hyperparameter table) as far as `cm` could verify it;
numbers marked "unverified" are from the formula sheet or memory of the paper and were not
checked against its table.

The default is sCT from scratch (random parameters; training logs a warning): sCM's Algorithm 1
starts sCT from a trained diffusion model, which the variants do (docs/methods.md section 9,
"sCT's starting point"):

    (none)    sCT from scratch
    trigflow  from a TrigFlow diffusion run of configs/cifar10_trigflow.py (sCM's start: the
              same NCSN++ and c_noise(t) = t; P_std 1.4, which FastGen keeps with a TrigFlow
              checkpoint)
    edm       from EDM's edm-cifar10-32x32-uncond-vp.pkl, imported (FastGen's CIFAR-10 sCT):
              DDPM++ read through TrigFlow's edm form, EDM's ln(sigma) / 4 label, P_std 1.8
              (FastGen's value for an EDM checkpoint)

    python launch.py --config=configs/cifar10_sct.py --workdir=gs://bucket/cifar10_sct
    python launch.py --config=configs/cifar10_trigflow.py --workdir=gs://bucket/trigflow
    python launch.py --config=configs/cifar10_sct.py:trigflow --workdir=gs://bucket/sct_tf \
        --config.method.init_from=gs://bucket/trigflow
    python launch.py --config=configs/cifar10_edm.py --workdir=gs://bucket/edm_vp --mode=import
    python launch.py --config=configs/cifar10_sct.py:edm --workdir=gs://bucket/sct_edm \
        --config.method.init_from=gs://bucket/edm_vp

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

VARIANTS = ("trigflow", "edm")  # sCT's starting points (module docstring)


def get_config(arg=None):
    variant = parse_variant(__file__, arg, VARIANTS)
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
    c.model.dropout = 0.2  # FastGen's sCM CIFAR-10 config (config_scm.py)
    # Full float32, the JVP at the network's precision (docs/methods.md section 11): FastGen's
    # CIFAR-10 sCM turns TF32 off; the tangent study allows TF32, which a device must confirm.
    c.model.dtype = "float32"
    c.model.matmul_precision = "highest"

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
    c.method.jvp_dtype = "model"  # one pass for F_theta and its JVP (section 11)
    c.method.jvp_matmul_precision = "model"

    c.augment.p = 0.0

    # FastGen's sCM CIFAR-10 recipe (docs/methods.md section 9, "sCT and sCD: open settings"):
    # RAdam 1e-4, betas (0.9, 0.99), eps 1e-8, no weight decay, a constant rate (no warm-up, no
    # decay: not EDM2's inverse square root), no effective clipping.
    c.optim.name = "radam"
    c.optim.learning_rate = 1e-4
    c.optim.b1 = 0.9
    c.optim.b2 = 0.99
    c.optim.eps = 1e-8
    c.optim.warmup_steps = 0
    c.optim.grad_clip = 0.0

    c.training.batch_size = 512  # FastGen's config_sct_cifar10.py
    c.training.num_steps = 350_000  # FastGen's config_sct_cifar10.py
    c.training.ema_rates = (0.9999,)  # unverified
    c.training.ema_halflife_images = 0

    c.sampling.num_samples = 50_000
    c.sampling.batch_size = 1024
    c.sampling.trigflow_mid_times = ((), (1.1,))
    if variant == "trigflow":
        from_trigflow(c)
    elif variant == "edm":
        from_edm(c)
    return c


def from_trigflow(c):
    """:trigflow: start from configs/cifar10_trigflow.py's network, sCT's own with EDM's 9
    augmentation labels, which sCT feeds zeros (augment.p = 0: the layer adds nothing)."""
    c.model.augment_dim = 9
    c.method.trig_form = "trigflow"
    c.method.scm_p_std = 1.4  # FastGen's sCM config: 1.4 with a TrigFlow checkpoint
    c.method.init_from = ""  # the TrigFlow diffusion workdir (module docstring)
    c.method.init_params = "ema"


def from_edm(c):
    """:edm: start from EDM's DDPM++ (configs/cifar10_edm.py's network, which --mode=import
    fills), read exactly through TrigFlow's edm form, with sCT's dropout and precision."""
    dropout, precision = c.model.dropout, c.model.matmul_precision
    c.model = cifar10_edm.get_config().model  # unconditional; reads zero augmentation labels
    c.model.dropout, c.model.matmul_precision = dropout, precision
    c.method.trig_form = "edm"  # F = -net(x_t / sd, c_noise(sd tan t))
    c.method.noise_label = "log_sigma_over_4"  # EDM's c_noise
    c.method.scm_p_std = 1.8  # FastGen's sCM config: 1.8 for sCT from the EDM checkpoint
    c.method.init_from = ""  # the imported EDM workdir (module docstring)
    c.method.init_params = "ema"
