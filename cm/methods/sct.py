"""sCT and sCD: continuous-time consistency training and distillation (docs/methods.md section 9).

One training step, per sample (sCM, Algorithm 1):

    tau ~ N(Pm, Ps^2), t = arctan(e^tau / sd);  z ~ N(0, sd^2 I);  x_t = cos t x0 + sin t z
    dx_t/dt = cos t z - sin t x0                        (sCT, from the data)
            = sd F_teacher(x_t, t)                      (sCD, the frozen teacher in eval mode)
    (F-, cos t sin t dF-/dt) = jvp(F(sg(theta), ., .), (x_t, t), cos t sin t (dx_t/dt, 1))
    g = -cos^2 t (sd F- - dx_t/dt) - r cos t sin t (x_t + sd dF-/dt),  r = min(1, step / H)
    g <- g / (||g|| + c)
    loss = prior(t) e^{w(t)} / D ||F_theta - F- - g||^2 - w(t),  prior = 1 / (sd tan t) or 1

g equals cos(t) df-/dt at r = 1, so the gradient pushes f along its own time derivative; F- is
F_theta's value under stop_gradient, so F_theta - F- is zero in value and only carries the
gradient. The JVP runs with the same dropout key as the F_theta pass (one mask for both;
method.scm_jvp_dropout = fresh gives it its own), and the step enters only through r, a traced
value: one compiled step serves warm-up and after. w is TimeWeighting (one of three heads,
method.scm_weighting_head), a separate parameter tree trained with the network. The JVP runs
at the network's precision unless method.jvp_dtype / method.jvp_matmul_precision name its own
(cm/precision.py); everything after the network (g, its normalization, w, the loss) is float32.

The method-table entries (SCT, SCD) and their sampler kind (SAMPLERS) close the module. Their
Denoisers are not EDM-signature denoisers of sigma: train is the normalized velocity
F(params, x_t, t, labels, train, dropout_rng, augment_labels) of a TrigFlow time t, sample the
consistency function f = cos t x_t - sin t sd F, teacher the F of the EDM form (an EDM network
reused exactly, trigflow.make_flow). sCM's learned weighting w(t) is the entries' auxiliary
parameter tree (init_aux); sCD's frozen teacher is its extra state (init_extra, a copy of
method.init_from's EDM network, as CD).
"""

import functools
import operator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from cm import precision
from cm.methods import trigflow
from cm.methods.spec import Denoisers, Method, SamplerKind, invalid, require_number
from cm.models import build_model
from cm.models.embeddings import NoiseEmbedding
from cm.precond import bcast

# sCT / sCD's own config fields (sCM arXiv 2410.11081, Algorithm 1; configs/common.py merges
# them). TrigFlow's F: trigflow = net(x_t / sd, trig_time_scale * t) (sCM) | edm = an EDM network
# reused exactly (sCD, or sCT started from an EDM checkpoint; c_noise = method.noise_label).
DEFAULTS = {
    "trig_form": "trigflow",
    "trig_time_scale": 1.0,  # sCM's c_noise(t) = t
    "scm_p_mean": -1.0,  # tau ~ N(Pm, Ps^2), t = arctan(e^tau / sd): sCM CIFAR-10
    "scm_p_std": 1.4,
    "scm_tangent_warmup_steps": 10_000,  # H of the tangent warm-up r = min(1, step / H)
    "scm_tangent_c": 0.1,  # g <- g / (||g|| + c)
    # The norm of that normalization (section 9 readings): l2 = ||g||_2 (the paper) | rms =
    # ||g||_2 / sqrt(D) (FastGen's g_norm_spatial_invariance).
    "scm_tangent_norm": "l2",
    "scm_prior_weighting": True,  # the 1 / (sd tan t) factor (formula sheet, FastGen)
    # w(t), a head on the time label (TimeWeighting; section 9, "sCT and sCD: open settings"):
    # sincos = seeded sin/cos Fourier features + zero-initialized Dense (cm's reading of the
    # paper's "like EDM2's", w = 0 at the start) | edm2 = EDM2's random-phase cosine features
    # + a normalized linear layer | network = FastGen's Dense on the network's own embedding.
    "scm_weighting_head": "sincos",
    "scm_weighting_channels": 128,  # features of sincos and edm2
    "scm_weighting_fourier_scale": 1.0,  # std of their frequencies
    # The JVP's dropout mask: shared = the F_theta pass's (cm; one forward pass for both, as
    # CM, iCT and ECT share the student's mask with their teacher) | fresh = its own draw
    # (FastGen's separate torch pass), one more forward pass per step.
    "scm_jvp_dropout": "shared",
    # sCM gives no clipping and FastGen's multistep sampler re-noises the raw x0 estimate.
    "scm_clip_denoised": False,
    # The JVP pass's dtype and matmul precision (cm/precision.py): "model" = the network's, in
    # one pass with F_theta (sCM gives none; FastGen's precision_amp_jvp default).
    **precision.JVP_DEFAULTS,
}


