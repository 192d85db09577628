"""Entry point: the same command on a laptop, a GPU node, or every host of a TPU pod.

python launch.py --config=configs/demo.py --workdir=runs/demo [--mode=MODE]
  MODE: train (default) | sample | eval | fid_stats | summary | encode | lcsc | import
python launch.py --config=configs/cifar10_ict.py --workdir=W --config.training.batch_size=512
"""

import logging as std_logging
import os
import re
import sys
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

from cm.io import full_disk

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
_MODE = flags.DEFINE_string(
    "mode", "train", "train | sample | eval | fid_stats | summary | encode | lcsc | import."
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, to start several processes by hand."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a by-hand start.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in a by-hand start.")
flags.mark_flags_as_required(["config", "workdir"])
_REQUIRED_EXAMPLES = {"config": "configs/demo.py", "workdir": "runs/demo"}

# Environment variables that mean "this is one process of several" (TPU pods, SLURM, Open MPI).
_CLUSTER_HINTS = ("TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS", "OMPI_COMM_WORLD_SIZE")


def _start_distributed():
    """jax.distributed on several processes; nothing on one."""
    import jax

    if _COORDINATOR.value:
        jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    elif (
        any(os.environ.get(k) for k in _CLUSTER_HINTS)
        or int(os.environ.get("SLURM_NTASKS", "1")) > 1
    ):
        jax.distributed.initialize()


def _finish_distributed():
    """Several processes leave together: a barrier, then jax.distributed's own shutdown, so that
    no process exits (and takes the coordination service with it, process 0) while another is
    still finishing its last checkpoint write; an unsynchronized exit can abort the slower one."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("cm.launch.done")
        jax.distributed.shutdown()


def _hide_accelerators_from_tensorflow():
    """TensorFlow (used by tfds and TensorBoard writers) must not grab GPU or TPU memory. With
    JAX held to the CPU (JAX_PLATFORMS=cpu) there is no accelerator memory of JAX's to protect,
    and TensorFlow's import (about 3 s) waits until something uses it."""
    if os.environ.get("JAX_PLATFORMS", "").strip().lower() == "cpu":
        return
    try:
        import tensorflow as tf

        tf.config.set_visible_devices([], "GPU")
        tf.config.set_visible_devices([], "TPU")
    except (ImportError, RuntimeError, ValueError):
        pass


