"""cm's iCT training step and 1-step sampler against those of openai/consistency_models_cifar10
("jcm", the CM authors' JAX code), side by side in one process: same JAX, same XLA flags, same
machine, same run, timed interleaved (cm, jcm, cm, jcm, ...) so that the load of a shared
machine falls on both alike. BENCHMARKS.md has no numbers from it yet.

    git clone https://github.com/openai/consistency_models_cifar10 /tmp/jcm   # d086e77
    pip install dm-haiku blobfile    # jcm imports them; not in cm's requirements
    python -m benchmarks.jcm_step --jcm_dir=/tmp/jcm [--network=small|full|both] [--steps=5]

jcm runs unchanged from --jcm_dir, as a reference (never copied into cm), the way
benchmarks/edm_import_check.py runs EDM's code. It was written for JAX 0.4.10 and an older
flax; three shims here make it run on today's, each with its reason: `jcm_shims` (jax.tree_map),
`flax_frozen_dicts` (around every jcm call) and `replicate` (flax's, with pmap's layout).
Its config files import `configs.<file>`, cm's package name: `jcm_config_file` loads them apart.

The steps, per network of NETWORKS (the same NCSN++ sizes on both sides, dropout 0):
- cm: the production step, cm/train_step.py make_train_step for configs/cifar10_ict.py
  (iCT: pseudo-Huber, RAdam, one EMA), called as jit like cm/train.py calls it.
- jcm: its CT config JCM_CONFIG (configs/cifar10_ve_ct_adaptive.py) with JCM_METRIC in place
  of LPIPS (which adds a VGG16 pass per image) and `--jcm_loss` (default "consistency": the
  teacher is the student's own weights under stop-gradient, as iCT's, so no target EMA);
  its loss (jcm/losses.py get_consistency_loss_fn, with the arguments get_loss_fn passes it),
  step (get_step_fn), RAdam (get_optimizer) and EMA, pmapped over a lax.scan as jcm/train.py
  runs it. Both steps make one student pass with gradient and one teacher pass without.
  get_loss_fn would also restore an EDM "reference model" from training.ref_model_path, used
  only for Heun/Euler targets: CT's dsm_target=True uses the data and never evaluates it, so
  it is passed as None.
- "jcm, no scan" (--jcm_driver=no_scan or both): jcm's same step function pmapped without
  the lax.scan. On XLA:CPU (JAX 0.10) the gradient convolutions inside a scan's while loop
  keep layouts that XLA's convolution canonicalization would otherwise rewrite (e.g. weight
  gradients as f01b_i01o->01bf convolutions with a 32 x 32 window), and run several times
  slower; this side separates that from the work of the step.

Columns: compile + first (wall seconds of each side's first call: tracing, compiling,
running), the XLA compilations of all its calls and their XLA seconds, the median wall and CPU
seconds (resource.getrusage of the process, all threads) of the --steps timed calls that
compiled nothing, images/s, the lowered GFLOPs (benchmarks/perf.py `flops`) and parameters of
each side, and jcm/cm: the median over cm's (> 1: cm is faster). The samplers: cm's `1step`
and jcm's `onestep`, at the training batch unless --sample_batch. Each call's seconds also go
to stderr as they come.
"""

import argparse
import contextlib
import dataclasses
import functools
import importlib
import os
import platform
import resource
import statistics
import sys
import time
import types
from collections.abc import Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import measure, perf
from cm import experiment
from cm.models import count_params
from cm.train_step import make_train_step
from configs import cifar10_ict

JCM_URL = "https://github.com/openai/consistency_models_cifar10"
JCM_CONFIG = "cifar10_ve_ct_adaptive"  # jcm's CT config for CIFAR-10 (configs/<name>.py)
# jcm's "l2" (mean over elements of the squared difference): the per-element work of cm's
# pseudo-Huber (a sum of squares per sample); jcm's CT configs use LPIPS.
JCM_METRIC = "l2"
JCM_LOSSES = ("consistency", "consistency_adaptive", "consistency_ema")
CM_SAMPLER = "1step"
JCM_SAMPLER = "onestep"  # jcm/sampling.py get_onestep_sampler
# JAX's monitoring event of one XLA compilation (jax/_src/dispatch.py BACKEND_COMPILE_EVENT).
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@dataclasses.dataclass(frozen=True)
class Network:
    """One NCSN++ size, the same on both sides (cm's names; jcm: nf, num_res_blocks)."""

    channels: int
    num_blocks: int
    batch: int
    dropout: float = 0.0


