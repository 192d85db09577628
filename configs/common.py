"""Defaults shared by every experiment config; each config overrides what its paper changes."""

import ml_collections

from cm import methods


def base_config() -> ml_collections.ConfigDict:
    """Every field any part of `cm` reads, at its paper default (docs/methods.md, 1, 2, 5)."""
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.name = "digits"  # digits | tfds | npz | folder | latents (written by --mode=encode)
    c.data.tfds_name = ""  # e.g. "cifar10", "imagenet_resized/64x64"
    c.data.tfds_dir = ""  # tfds data_dir; "" uses TFDS_DATA_DIR or ~/tensorflow_datasets
    c.data.path = ""  # .npz file or image folder
    c.data.split = "train"
    c.data.image_size = 8
    c.data.channels = 1
    c.data.num_classes = 10  # 0 = no labels
    c.data.random_flip = False
    c.data.latent_std = 0.5  # latents: standardized per element to this std (methods.md 3)

    c.model = ml_collections.ConfigDict()
    c.model.name = "unet"  # unet (DDPM++ / NCSN++) | adm (keys of cm.models.MODELS)
    c.model.channels = 32
    c.model.channel_mult = (1, 2)
    c.model.num_blocks = 2
    c.model.attn_resolutions = (4,)
    c.model.dropout = 0.0
    c.model.dropout_max_resolution = 0  # dropout only at heights <= this; 0 = everywhere
    c.model.embedding = "positional"  # positional | fourier
    c.model.fourier_scale = 16.0
    # Keep the Fourier frequencies in the parameters (`map_noise/freqs`, under stop_gradient)
    # instead of drawing them from a seed: EDM's NCSN++ draws its own with torch, so an imported
    # one (--mode=import, configs/cifar10_edm.py:ve) must carry them. Adds noise_mult * channels
    # / 2 parameters; a coupled optim.weight_decay would decay them.
    c.model.fourier_param = False
    c.model.noise_mult = 1  # noise-embedding width = noise_mult * channels (NCSN++: 2)
    c.model.encoder_type = "standard"  # standard | residual (NCSN++'s progressive input)
    c.model.resample_filter = (1, 1)  # FIR filter of resampling blocks (NCSN++: (1, 3, 3, 1))
    c.model.norm = "group"  # group | nsln
    c.model.num_groups = 32
    c.model.use_labels = True  # condition on data.num_classes labels when > 0
    c.model.dtype = "float32"  # float32 | bfloat16 (compute dtype; parameters stay float32)
    # Width of the augmentation labels (cm/methods/augment.py) the net reads through a bias-free
    # Dense
    # into its noise embedding (EDM's map_augment); 0 = none. EDM's CIFAR-10 pipeline: 9.
    c.model.augment_dim = 0
    # Precision of the network's convs and matmuls in training and sampling (cm/precision.py):
    # default (the device's: TF32 on NVIDIA GPUs, 1 bfloat16 pass on TPUs) | high | highest
    # (full float32). Each paper config states its choice.
    c.model.matmul_precision = "default"
    # Recompute each residual / attention block in the backward pass instead of keeping its
    # activations (flax remat): less memory, about one more forward pass of time.
    c.model.remat = False

    c.method = ml_collections.ConfigDict()
    # ict | edm | trigflow | ect | cd | sct | scd | meanflow (the table: cm/methods/table.py)
    c.method.name = "ict"
    c.method.sigma_min = 0.002
    c.method.sigma_max = 80.0
    c.method.rho = 7.0
    c.method.sigma_data = 0.5
    # c_noise fed to the network, named by its formula (cm/precond.py NOISE_LABELS;
    # docs/methods.md section 1): log_sigma_over_4 = ln(sigma)/4 (EDM's preconditioning, every
    # network) | 250_log_sigma = 250 ln(sigma) (openai/consistency_models and sLCT's code).
    c.method.noise_label = "log_sigma_over_4"
    c.method.p_mean = -1.1  # iCT index distribution (EDM training uses -1.2)
    c.method.p_std = 2.0  # iCT index distribution (EDM training uses 1.2)
    # pseudo_huber | l2_norm | l1 | l2 (jcm's: means over elements) | cauchy | pseudo_huber_lct
    # | lpips (cd); cm/methods/losses.py.
    c.method.distance = "pseudo_huber"
    c.method.huber_c_factor = 0.00054  # c = factor * sqrt(d)
    # Start a new run from another run's network (cm/workdir/init_from.py): a cm workdir (its
    # newest committed checkpoint) or <workdir>/checkpoints/<step>; its parameters become the
    # parameters and every EMA at step 0 (CD: also the frozen teacher). "" = random init.
    c.method.init_from = ""
    c.method.init_params = "ema"  # which tree of init_from: ema (its first EMA) | params (online)
    # Each method's own fields, with their paper defaults and comments, live in its module's
    # DEFAULTS (cm/methods/ict.py: s0, s1, sLCT's switches, OT; ect.py: ect_*; cd.py: cd_*,
    # lpips_*; sct.py: trig_*, scm_*; meanflow.py: mf_*).
    c.method.update(methods.defaults())

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "radam"  # radam | adam | adamw
    c.optim.learning_rate = 1e-4
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.0
    c.optim.warmup_steps = 0
    c.optim.grad_clip = 0.0  # 0 = off

    c.training = ml_collections.ConfigDict()
    c.training.batch_size = 1024  # global, over all devices and hosts
    c.training.num_steps = 400_000
    c.training.ema_rates = (0.99993,)  # constant per-step EMA rates, one EMA each
    # EDM's EMA (docs/methods.md section 5), tracked after the constant ones:
    # beta = 0.5 ^ (batch / max(min(halflife, ratio * images_seen), 1e-8)); 0 = off.
    c.training.ema_halflife_images = 0  # EDM CIFAR-10: 500_000
    c.training.ema_rampup_ratio = 0.05  # EDM's default; 0 = no ramp-up (EDM's None)
    c.training.log_every = 100
    c.training.checkpoint_every = 5000
    c.training.keep_checkpoints = 3
    c.training.snapshot_every = 1000  # parameter-only stream (online + EMA), kept forever; 0 = off
    # sigma_rel of EDM2 power-function EMAs tracked in the state and saved in every snapshot,
    # for post-hoc EMA reconstruction (cm/power_ema.py; EDM2 tracks (0.05, 0.10)); () = off.
    c.training.power_ema_stds = ()
    c.training.sample_every = 10_000  # 0 = off
    c.training.grid_samples = 64
    # Stop (with a checkpoint) after this many steps in one process, 0 = run to num_steps: for
    # clusters with job time limits; the same command resumes.
    c.training.steps_per_run = 0
    # One training process per workdir (cm/workdir/lock.py): the owner refreshes lock.json every
    # heartbeat; a lock whose heartbeat is older than stale_seconds is taken over (a dead owner on
    # the same host is detected at once by its pid).
    c.training.lock_heartbeat_seconds = 30.0
    c.training.lock_stale_seconds = 300.0
    # JAX's persistent compilation cache (cm/compile_cache.py): compiled programs are kept
    # here and reused by later processes with the same program and devices; local to each
    # host; "" = off. Programs that compiled faster than min_compile_seconds are not written
    # (0: every program, also the small ones of CPU runs).
    c.training.compilation_cache_dir = "~/.cache/cm/jax"
    c.training.compilation_cache_min_compile_seconds = 0.0

    # EDM's augmentation pipeline (cm/methods/augment.py; docs/methods.md section 5), applied to
    # each
    # training batch inside the jitted step by the methods whose table entry augments (edm,
    # meanflow; the others refuse p > 0). Each transform is drawn with probability
    # min(multiplier * p, 1) (a drawn flip flips with probability 1/2); its labels go to the net
    # (model.augment_dim).
    c.augment = ml_collections.ConfigDict()
    c.augment.p = 0.0  # overall probability multiplier; 0 = off (EDM CIFAR-10: 0.12)
    c.augment.xflip = 1e8  # x-flip multiplier (EDM's 1e8: a flip with probability 1/2 always)
    c.augment.yflip = 1.0  # y-flip multiplier
    c.augment.scale = 1.0  # isotropic scaling multiplier
    c.augment.rotate_frac = 1.0  # arbitrary rotation multiplier
    c.augment.aniso = 1.0  # anisotropic scaling multiplier
    c.augment.translate_frac = 1.0  # fractional translation multiplier
    c.augment.scale_std = 0.2  # log2 std of isotropic scaling
    c.augment.rotate_frac_max = 1.0  # rotation range, 1 = full circle
    c.augment.aniso_std = 0.2  # log2 std of anisotropic scaling
    c.augment.aniso_rotate_prob = 0.5  # probability that the anisotropic axes are rotated
    c.augment.translate_frac_std = 0.125  # translation std, relative to the image size

    c.sampling = ml_collections.ConfigDict()
    c.sampling.num_samples = 64
    c.sampling.batch_size = 64  # global, per call over all devices
    c.sampling.consistency_levels = ((), (0.821,))  # each: the levels after the first step
    c.sampling.heun_steps = 18
    # TrigFlow (sct, scd; docs/methods.md section 9): the first step starts at t_max =
    # arctan(method.sigma_max / sd) (1.5645 for 80 / 0.5); each entry lists the times of the
    # further steps (sCM's 2-step: t = 1.1).
    c.sampling.trigflow_mid_times = ((), (1.1,))
    # MeanFlow (section 9): each entry a schedule from 1 (noise) to 0; the 2-step mid time 0.5
    # is our reading (FastGen's; the official code leaves it to its config).
    c.sampling.meanflow_times = ((1.0, 0.0), (1.0, 0.5, 0.0))
    c.sampling.churn = 0.0
    c.sampling.s_tmin = 0.0
    c.sampling.s_tmax = float("inf")
    c.sampling.s_noise = 1.0
    c.sampling.params = "ema"  # ema | online
    c.sampling.seed = 1

    # --mode=eval, --mode=fid_stats and periodic evaluation in training (docs/methods.md section 7).
    c.eval = ml_collections.ConfigDict()
    # Comma-separated: inception (FID, IS, precision/recall), digits (classifier features).
    # "" = digits on the digits data, inception otherwise.
    c.eval.metrics = ""
    c.eval.num_samples = 50_000  # per sampler, the published protocol
    c.eval.inception_path = "~/.cache/cm/pt_inception-2015-12-05-6726825d.pth"
    c.eval.stats_path = ""  # reference statistics; "" = <workdir>/fid_stats/<data id>.npz
    c.eval.batch_size = 256  # Inception images per call, global (rounded up to the devices)
    c.eval.is_splits = 10
    c.eval.pr_k = 3  # k-th neighbour radius for precision/recall
    c.eval.pr_samples = 10_000  # real and generated features for precision/recall; 0 = off
    c.eval.sqrtm_eps = 1e-6  # added to the covariances' diagonals when sqrtm is not finite
    c.eval.grid_samples = 100
    c.eval.digits_classifier_path = ""  # "" = ~/.cache/cm/digits_classifier_<hash>.npz
    c.eval.every = 0  # training steps between periodic evaluations; 0 = off
    c.eval.train_num_samples = 5000  # samples per sampler in a periodic evaluation

    # --mode=lcsc (docs/methods.md section 4): search for a linear combination of the snapshots in
    # <workdir>/snapshots, with EMA / power-EMA / uniform / greedy-soup baselines; outputs in
    # <workdir>/<lcsc.name>/. The paper's authors released no search code: these are ours.
    c.lcsc = ml_collections.ConfigDict()
    c.lcsc.name = "lcsc"  # output folder under the workdir (one per search setting)
    c.lcsc.source = "params"  # which stream is combined: params (online) | ema (first EMA)
    c.lcsc.first_step = 0  # use snapshots with first_step <= step <= last_step
    c.lcsc.last_step = 0  # 0 = up to the newest (a smaller value: a shorter run's snapshots)
    c.lcsc.resident = True  # keep the snapshots stacked on the devices (False: stream from disk)
    c.lcsc.sampler = (
        "1step"  # fitness sampler: a name of the method's samplers (1step, 2step, heunN)
    )
    c.lcsc.metric = ""  # key of the fitness metric; "" = digits_fd on digits, fid otherwise
    c.lcsc.search_samples = 2000  # samples per fitness evaluation (FIXED seeds)
    c.lcsc.search_seed = 1001  # seed of the search's fixed sample noise and labels
    c.lcsc.heldout_samples = 10_000  # samples of the final comparison, on seeds never searched
    c.lcsc.heldout_seed = 2002
    c.lcsc.optimizer = "evolution"  # evolution | cma
    c.lcsc.generations = 20
    c.lcsc.population = 16
    c.lcsc.seed = 0  # randomness of the search itself
    c.lcsc.init_betas = (
        0.3,
        0.6,
        0.8,
        0.9,
        0.95,
    )  # EMA shapes of the first population, per snapshot
    c.lcsc.elite = 2  # best vectors copied unchanged into the next generation
    c.lcsc.parent_fraction = 0.25  # parents are drawn from this top fraction
    c.lcsc.crossover_prob = 0.5  # per coefficient: taken from the second parent
    c.lcsc.mutation_std = 0.05  # Gaussian mutation, per coefficient
    c.lcsc.mutation_prob = 0.5  # per coefficient
    c.lcsc.cma_sigma = 0.1  # CMA-ES initial step size in coefficient units
    c.lcsc.cache_decimals = 6  # coefficients rounded to this many decimals key the fitness cache
    c.lcsc.uniform_last_k = (2, 4, 8)  # baseline: uniform average of the last k snapshots
    c.lcsc.ema_rates = (
        0.999,
        0.9995,
        0.9999,
    )  # baseline: per-step EMA rates rebuilt from snapshots
    c.lcsc.posthoc_stds = (0.05, 0.075, 0.10, 0.15)  # baseline: EDM2 post-hoc sigma_rel targets
    c.lcsc.greedy_soup = True  # baseline: greedy soup (2 K fitness evaluations)

    # Latent space (docs/methods.md section 3): the Stable Diffusion VAE, used by --mode=encode
    # and to decode samples when data.name = "latents". Architecture fields: diffusers'
    # AutoencoderKL.
    c.vae = ml_collections.ConfigDict()
    # diffusers-format weights: vae/diffusion_pytorch_model.safetensors of stabilityai/sd-vae-ft-mse
    c.vae.weights_path = "~/.cache/cm/sd-vae-ft-mse/diffusion_pytorch_model.safetensors"
    c.vae.block_out_channels = (128, 256, 512, 512)  # f = 2^(levels - 1) = 8
    c.vae.layers_per_block = 2
    c.vae.latent_channels = 4
    c.vae.norm_num_groups = 32
    c.vae.norm_eps = 1e-6
    c.vae.scale_factor = 0.18215  # latents = scale_factor * posterior sample
    c.vae.seed = 0  # the posterior sample of image i uses fold_in(key(seed), i)
    c.vae.batch_size = 64  # images per encode call, global (rounded up to the devices)
    c.vae.part_images = 4096  # --mode=encode saves its progress every this many images
    c.vae.images = image_source()  # the image dataset --mode=encode reads (fields as c.data)

    # --mode=import (docs/methods.md section 8): an NVlabs/edm network snapshot (.pkl) that
    # becomes the workdir's step-0 checkpoint; the config must describe its network
    # (docs/workflows.md, "Importing EDM checkpoints"). "" = none; the EDM configs name their
    # file in ~/.cache/cm/edm/.
    c.edm_import = ml_collections.ConfigDict()
    c.edm_import.path = ""
    return c