def trig_time_law(key, n: int, p_mean: float, p_std: float, sigma_data: float):
    """sCM's proposal: tau ~ N(Pm, Ps^2), t = arctan(e^tau / sd). Returns float32 [n]."""
    tau = p_mean + p_std * jax.random.normal(key, (n,))
    return jnp.arctan(jnp.exp(tau) / sigma_data)


def tangent_warmup(step, warmup_steps: int):
    """r = min(1, step / warmup_steps) as a traced float32 scalar; 1 when warmup_steps <= 0."""
    if warmup_steps <= 0:
        return jnp.float32(1.0)
    return jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / warmup_steps)


def tangent(F_minus, dF_scaled, x_t, dxdt, t, r, sigma_data: float):
    """g = -cos^2 t (sd F- - dx_t/dt) - r (cos t sin t x_t + sd cos t sin t dF-/dt).

    dF_scaled is cos t sin t dF-/dt (the JVP along cos t sin t (dx_t/dt, 1)); images
    [B, H, W, C], t [B], r a scalar. Returns g [B, H, W, C].
    """
    cos, sin = bcast(jnp.cos(t)), bcast(jnp.sin(t))
    first = -(cos**2) * (sigma_data * F_minus - dxdt)
    return first - r * (cos * sin * x_t + sigma_data * dF_scaled)


TANGENT_NORMS = ("l2", "rms")  # the paper's ||g||_2 | FastGen's ||g||_2 / sqrt(D)


def normalize_tangent(g, c: float, kind: str = "l2"):
    """g / (n + c) with n over each sample's D elements: the L2 norm ("l2", the paper) or the
    root-mean-square ||g||_2 / sqrt(D) ("rms", FastGen's g_norm_spatial_invariance).
    Returns (g [B, ...], n [B])."""
    if kind not in TANGENT_NORMS:
        raise ValueError(f"Unknown method.scm_tangent_norm {kind!r}; valid: {list(TANGENT_NORMS)}.")
    reduce = jnp.sum if kind == "l2" else jnp.mean
    norm = jnp.sqrt(reduce(jnp.square(g), axis=tuple(range(1, g.ndim))))
    return g / bcast(norm + c), norm


def jvp_tangent(F_of, x_t, t, dxdt):
    """(F(x_t, t), cos t sin t dF/dt): one jax.jvp of F_of(x, t) along cos t sin t (dx_t/dt, 1)."""
    cs = jnp.cos(t) * jnp.sin(t)  # [B]
    return jax.jvp(F_of, (x_t, t), (bcast(cs) * dxdt, cs))


WEIGHTING_HEADS = ("sincos", "edm2", "network")  # method.scm_weighting_head
JVP_DROPOUTS = ("shared", "fresh")  # method.scm_jvp_dropout
FRESH_JVP_TAG = 1  # fold_in tag of the JVP's own dropout key (scm_jvp_dropout "fresh")
EDM2_NORM_EPS = 1e-4  # EDM2's normalize(): w / (eps + ||w|| / sqrt(n))
# w(t) is part of the loss, float32 under every policy (cm/precision.py): its one-output layer
# runs at full float32 on every device, never the device's TF32 or bfloat16-pass default.
WEIGHTING_PRECISION = jax.lax.Precision.HIGHEST