# small: cifar10_ict's NCSN++ at 32 channels and 2 blocks; full: cifar10_ict's (128, 4).
NETWORKS = {"small": Network(32, 2, 32), "full": Network(128, 4, 8)}


@dataclasses.dataclass
class Side:
    """One code's training step and sampler, compiled on first call; each call returns what
    to wait for. step_flops and sample_flops lower the programs again (not timed)."""

    code: str
    params: int
    step: Callable[[], object]
    sampler: str  # its name; "" = not timed
    sample: Callable[[], object]
    step_flops: Callable[[], float]
    sample_flops: Callable[[], float]


# ---- jcm: finding, loading, shims -------------------------------------------------------------


def check_jcm_dir(jcm_dir: str) -> str:
    """The absolute checkout path, or ValueError naming the fix."""
    path = os.path.abspath(jcm_dir or "")
    if not jcm_dir or not os.path.isfile(os.path.join(path, "jcm", "losses.py")):
        raise ValueError(
            f"--jcm_dir={jcm_dir!r} is not a checkout of {JCM_URL} (no jcm/losses.py there); "
            f"get it with `git clone {JCM_URL} DIR` and pass --jcm_dir=DIR."
        )
    return path


def jcm_shims():
    """Aliases for the APIs jcm calls that JAX removed since it was written."""
    # jax.tree_map (deprecated in JAX 0.4.26 for jax.tree.map, since removed): jcm's
    # get_step_fn maps its logged stats with it.
    if not hasattr(jax, "tree_map"):
        jax.tree_map = jax.tree.map


def replicate(tree, axis_name: str):
    """flax's jax_utils.replicate (jcm/train.py's), laid out as JAX's pmap now lays out its
    outputs. Since pmap became jit over shard_map, its outputs sit on a mesh axis named after
    `axis_name`, and flax's replicate puts its copies on one named '_device_put_sharded': the
    step's second call, on its own outputs, would compile the program again (a second
    compilation JAX 0.4.10 never made)."""
    devices = jax.local_devices()
    mesh = jax.sharding.Mesh(np.array(devices), (axis_name,))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axis_name))
    copies = lambda x: jnp.broadcast_to(jnp.asarray(x), (len(devices), *jnp.shape(x)))
    return jax.tree.map(lambda x: jax.device_put(copies(x), sharding), tree)


@contextlib.contextmanager
def flax_frozen_dicts():
    """flax >= 0.7.1 returns plain dicts from Module.init and apply, where jcm expects the
    FrozenDicts of the flax it was written for: its init_model unpacks the (rest, params) pair
    of FrozenDict.pop, and its scanned step must return the model state in the FrozenDict it
    came in. Switched on only around jcm's calls (flax reads it while tracing), so that cm's
    code never sees a FrozenDict."""
    before = flax.config.flax_return_frozendict
    flax.config.update("flax_return_frozendict", True)
    try:
        yield
    finally:
        flax.config.update("flax_return_frozendict", before)


def import_jcm(jcm_dir: str):
    """jcm's modules (losses, sampling, sde_lib, models.utils; models.ncsnpp registers NCSN++).
    The checkout goes last on sys.path: its `configs` folder must not shadow cm's."""
    if jcm_dir not in sys.path:
        sys.path.append(jcm_dir)
    jcm_shims()
    try:
        from jcm import losses, sampling, sde_lib
        from jcm.models import ncsnpp  # noqa: F401 (registers "ncsnpp")
        from jcm.models import utils as mutils
    except ModuleNotFoundError as e:
        raise ValueError(
            f"jcm needs the package {e.name!r}, which cm does not install; run "
            "`pip install dm-haiku blobfile` in this environment."
        ) from e
    return losses, sampling, sde_lib, mutils


def jcm_config_file(jcm_dir: str, name: str):
    """jcm's configs/<name>.py get_config(). jcm's config files import `configs.<file>`, the
    name of cm's config package: while they load, `configs` is jcm's folder alone, and cm's
    modules are put back after."""
    mine = lambda: [k for k in sys.modules if k == "configs" or k.startswith("configs.")]
    ours = {k: sys.modules.pop(k) for k in mine()}
    package = types.ModuleType("configs")
    package.__path__ = [os.path.join(jcm_dir, "configs")]
    sys.modules["configs"] = package
    try:
        return importlib.import_module(f"configs.{name}").get_config()
    finally:
        for k in mine():
            del sys.modules[k]
        sys.modules.update(ours)