def ict_recipe(c: ml_collections.ConfigDict) -> None:
    """iCT's training recipe, shared by its CIFAR-10 and ImageNet 64 configs (docs/methods.md
    section 2): the curriculum s0 = 10 -> s1 = 1280, lognormal (-1.1, 2.0) index law,
    pseudo-Huber, RAdam 1e-4, 50k samples for FID, in full float32.

    Full float32 (section 2, Readings; the policy: section 11): at N = 1281 the difference
    between neighbouring levels is smaller than the rounding noise of TF32 (GPUs' default)
    above sigma ~ 5 and of bfloat16 above sigma ~ 0.2 (BENCHMARKS.md, "Precision study",
    measured on NCSN++). iCT released no code; the CIFAR-10 JAX code it builds on sets no
    precision (TF32 on A100s):
    --config.model.matmul_precision=default runs that, faster on GPUs and TPUs.
    """
    c.model.dtype = "float32"
    c.model.matmul_precision = "highest"
    c.method.name = "ict"
    c.method.s0 = 10
    c.method.s1 = 1280
    c.method.p_mean = -1.1
    c.method.p_std = 2.0
    c.method.distance = "pseudo_huber"
    c.optim.name = "radam"
    c.optim.learning_rate = 1e-4
    c.sampling.num_samples = 50_000
    c.sampling.batch_size = 1024


