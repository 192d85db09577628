"""CPU demo: class-conditional iCT on scikit-learn's 8x8 digits, a few minutes on 2 cores.

python launch.py --config=configs/demo.py --workdir=runs/demo
"""

from configs.common import base_config
from configs.variants import parse_variant

VARIANTS = ()  # no variants besides the default


def get_config(arg=None):
    parse_variant(__file__, arg, VARIANTS)
    c = base_config()
    c.data.name = "digits"
    c.data.image_size = 8
    c.data.channels = 1
    c.data.num_classes = 10

    c.model.channels = 16
    c.model.channel_mult = (1, 2)
    c.model.num_blocks = 1
    c.model.attn_resolutions = ()
    c.model.embedding = "positional"
    c.model.num_groups = 4
    c.model.dropout = 0.0

    c.method.name = "ict"
    # Small-budget iCT (docs/methods.md section 10, BENCHMARKS.md "Sample quality"): at 3000
    # steps the curriculum stops at N = 81 (4 stages of 750 steps) and the EMA spans ~100
    # steps; the paper's s1 = 1280 and a 1000-step EMA lag a curriculum this short.
    c.method.s1 = 80
    # Our choice for the demo: 250 ln(sigma) (the PyTorch consistency-model code's label),
    # which spreads the label over the positional sinusoids' frequencies; the demo's numbers in
    # BENCHMARKS.md were measured with it (docs/methods.md section 1).
    c.method.noise_label = "250_log_sigma"
    # The other methods on the demo budget (BENCHMARKS.md, "From a diffusion model on the
    # digits" and "Continuous-time methods on the digits"): ECT's stage doubles every 48k
    # images, i.e. 4 stages of 750 steps as iCT's above (8 stages gave a 10x worse one-step FD);
    # sCM's tangent warm-up lasts a tenth of the run (the paper: 10k steps).
    c.method.ect_double_images = 48_000
    c.method.scm_tangent_warmup_steps = 300

    c.optim.learning_rate = 2e-3
    c.optim.name = "radam"

    c.training.batch_size = 64
    c.training.num_steps = 3000
    c.training.ema_rates = (0.99,)  # see s1 above
    c.training.log_every = 100
    c.training.checkpoint_every = 1000
    c.training.snapshot_every = 250
    c.training.power_ema_stds = (0.05, 0.10)  # for the post-hoc EMA baseline of --mode=lcsc
    c.training.sample_every = 1000
    c.training.grid_samples = 100

    c.sampling.num_samples = 100
    c.sampling.batch_size = 100
    c.sampling.consistency_levels = ((), (0.821,))

    # --mode=lcsc on the 12 snapshots: about 15 minutes on 2 cores (BENCHMARKS.md, LCSC).
    c.lcsc.population = 12
    c.lcsc.generations = 15
    c.lcsc.search_samples = 2000
    c.lcsc.heldout_samples = 10_000
    return c