def edm2_fourier(labels, channels: int, scale: float, seed: int):
    """EDM2's MPFourier features sqrt(2) cos(2 pi (f c + phi)) of labels c [B]: f ~ N(0, scale^2)
    and phi ~ U(0, 1), `channels` of each, numpy's draws from `seed`. Returns [B, channels]."""
    draw = np.random.RandomState(seed)
    freqs, phases = draw.randn(channels) * scale, draw.rand(channels)
    angle = labels[:, None] * jnp.asarray(2 * np.pi * freqs, jnp.float32)[None, :]
    return np.sqrt(2.0) * jnp.cos(angle + jnp.asarray(2 * np.pi * phases, jnp.float32)[None, :])


def edm2_linear(feats, weight):
    """EDM2's MPConv as a linear map to one output: feats [B, n] @ w / (eps + ||w|| / sqrt(n)) /
    sqrt(n), i.e. a unit-norm weight on unit-variance features. weight: [n]. Returns [B]."""
    n = weight.shape[0]
    unit = weight / (EDM2_NORM_EPS + jnp.linalg.norm(weight) / np.sqrt(n)) / np.sqrt(n)
    return jnp.matmul(feats, unit, precision=WEIGHTING_PRECISION)


class TimeWeighting(nn.Module):
    """The adaptive weighting w(c) of the network's time label c, one of three heads
    (method.scm_weighting_head; docs/methods.md section 9, "sCT and sCD: open settings"):

      sincos   sin and cos of channels / 2 frozen frequencies N(0, fourier_scale^2) (seeded),
               then a Dense with zero kernel and bias: training starts unweighted (w = 0).
      edm2     EDM2's log-variance head: edm2_fourier features, then edm2_linear with its
               weight "weight" [channels] drawn N(0, 1) (w about N(0, 1) at the start).
      network  FastGen's: the network's own noise embedding of c (`network_embedding`, the
               NoiseEmbedding fields of the network), then a Dense with N(0, 1 / fan_in)
               weights and zero bias.
    """

    channels: int = 128
    fourier_scale: float = 1.0
    fourier_seed: int = 0
    head: str = "sincos"
    # head "network": (kind, width, fourier_scale, fourier_seed, positional_endpoint,
    # positional_cos_first) of the network's NoiseEmbedding.
    network_embedding: tuple = ()

    @nn.compact
    def __call__(self, time_labels):  # [B] -> [B] float32
        labels = time_labels.astype(jnp.float32)
        if self.head == "edm2":
            feats = edm2_fourier(labels, self.channels, self.fourier_scale, self.fourier_seed)
            weight = self.param("weight", nn.initializers.normal(1.0), (self.channels,))
            return edm2_linear(feats, weight)
        if self.head == "network":
            feats = NoiseEmbedding(*self.network_embedding)(labels)  # [B, network width]
            kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
            dense = nn.Dense(
                1, kernel_init=kernel_init, precision=WEIGHTING_PRECISION, name="linear"
            )
            return dense(feats)[:, 0]
        if self.head != "sincos":
            raise ValueError(
                f"Unknown method.scm_weighting_head {self.head!r}; valid: {list(WEIGHTING_HEADS)}."
            )
        feats = NoiseEmbedding("fourier", self.channels, self.fourier_scale, self.fourier_seed)(
            labels
        )  # [B, channels]
        dense = nn.Dense(
            1, kernel_init=nn.initializers.zeros, precision=WEIGHTING_PRECISION, name="linear"
        )
        return dense(feats)[:, 0]


def make_weighting(module: TimeWeighting, time_label):
    """w(weighting_params, t) -> [B]: `module` applied to the network's time label of t."""
    return lambda weighting_params, t: module.apply({"params": weighting_params}, time_label(t))


def init_weighting(module: TimeWeighting, key):
    """The weighting's parameter tree (zeros: w = 0 at the start)."""
    return module.init(key, jnp.zeros((1,)))["params"]


