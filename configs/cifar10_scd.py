"""sCD on CIFAR-10 (docs/methods.md section 9): continuous-time consistency distillation of an
EDM network, after sCM (arXiv 2410.11081); numbers marked "unverified" were not checked
against the paper's tables.

Import an EDM network once (docs/workflows.md, "Importing EDM checkpoints"), or train one with
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

from configs import cifar10_edm, cifar10_sct
from configs.variants import parse_variant

VARIANTS = ()  # no variants besides the default


def get_config(arg=None):
    """cifar10_sct's data, time law, tangent, weighting, optimizer, training and samplers; the
    teacher's DDPM++ network (unconditional: model.use_labels is False) and the EDM form of F
    in place of sCT's NCSN++; no dropout and 500k steps (FastGen's config_scd_cifar10.py)."""
    parse_variant(__file__, arg, VARIANTS)
    c = cifar10_sct.get_config()
    c.data.num_classes = 10

    c.model = cifar10_edm.get_config().model  # the teacher's network (reads zero aug labels)
    # FastGen's sCD config: dropout 0 (the student starts as the teacher, which EDM trained
    # with 0.13); sCT keeps 0.2 (docs/methods.md section 9, "sCT and sCD: open settings").
    c.model.dropout = 0.0
    # sCT's policy (docs/methods.md section 11): sCD's g shrinks as the student becomes
    # consistent, which the tangent study's initialized network cannot show.
    c.model.matmul_precision = "highest"

    c.method.name = "scd"
    c.method.trig_form = "edm"  # the student starts as the EDM teacher
    c.method.noise_label = "log_sigma_over_4"  # EDM's c_noise of sigma = sd tan t
    c.method.init_from = ""  # the teacher: an EDM workdir (see the command above)
    c.method.init_params = "ema"

    c.training.num_steps = 500_000  # FastGen's config_scd_cifar10.py (sCT: 350k)
    return c