def image_source() -> ml_collections.ConfigDict:
    """An image dataset description with the fields of c.data, for --mode=encode to read."""
    d = ml_collections.ConfigDict()
    d.name = "folder"  # digits | tfds | npz | folder
    d.tfds_name = ""
    d.tfds_dir = ""
    d.path = ""
    d.split = "train"
    d.image_size = 256
    d.channels = 3
    d.num_classes = 0
    d.random_flip = False
    return d


def cifar10_data(c: ml_collections.ConfigDict) -> None:
    """CIFAR-10 from tfds at 32 x 32 x 3, the data of every cifar10_* config (their own
    num_classes and flips follow). Prepare it once, then pass --config.data.tfds_dir=DIR:

        tfds build cifar10 --data_dir=DIR --file_format=array_record
    """
    c.data.name = "tfds"
    c.data.tfds_name = "cifar10"
    c.data.image_size = 32
    c.data.channels = 3


def latent_data(c: ml_collections.ConfigDict, latents_path: str) -> ml_collections.ConfigDict:
    """Sets `c` to train on the latents that --mode=encode writes to `latents_path` from
    c.vae.images (e.g. 256 px images -> 4 x 32 x 32), and returns it."""
    f = 2 ** (len(c.vae.block_out_channels) - 1)
    c.data.name = "latents"
    c.data.path = latents_path
    c.data.image_size = c.vae.images.image_size // f
    c.data.channels = c.vae.latent_channels
    c.data.num_classes = c.vae.images.num_classes
    return c


def slct_latent_model(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Sets `c` to sLCT's latent network (docs/methods.md section 3) and returns it.

    ADM on Stable Diffusion VAE latents (4 x 32 x 32): 128 channels, multipliers (1, 2, 3, 4),
    4 blocks per level, attention at 16 and 8 with 64 channels per head, dropout 0, positional
    embedding, NsLN in place of every GroupNorm (151,325,956 parameters with GroupNorm), and
    the noise label 250 ln(sigma) of sLCT's code (quandao10/LCT, from openai/consistency_models).
    Labels follow c.model.use_labels and c.data.num_classes, which the caller sets.
    """
    c.data.image_size = 32
    c.data.channels = 4
    c.model.name = "adm"
    c.model.channels = 128
    c.model.channel_mult = (1, 2, 3, 4)
    c.model.num_blocks = 4
    c.model.attn_resolutions = (16, 8)
    c.model.dropout = 0.0
    c.model.dropout_max_resolution = 0
    c.model.embedding = "positional"
    c.model.norm = "nsln"
    c.method.noise_label = "250_log_sigma"  # sLCT's code (docs/methods.md section 1)
    return c