def scm_loss(
    F,
    weighting,
    params,
    weighting_params,
    batch,
    rng,
    step,
    *,
    sigma_data: float,
    p_mean: float,
    p_std: float,
    warmup_steps: int,
    tangent_c: float,
    prior_weighting: bool,
    tangent_norm: str = "l2",
    jvp_dropout: str = "shared",
    teacher=None,
    teacher_params=None,
    F_jvp=None,
):
    """sCT (teacher None) or sCD loss, batch mean of the per-sample loss in the module docstring.

    F: trigflow.make_flow(...), F(params, x_t, t, labels, train, dropout_rng); weighting:
    make_weighting(...); teacher: an F of the frozen teacher network (sCD), run in eval mode;
    jvp_dropout: the JVP's dropout key is the F_theta pass's ("shared") or its own ("fresh");
    F_jvp: F at the JVP pass's own precision (Denoisers.jvp), None = F itself (one pass).
    Returns (loss, metrics).
    """
    x0, labels = batch["image"], batch.get("label")  # [B, H, W, C], [B]
    k_time, k_noise, k_dropout = jax.random.split(rng, 3)
    t = trig_time_law(k_time, x0.shape[0], p_mean, p_std, sigma_data)  # [B]
    z = sigma_data * jax.random.normal(k_noise, x0.shape, x0.dtype)
    cos, sin = bcast(jnp.cos(t)), bcast(jnp.sin(t))
    x_t = cos * x0 + sin * z
    if teacher is None:
        dxdt = cos * z - sin * x0
    else:
        dxdt = sigma_data * teacher(teacher_params, x_t, t, labels, False, None)
    dxdt = jax.lax.stop_gradient(dxdt)

    # The JVP of the stop-gradient network, then F_theta. With the same dropout key ("shared")
    # and the network's precision (F_jvp None) XLA merges the JVP's primal with this forward
    # pass (identical computations): the compiled step has the convolutions, FLOPs and memory
    # of taking F_theta as the JVP's primal. F- is F_theta's value in either case.
    if jvp_dropout not in JVP_DROPOUTS:
        raise ValueError(f"Unknown method.scm_jvp_dropout {jvp_dropout!r}; valid: {JVP_DROPOUTS}.")
    k_jvp = k_dropout if jvp_dropout == "shared" else jax.random.fold_in(k_dropout, FRESH_JVP_TAG)
    frozen = jax.lax.stop_gradient(params)
    F_of = F if F_jvp is None else F_jvp
    _, dF_scaled = jvp_tangent(lambda x, s: F_of(frozen, x, s, labels, True, k_jvp), x_t, t, dxdt)
    F_theta = F(params, x_t, t, labels, True, k_dropout)
    F_minus, dF_scaled = jax.lax.stop_gradient((F_theta, dF_scaled))

    r = tangent_warmup(step, warmup_steps)
    g = tangent(F_minus, dF_scaled, x_t, dxdt, t, r, sigma_data)
    g, g_norm = normalize_tangent(jax.lax.stop_gradient(g), tangent_c, tangent_norm)
    mse = jnp.mean(jnp.square(F_theta - F_minus - g), axis=(1, 2, 3))  # [B], ||.||^2 / D
    w = weighting(weighting_params, t)  # [B]
    prior = 1.0 / (sigma_data * jnp.tan(t)) if prior_weighting else jnp.ones_like(t)
    per_sample = prior * jnp.exp(w) * mse - w
    loss = jnp.mean(per_sample)
    metrics = {
        "loss": loss,
        "mse": jnp.mean(mse),
        "weighting_mean": jnp.mean(w),
        "tangent_norm": jnp.mean(g_norm),
        "tangent_warmup": r,
        "t_mean": jnp.mean(t),
    }
    return loss, metrics


def _flow(config, model, form: str):
    m = config.method
    return trigflow.make_flow(model, form, m.sigma_data, m.trig_time_scale, m.noise_label)


def parameterization(config, model) -> Denoisers:
    """F of method.trig_form (train), its consistency function (sample), the EDM form's F
    (sCD's teacher)."""
    F = _flow(config, model, config.method.trig_form)
    f = trigflow.consistency_fn(F, config.method.sigma_data)
    return Denoisers(train=F, sample=f, teacher=_flow(config, model, "edm"))


def _weighting_module(config) -> TimeWeighting:
    """TimeWeighting of method.scm_weighting_*; the network head reads the network's embedding
    fields from the configured model."""
    m = config.method
    network = ()
    if m.scm_weighting_head == "network":
        net = build_model(config)
        network = (
            net.embedding,
            net.noise_mult * net.channels,
            net.fourier_scale,
            net.fourier_seed,
            net.positional_endpoint,
            net.positional_cos_first,
        )
    return TimeWeighting(
        m.scm_weighting_channels,
        m.scm_weighting_fourier_scale,
        head=m.scm_weighting_head,
        network_embedding=network,
    )