def jcm_config(jcm_dir: str, net: Network, loss: str):
    """JCM_CONFIG at the network's sizes, with JCM_METRIC and `loss`."""
    c = jcm_config_file(jcm_dir, JCM_CONFIG)
    c.model.nf = net.channels
    c.model.num_res_blocks = net.num_blocks
    c.model.dropout = net.dropout
    c.training.batch_size = net.batch
    c.training.loss_norm = JCM_METRIC
    c.training.loss = loss
    return c


@dataclasses.dataclass(frozen=True)
class JcmRun:
    """jcm's pieces for one network, built as jcm/train.py builds them (state unreplicated)."""

    config: object
    model: object
    sde: object
    state: object  # mutils.State or StateWithTarget
    step_fn: Callable  # losses.get_step_fn's step_fn(carry, batch)
    onestep_sampler: Callable  # sampling.get_onestep_sampler


def jcm_run(jcm_dir: str, net: Network, loss: str) -> JcmRun:
    """jcm's model, state, training step function and sampler for the network."""
    import haiku as hk

    losses, sampling, sde_lib, mutils = import_jcm(jcm_dir)  # checked in main()
    config = jcm_config(jcm_dir, net, loss)
    t = config.training
    if not t.dsm_target or t.n_jitted_steps != 1:
        raise ValueError(
            f"jcm's configs/{JCM_CONFIG}.py has dsm_target={t.dsm_target} and "
            f"n_jitted_steps={t.n_jitted_steps}, where this benchmark needs True and 1; "
            f"check out commit d086e77 of {JCM_URL}."
        )
    rng = hk.PRNGSequence(config.seed)
    with flax_frozen_dicts():
        model, model_state, params = mutils.init_model(next(rng), config)
    optimizer, optimize_fn = losses.get_optimizer(config)
    with_target = loss.endswith(("ema", "adaptive"))  # jcm/train.py's choice of state
    state_cls = mutils.StateWithTarget if with_target else mutils.State
    state = state_cls(
        step=0,
        lr=config.optim.lr,
        ema_rate=config.model.ema_rate,
        params=params,
        params_ema=params,
        model_state=model_state,
        opt_state=optimizer.init(params),
        rng_state=rng.internal_state,
        **({"target_params": params} if with_target else {}),
    )
    sde = sde_lib.get_sde(config)
    loss_fn = losses.get_consistency_loss_fn(
        sde,
        None,  # ref_model, its params and state: never evaluated with dsm_target=True
        None,
        None,
        model,
        train=True,
        loss_norm=t.loss_norm,
        weighting=t.weighting,
        stopgrad=t.stopgrad,
        dsm_target=t.dsm_target,
        solver=t.solver,
    )
    step_fn = losses.get_step_fn(
        loss_fn, train=True, optimize_fn=optimize_fn, ema_scales_fn=losses.get_ema_scales_fn(config)
    )
    return JcmRun(config, model, sde, state, step_fn, sampling.get_onestep_sampler)