def _quiet_library_info_logs():
    """Orbax logs every checkpoint phase at INFO; keep its warnings, drop the rest."""

    def keep(record) -> bool:
        return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname

    logging.get_absl_handler().addFilter(keep)
    full_disk.install(logging.get_absl_handler())


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    _quiet_library_info_logs()
    _hide_accelerators_from_tensorflow()
    _start_distributed()
    import jax

    from cm import config_checks, modes
    from cm.workdir import location, preemption

    logging.info(
        "JAX process %d of %d, %d local devices of %d.",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    try:
        config_checks.check(_CONFIG.value, _MODE.value)  # before anything touches the workdir
        location.check(_WORKDIR.value)
        modes.run(_MODE.value, _CONFIG.value, _WORKDIR.value)
        _finish_distributed()
    except preemption.Stopped as e:  # SIGTERM / SIGINT: checkpoint saved, lock released
        _finish_distributed()
        print(f"stopped: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except Exception as e:
        # A user error or a full disk: one sentence, no traceback (CM_TRACEBACK=1 shows it).
        # The workdir is kept.
        user_error = isinstance(e, ValueError | FileNotFoundError | FloatingPointError)
        bucket = location.missing_bucket(_WORKDIR.value, e) if isinstance(e, OSError) else None
        if os.environ.get("CM_TRACEBACK") or not (
            user_error or bucket or full_disk.is_full_disk(e)
        ):
            raise
        text = full_disk.message(_WORKDIR.value) if full_disk.is_full_disk(e) else str(e)
        print(f"error: {bucket or text}", file=sys.stderr)
        sys.exit(2)


def _usage_error(message: str):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _last_line(text: str) -> str:
    """The last non-empty line: the cause at the end of a multi-line library message."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _config_value(dotted: str):
    """The loaded config's value at `dotted` ("training.batch_size"), or None."""
    value = flags.FLAGS["config"].value
    try:
        for key in dotted.split("."):
            value = value[key]
    except (KeyError, TypeError, AttributeError, OSError):
        return None
    return value


def _bad_flag_value(e: flags.IllegalFlagValueError) -> str:
    """One sentence for a flag value that does not parse (or a config file that fails)."""
    match = re.match(r"flag --([\w.]+)=(.*?): (.*)", str(e), re.S)
    if not match:
        return f"{_last_line(e)}; see python launch.py --help."
    name, value, cause = match[1], match[2], _last_line(match[3])
    if value == "None" and name in _REQUIRED_EXAMPLES:
        return f"--{name} is missing; pass it, e.g. --{name}={_REQUIRED_EXAMPLES[name]}."
    if name == "config":
        return (
            f"--config={value} cannot be loaded ({cause}); fix the file or its :argument, "
            "e.g. --config=configs/demo.py."
        )
    current = _config_value(name[len("config.") :]) if name.startswith("config.") else None
    if current is not None:
        kind = type(current).__name__
        example = f"'{current!r}'" if isinstance(current, tuple | list) else current
        return (
            f"--{name}={value} does not parse as {kind} ({cause}); pass a value of the "
            f"field's type, e.g. its value in the config: --{name}={example}."
        )
    return f"--{name}={value} is invalid ({cause}); see python launch.py --help."


def _parse_flags(argv):
    """absl flag parsing; a misspelled --config.a.b override, a value that does not parse, an
    unknown flag or a config file that does not load is reported in one sentence (exit 2)."""
    try:
        rest = flags.FLAGS(argv)
    except (AttributeError, KeyError) as e:
        inner = e
        while isinstance(inner, BaseException) and inner.args:
            inner = inner.args[0]
        hint = str(inner).replace("\n", " ")
        _usage_error(
            f"unknown config field in a --config.* override ({hint}); "
            "configs/common.py lists every field."
        )
    except flags.IllegalFlagValueError as e:
        _usage_error(_bad_flag_value(e))
    except flags.Error as e:
        _usage_error(f"{_last_line(e).rstrip('.')}; see python launch.py --help.")
    except OSError as e:  # a --config.* override of a config file that failed to load
        _unloadable_config(e)
    except Exception as e:  # noqa: BLE001 - the config file's own code failed (SyntaxError, ...)
        if os.environ.get("CM_TRACEBACK"):
            raise
        _usage_error(_failed_config_file(argv, e))
    try:
        _CONFIG.value.keys()  # a config file that failed to load raises on first use
    except OSError as e:
        _unloadable_config(e)
    return rest


def _failed_config_file(argv, e: Exception) -> str:
    """One sentence for a config file whose code raised while loading: the error, where."""
    given = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    value = given[-1] if given else "the file"  # the last --config= is the one loaded
    if isinstance(e, SyntaxError):
        where, cause = f"{e.filename} line {e.lineno}", e.msg
    else:
        frames = [f for f in traceback.extract_tb(e.__traceback__) if _own_code(f.filename)]
        where = f"{frames[-1].filename} line {frames[-1].lineno}" if frames else value
        cause = _last_line(e) or "no message"
    return (
        f"--config={value} cannot be loaded ({type(e).__name__} at {where}: {cause}); fix the "
        "file, e.g. compare it with configs/demo.py (CM_TRACEBACK=1 shows the traceback)."
    )


def _own_code(filename: str) -> bool:
    """A frame of a config file (or what it imports), not of Python or a library."""
    return not (filename.startswith("<") or "-packages" + os.sep in filename)


def _unloadable_config(e: OSError):
    _usage_error(
        f"the --config file cannot be loaded ({_last_line(e)}); pass a config file, e.g. "
        "--config=configs/demo.py."
    )


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