def init_aux(config, rng):
    """w(t)'s parameters (zero output layer: w = 0 at the start): the entries' aux tree."""
    return init_weighting(_weighting_module(config), rng)


def objective(config, denoisers, distill: bool):
    """loss_fn(params, batch, rng, step, aux, extra) of sCT (distill False) or sCD: aux is
    w(t)'s parameters, extra {"teacher": the EDM network} for sCD."""
    m = config.method
    time_label = trigflow.time_label_fn(m.trig_form, m.sigma_data, m.trig_time_scale, m.noise_label)
    weighting = make_weighting(_weighting_module(config), time_label)
    loss = functools.partial(
        scm_loss,
        denoisers.train,
        weighting,
        sigma_data=m.sigma_data,
        p_mean=m.scm_p_mean,
        p_std=m.scm_p_std,
        warmup_steps=m.scm_tangent_warmup_steps,
        tangent_c=m.scm_tangent_c,
        prior_weighting=m.scm_prior_weighting,
        tangent_norm=m.scm_tangent_norm,
        jvp_dropout=m.scm_jvp_dropout,
        F_jvp=denoisers.jvp,
    )

    def loss_fn(params, batch, rng, step, aux=(), extra=()):
        if not distill:
            return loss(params, aux, batch, rng, step)
        teacher_params = jax.lax.stop_gradient(extra["teacher"])
        return loss(
            params, aux, batch, rng, step, teacher=denoisers.teacher, teacher_params=teacher_params
        )

    return loss_fn


def init_teacher(config, params) -> dict:
    """sCD's frozen teacher: a copy of the starting (method.init_from's EDM) parameters."""
    del config
    return {"teacher": jax.tree.map(jnp.copy, params)}


# sCM's own time label c_noise(t) = t: its JVP time tangent cos t sin t dc/dt peaks at 1/2.
SCM_LABEL_TANGENT = 0.5


def label_time_tangent(config) -> float:
    """The largest |cos t sin t d c_noise / dt| over t in (0, pi/2): what one unit of the JVP's
    time direction (jvp_tangent scales it by cos t sin t) moves the network's time label. For
    the edm form it is the label's slope per unit ln sigma (d ln sigma / dt = 1 / (cos t sin t))."""
    m = config.method
    label = trigflow.time_label_fn(m.trig_form, m.sigma_data, m.trig_time_scale, m.noise_label)
    t = jnp.linspace(0.01, np.pi / 2 - 0.01, 64)  # [64], inside the open interval
    _, dlabel = jax.jvp(label, (t,), (jnp.ones_like(t),))
    return float(jnp.max(jnp.abs(jnp.cos(t) * jnp.sin(t) * dlabel)))