def jcm_side(run: JcmRun, scan: bool, sample_batch: int, sampler: bool = True) -> Side:
    """jcm's training step and one-step sampler. scan=True: pmap over lax.scan of the step, as
    jcm/train.py runs it; False: pmap of the step function alone (XLA:CPU leaves the gradient
    convolutions inside a while loop in slow layouts; the module docstring)."""
    devices = jax.local_device_count()
    size = run.config.data.image_size
    images = measure_images(run.config.training.batch_size, size)  # [B, H, W, C]
    images = images.reshape(devices, -1, *images.shape[1:])  # [devices, B / devices, H, W, C]
    if scan:  # [devices, jitted steps = 1, B / devices, H, W, C]: jcm's data pipeline's shape
        images = images[:, None]
        p_train_step = jax.pmap(functools.partial(jax.lax.scan, run.step_fn), axis_name="batch")
    else:
        p_train_step = jax.pmap(run.step_fn, axis_name="batch")
    batch = {"image": images, "mask": np.ones(images.shape[:-3], np.float32)}
    keys = jnp.asarray(jax.random.split(jax.random.PRNGKey(1), devices))  # [devices, 2]
    box = {"state": replicate(run.state, "batch")}
    shape = (sample_batch // devices, size, size, 3)  # per device
    p_sample = run.onestep_sampler(run.config, run.sde, run.model, shape)

    def step():
        with flax_frozen_dicts():
            (_, box["state"]), (loss_value, _) = p_train_step((keys, box["state"]), batch)
        return box["state"], loss_value

    def sample():
        with flax_frozen_dicts():
            return p_sample(keys, box["state"])[0]

    def lowered_flops(fn, *args):
        with flax_frozen_dicts():
            return devices * perf.lowered_flops(fn.lower(*args))

    return Side(
        code="jcm" if scan else "jcm, no scan",
        params=count_params(run.state.params),
        step=step,
        sampler=JCM_SAMPLER if sampler else "",
        sample=sample,
        # perf.flops counts a lax.scan's body once per step; jcm's scan runs n_jitted_steps =
        # 1 times, so XLA's count of the lowered module is complete. A pmap body is one
        # device's share.
        step_flops=lambda: lowered_flops(p_train_step, (keys, box["state"]), batch),
        sample_flops=lambda: lowered_flops(p_sample, keys, box["state"]),
    )


# ---- cm ----------------------------------------------------------------------------------------


def cm_config(net: Network):
    """configs/cifar10_ict.py at the network's sizes."""
    c = cifar10_ict.get_config()
    c.model.channels = net.channels
    c.model.num_blocks = net.num_blocks
    c.model.dropout = net.dropout
    c.training.batch_size = net.batch
    return c


def cm_side(net: Network, sample_batch: int) -> Side:
    """cm's production training step (jit, state donated) and its 1-step sampler."""
    config = cm_config(net)
    exp = experiment.build(config)
    step_fn = make_train_step(exp, tuple(config.training.ema_rates), config.seed)
    batch = measure.random_batch(config, exp)
    box = {"state": experiment.init_state(exp, config)}
    params = count_params(box["state"].params)

    def step():
        box["state"], metrics = step_fn(box["state"], batch)
        return box["state"], metrics

    sampler = experiment.samplers(config, exp)[CM_SAMPLER].jitted(sample_batch, False)
    key = jax.random.key(0)
    return Side(
        code="cm",
        params=params,
        step=step,
        sampler=CM_SAMPLER,
        sample=lambda: sampler(box["state"].params, key),
        step_flops=lambda: perf.flops(step_fn.trace(box["state"], batch)),
        sample_flops=lambda: perf.flops(sampler.trace(box["state"].params, key)),
    )


def measure_images(batch: int, size: int) -> np.ndarray:
    """Random images in [-1, 1] (the step is measured, not the data), [B, H, W, 3]."""
    return np.random.default_rng(0).uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)


# ---- timing ------------------------------------------------------------------------------------

_COMPILES: list[float] = []  # seconds of each XLA compilation of the process


def _on_duration(event: str, seconds: float, **_):
    if event == COMPILE_EVENT:
        _COMPILES.append(seconds)


def timed(fn: Callable[[], object]) -> dict:
    """One call, waited for: wall and CPU seconds, and the XLA compilations it ran."""
    before, cpu = len(_COMPILES), _cpu_seconds()
    start = time.perf_counter()
    jax.block_until_ready(fn())
    wall = time.perf_counter() - start
    compiles = _COMPILES[before:]
    return {
        "wall": wall,
        "cpu": _cpu_seconds() - cpu,
        "compiles": len(compiles),
        "xla_s": sum(compiles),
    }


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def interleaved(sides: list[Side], attr: str, repeats: int, label: str) -> dict[str, list]:
    """`repeats` rounds of one call of each side in turn (A, B, A, B, ...), after one first
    call of each (compile + first); per side [first call, timed calls]. Each call's seconds
    go to stderr as they come (a long run shows where it is)."""
    out = {s.code: [] for s in sides}
    for i in range(repeats + 1):
        for s in sides:
            call = timed(getattr(s, attr))
            out[s.code].append(call)
            print(f"{label} {s.code} {attr} call {i}: {call['wall']:.2f} s", file=sys.stderr)
    return out


# ---- the table ---------------------------------------------------------------------------------


def median(calls: list[dict], key: str) -> float:
    return statistics.median(c[key] for c in calls)


