"""CPU demo of the sLCT recipe on pixels (docs/methods.md section 3) and its ablations, 8x8 digits.

The demo (configs/demo.py) with sLCT's objective and network switches: Cauchy distance with
the adaptive c(N), the low-noise diffusion loss (factor 5), OT coupling over the whole batch of
64 (one group), NsLN and the curriculum s1 = 640. The argument removes one component, for the
ablation in BENCHMARKS.md:

python launch.py --config=configs/demo_slct.py --workdir=runs/demo_slct
python launch.py --config=configs/demo_slct.py:no_ot --workdir=runs/demo_slct_no_ot

arguments: "" (full recipe) | no_cauchy (iCT pseudo-Huber, fixed c) | no_diffusion | no_ot |
groupnorm (GroupNorm instead of NsLN). The optimizer stays the demo's; the EMA stays 0.999,
the rate the ablation in BENCHMARKS.md was measured with (before the demo's issue 12 tuning).
"""

from configs import demo
from configs.variants import parse_variant

VARIANTS = ("no_cauchy", "no_diffusion", "no_ot", "groupnorm")


def get_config(arg=None):
    arg = parse_variant(__file__, arg, VARIANTS)
    c = demo.get_config()
    c.method.s1 = 640
    c.training.ema_rates = (0.999,)  # as measured in BENCHMARKS.md (sLCT ablation)
    c.method.distance = "cauchy"
    c.method.adaptive_c = True
    c.method.diffusion_weight = 5.0
    c.method.ot_coupling = True
    c.method.ot_group_size = c.training.batch_size  # 64 < the default 128: one group
    c.method.noise_label = "250_log_sigma"  # sLCT's code's label, as the demo's (configs/demo.py)
    c.model.norm = "nsln"
    if arg == "no_cauchy":
        c.method.distance, c.method.adaptive_c = "pseudo_huber", False
    elif arg == "no_diffusion":
        c.method.diffusion_weight = 0.0
    elif arg == "no_ot":
        c.method.ot_coupling = False
    elif arg == "groupnorm":
        c.model.norm = "group"
    return c