def check(config, mode: str, distill: bool):
    """sCT/sCD fields (every mode: they shape the loss, the state and the samplers)."""
    del mode
    m = config.method
    if m.trig_form not in trigflow.TRIG_FORMS:
        invalid("method.trig_form", m.trig_form, f"valid forms are {list(trigflow.TRIG_FORMS)}")
    if distill and m.trig_form != "edm":
        invalid(
            "method.trig_form",
            m.trig_form,
            "sCD's student starts as its EDM teacher, so it needs the edm form",
            "--config.method.trig_form=edm",
        )
    if m.scm_tangent_norm not in TANGENT_NORMS:
        invalid("method.scm_tangent_norm", m.scm_tangent_norm, f"valid are {list(TANGENT_NORMS)}")
    if m.scm_jvp_dropout not in JVP_DROPOUTS:
        invalid("method.scm_jvp_dropout", m.scm_jvp_dropout, f"valid are {list(JVP_DROPOUTS)}")
    if m.scm_weighting_head not in WEIGHTING_HEADS:
        invalid(
            "method.scm_weighting_head", m.scm_weighting_head, f"valid are {list(WEIGHTING_HEADS)}"
        )
    if m.scm_weighting_head == "network" and config.model.fourier_param:
        invalid(
            "method.scm_weighting_head",
            m.scm_weighting_head,
            "the network head rebuilds the network's embedding from its settings, but "
            "model.fourier_param keeps the frequencies in the network's parameters",
            "--config.method.scm_weighting_head=sincos (or edm2)",
        )
    require_number("method.trig_time_scale", m.trig_time_scale, 0, lo_open=True)
    precision.check_jvp(config)
    tangent = label_time_tangent(config)
    if tangent > SCM_LABEL_TANGENT:
        logging.warning(
            "The network's time label moves %.3g per unit of the JVP's time tangent, %.0fx "
            "sCM's c_noise(t) = t; sCM found such labels unstable and sCD on the digits diverged "
            "with noise_label 250_log_sigma (docs/methods.md section 9).",
            tangent,
            tangent / SCM_LABEL_TANGENT,
        )
    require_number("method.scm_p_mean", m.scm_p_mean)
    require_number("method.scm_p_std", m.scm_p_std, 0, lo_open=True)
    require_number("method.scm_tangent_warmup_steps", m.scm_tangent_warmup_steps, 0, integer=True)
    require_number("method.scm_tangent_c", m.scm_tangent_c, 0, lo_open=True)
    require_number("method.scm_weighting_channels", m.scm_weighting_channels, 2, integer=True)
    if m.scm_weighting_channels % 2:
        invalid("method.scm_weighting_channels", m.scm_weighting_channels, "it must be even")
    require_number(
        "method.scm_weighting_fourier_scale", m.scm_weighting_fourier_scale, 0, lo_open=True
    )
    t_max = trigflow.t_max(m.sigma_max, m.sigma_data)
    for i, mids in enumerate(config.sampling.trigflow_mid_times):
        seq = (t_max, *mids)
        if not all(isinstance(t, int | float) for t in mids) or not all(
            a > b > 0 for a, b in zip(seq, seq[1:], strict=False)
        ):
            invalid(
                f"sampling.trigflow_mid_times[{i}]",
                tuple(mids),
                f"times after the first step must decrease within (0, t_max = {t_max:.4f})",
            )


def trigflow_names(config) -> dict:
    """One TrigFlow sampler per entry of sampling.trigflow_mid_times, named by its steps."""
    return {f"{len(m) + 1}step": tuple(m) for m in config.sampling.trigflow_mid_times}


def build_trigflow(config, f, levels):
    """x0 = f(sd z, t_max), t_max = arctan(method.sigma_max / sd), then one step per mid time."""
    m = config.method
    start = trigflow.t_max(m.sigma_max, m.sigma_data)
    sample = functools.partial(
        trigflow.trigflow_sample, f, sigma_data=m.sigma_data, start_time=start, mid_times=levels
    )
    return lambda params, rng, labels, shape: sample(params, rng, labels, shape)


SAMPLERS = SamplerKind("trigflow", trigflow_names, build_trigflow)

# sCM's Algorithm 1 starts sCT from a trained diffusion model; from scratch is allowed, with
# this line in the log (docs/methods.md section 9, "sCT's starting point").
SCT_SCRATCH_WARNING = (
    "sCT starts from random parameters, but sCM starts it from a trained diffusion model: set "
    "--config.method.init_from to a TrigFlow diffusion run (method.name=trigflow, "
    "configs/cifar10_sct.py:trigflow) or an EDM run read with method.trig_form=edm (:edm)."
)

SCT = Method(
    objective=functools.partial(objective, distill=False),
    parameterization=parameterization,
    sampler=SAMPLERS,
    defaults=DEFAULTS,
    init_aux=init_aux,
    check=functools.partial(check, distill=False),
    # A TrigFlow diffusion run (trig_form as this run's), an EDM run (trig_form=edm), or an
    # sCT run to continue from.
    init_sources=("trigflow", "edm", "sct"),
    scratch_warning=SCT_SCRATCH_WARNING,
    clip_denoised=operator.attrgetter("method.scm_clip_denoised"),
)

SCD = Method(
    objective=functools.partial(objective, distill=True),
    parameterization=parameterization,
    sampler=SAMPLERS,
    defaults=DEFAULTS,
    init_aux=init_aux,
    init_extra=init_teacher,
    check=functools.partial(check, distill=True),
    init_sources=("edm",),
    requires_init_from=True,
    clip_denoised=operator.attrgetter("method.scm_clip_denoised"),
)