def compare(name: str, net: Network, args) -> list[dict]:
    """Rows of the table for one network: the training steps, then the samplers."""
    sample_batch = args.sample_batch or net.batch
    run = jcm_run(args.jcm_dir, net, args.jcm_loss)
    scans = {"scan": [True], "no_scan": [False], "both": [True, False]}[args.jcm_driver]
    sides = [cm_side(net, sample_batch)] + [
        jcm_side(run, scan, sample_batch, sampler=i == 0) for i, scan in enumerate(scans)
    ]  # jcm's sampler is the same program for both drivers: timed once
    steps = interleaved(sides, "step", args.steps, name)
    samplers = [s for s in sides if s.sampler]  # the no-scan side has jcm's sampler
    samples = interleaved(samplers, "sample", args.sample_repeats, name)
    rows = [row(name, s, "train step", net.batch, steps, s.step_flops) for s in sides]
    rows += [
        row(name, s, f"sampler {s.sampler}", sample_batch, samples, s.sample_flops)
        for s in samplers
    ]
    return rows


def row(network: str, side: Side, what: str, batch: int, calls: dict, flops) -> dict:
    """One line of the table. calls: per side, the first call and the timed ones (cm's are the
    reference); a timed call that compiled is left out of the median and counted with the
    first call's compilations."""
    sec, cpu = steady(calls[side.code])
    first, compiled = calls[side.code][0], calls[side.code]
    return {
        "network": network,
        "code": side.code,
        "what": what,
        "batch": batch,
        "parameters": f"{side.params:,}",
        "compile + first (s)": f"{first['wall']:.1f}",
        "compiles (XLA s)": (
            f"{sum(c['compiles'] for c in compiled)} ({sum(c['xla_s'] for c in compiled):.1f})"
        ),
        "median (s)": f"{sec:.3f}",
        "CPU s": f"{cpu:.2f}",
        "images/s": f"{batch / sec:.2f}",
        "GFLOP": f"{flops() / 1e9:.2f}",
        "jcm/cm": f"{sec / steady(calls['cm'])[0]:.2f}",
    }


def steady(calls: list[dict]) -> tuple[float, float]:
    """Median wall and CPU seconds of the timed calls (after the first) that compiled nothing
    (all timed calls if each compiled)."""
    timed_calls = calls[1:]
    kept = [c for c in timed_calls if c["compiles"] == 0] or timed_calls
    return median(kept, "wall"), median(kept, "cpu")


def header() -> str:
    """The run's circumstances: versions, device, XLA flags, load."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return "\n".join(
        [
            f"command: {' '.join(sys.argv)}",
            f"jax {jax.__version__}, flax {flax.__version__}, python {platform.python_version()}",
            f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, {os.cpu_count()} CPUs",
            f"XLA_FLAGS: {os.environ.get('XLA_FLAGS', '') or '(none)'}",
            f"load average at start (1, 5, 15 min): {load}",
        ]
    )


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jcm_dir", default="", help=f"A checkout of {JCM_URL}.")
    p.add_argument("--network", choices=(*NETWORKS, "both"), default="both")
    p.add_argument("--steps", type=int, default=5, help="Timed training steps per side.")
    p.add_argument("--sample_repeats", type=int, default=3, help="Timed sampler calls per side.")
    p.add_argument("--sample_batch", type=int, default=0, help="0 = the training batch.")
    p.add_argument("--jcm_loss", choices=JCM_LOSSES, default=JCM_LOSSES[0], help="jcm's loss.")
    p.add_argument(
        "--jcm_driver",
        choices=("scan", "no_scan", "both"),
        default="scan",
        help="jcm's step as jcm/train.py runs it (pmap over lax.scan), pmapped alone, or both.",
    )
    args = p.parse_args(argv)
    for name in ("steps", "sample_repeats"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name}={getattr(args, name)}; pass a count of at least 1.")
    return args


def main(argv=None) -> int:
    """Bad flags, a missing checkout or missing packages: one `error:` line and exit code 2,
    before anything is built."""
    try:
        args = parse_args(argv)
        args.jcm_dir = check_jcm_dir(args.jcm_dir)
        import_jcm(args.jcm_dir)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # A persistent-cache hit would make one side's compile a load (cm/compile_cache.py).
    jax.config.update("jax_enable_compilation_cache", False)
    jax.monitoring.register_event_duration_secs_listener(_on_duration)
    print(header(), flush=True)
    names = list(NETWORKS) if args.network == "both" else [args.network]
    rows = []
    for name in names:
        rows += compare(name, NETWORKS[name], args)
        print(perf.format_table(rows), flush=True)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average at end (1, 5, 15 min): {load}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
