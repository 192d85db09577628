"""sLCT on CelebA-HQ 256 latents (PAPERS.md section 3), and the iLCT baseline (argument `ilct`).

Encode the images once (the Stable Diffusion VAE, see README "Latent space"), then train:

    python launch.py --config=configs/celebahq256_slct.py --workdir=W --mode=encode \
        --config.vae.images.path=CELEBAHQ_256_FOLDER --config.data.path=LATENTS.npz
    python launch.py --config=configs/celebahq256_slct.py --workdir=W \
        --config.data.path=LATENTS.npz
    python launch.py --config=configs/celebahq256_slct.py:ilct --workdir=W_ilct ...

sLCT: Cauchy distance with the adaptive c(N), the diffusion loss on the lowest 25 % of the
grid (factor 5), per-shard OT coupling, NsLN, curriculum s1 = 640, RAdam lr 1e-4 with weight
decay 1e-4, EMA 0.99993, 2-step level = index 440 of the 641-level grid (about 0.369).
iLCT: pseudo-Huber with c = 0.00054 sqrt(d), GroupNorm, s1 = 1280, no OT, no diffusion loss.
PAPERS.md gives no batch size or step count for this recipe: the ones below are our choice.
"""

from cm import schedules
from configs.common import base_config, latent_data, slct_latent_model

# The second sampling level: this index of the (s1 + 1)-level grid, counted from sigma_max.
SECOND_LEVEL_INDEX = 440
ARGS = ("", "slct", "ilct")


def get_config(arg=None):
    arg = arg or ""
    if arg not in ARGS:
        raise ValueError(f"Unknown celebahq256_slct argument {arg!r}; valid: {list(ARGS)}.")
    c = base_config()
    c.vae.images.name = "folder"
    c.vae.images.image_size = 256
    c.vae.images.num_classes = 0
    latent_data(c, "")  # --config.data.path=LATENTS.npz (written by --mode=encode)
    c.data.random_flip = False
    slct_latent_model(c)  # ADM, 4 x 32 x 32, NsLN
    c.model.use_labels = False

    m = c.method
    m.name = "ict"
    m.s0, m.s1 = 10, 640
    m.distance = "cauchy"
    m.adaptive_c = True
    m.diffusion_weight = 5.0
    m.diffusion_quantile = 0.25
    m.ot_coupling = True
    # 250 ln(sigma): sLCT's code (quandao10/LCT, from openai/consistency_models), as set by
    # slct_latent_model; the iLCT baseline keeps it (docs/methods.md section 1).
    m.noise_label = "250_log_sigma"

    c.optim.name = "radam"
    c.optim.learning_rate = 1e-4
    c.optim.weight_decay = 1e-4

    c.training.batch_size = 256  # our choice (not in PAPERS.md)
    c.training.num_steps = 400_000  # our choice (not in PAPERS.md)
    c.training.ema_rates = (0.99993,)

    if arg == "ilct":
        m.s1 = 1280
        m.distance = "pseudo_huber"
        m.adaptive_c = False
        m.diffusion_weight = 0.0
        m.ot_coupling = False
        c.model.norm = "group"

    level = schedules.karras_level_from_top(
        SECOND_LEVEL_INDEX, 641, m.sigma_min, m.sigma_max, m.rho
    )
    c.sampling.consistency_levels = ((), (level,))
    c.sampling.num_samples = 50_000
    c.sampling.batch_size = 500
    return c
