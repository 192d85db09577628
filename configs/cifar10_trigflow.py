"""TrigFlow diffusion on CIFAR-10 (docs/methods.md section 9, "TrigFlow diffusion"): the
diffusion model that configs/cifar10_sct.py:trigflow starts sCT from (sCM's Algorithm 1).

    python launch.py --config=configs/cifar10_trigflow.py --workdir=gs://bucket/trigflow
    python launch.py --config=configs/cifar10_sct.py:trigflow --workdir=gs://bucket/sct_tf \\
        --config.method.init_from=gs://bucket/trigflow

Prepare the data once (array_record: random access, exact resume), then pass
--config.data.tfds_dir=DIR:

    tfds build cifar10 --data_dir=DIR --file_format=array_record

The network is cifar10_sct.py:trigflow's, parameter for parameter (NCSN++ with sCM's
c_noise(t) = t on positional embeddings, unconditional, plus the 9 augmentation labels this run
trains with). sCM gives no CIFAR-10 pretraining recipe that `cm` could verify, so the rest is
EDM's CIFAR-10 recipe (configs/cifar10_edm.py), which the TrigFlow loss equals up to the factor
sd^2 (docs/methods.md section 9): its law ln(sigma) ~ N(-1.2, 1.2^2), Adam 1e-3 with 10 Mimg of
warm-up, batch 512, 200 Mimg, dropout 0.13, the augmentation pipeline with p = 0.12, the EMA by
half-life 0.5 Mimg, and EDM's Heun sampler with 18 steps for its samples.
"""

from configs import cifar10_edm, cifar10_sct
from configs.variants import parse_variant

VARIANTS = ()  # no variants besides the default


def get_config(arg=None):
    parse_variant(__file__, arg, VARIANTS)
    c = cifar10_edm.get_config("ve")  # EDM's recipe: data, augmentation, optimizer, EMA, Heun
    c.data.num_classes = 0  # unconditional, as sCT
    c.model = cifar10_sct.get_config("trigflow").model  # the network sCT starts from
    c.model.dropout = 0.13  # EDM's CIFAR-10 dropout (a reading: sCM's is not verified)

    c.method.name = "trigflow"
    c.method.trig_form = "trigflow"  # F = net(x_t / sd, t), sCT's form
    c.method.trig_time_scale = 1.0
    c.method.sigma_data = 0.5
    c.edm_import.path = ""  # no published TrigFlow checkpoint to import
    return c
