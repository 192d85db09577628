"""A clean stop of training on SIGTERM (a preemption notice) or SIGINT (Ctrl-C).

Cloud TPU and GPU VMs send SIGTERM some seconds before they take the machine away. Instead of
dying mid-interval, training finishes the step it is on, saves a checkpoint at that step,
releases the workdir lock, and launch.py prints one line saying how to resume, exiting with
128 + the signal's number (143 for SIGTERM, 130 for SIGINT: the shell's convention for a
process ended by that signal).

Which step: every process must stop at the same one, or the checkpoint's collective save
hangs.
- One process: a handler sets a flag, read once per step on the host: a Python attribute, no
  device sync, no round trip. The stop comes after the step in flight when the signal lands.
- Several processes (jax.distributed): JAX's preemption service owns SIGTERM. Its notifier
  (installed by jax.distributed.initialize, polling about once a second) tells the
  coordination service, which gathers every process's latest step and fixes the stop at
  the largest one plus 1; `multihost_utils.reached_preemption_sync_point(step)`, called once
  per step, is a local lookup in the coordination client (no device sync) that turns True at
  that step on every process. A SIGINT on any process is handed to the same service (the
  handler sends SIGTERM to its own process), so Ctrl-C agrees the same way. Latency: about a
  second, plus the steps the other processes are ahead.

A second signal of the same kind acts as if no handler were there (the process ends at once).
A signal during start-up (restore, compilation) stops the run after its first step. On several
processes, a notice before the loop has reported its start step (`begin`) may be missed by a
resumed run (the service fixes step 1, which the loop has passed): the run then goes on until
the machine is taken, and resumes from its last checkpoint.
"""

import contextlib
import os
import signal
import threading

import jax
from absl import logging
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(Exception):  # noqa: N818 - a clean stop, not an error
    """Training stopped on a signal after saving its checkpoint; launch.py prints the message
    (not an error: the run is intact) and exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class StopWatch:
    """Watches for SIGTERM / SIGINT during training; `reached(step)` says when to stop.

    One process: Python handlers for both signals. Several: JAX's preemption service (see
    the module docstring); SIGINT goes through it too.
    """

    def __init__(self):
        self.signal = None  # the signal received by this process (None: none, or from another)
        self._previous = {}
        self._shared = jax.process_count() > 1
        if self._shared:
            try:
                multihost_utils.reached_preemption_sync_point(0)  # raises when there is none
            except RuntimeError:  # jax_enable_preemption_service is off
                logging.warning(
                    "JAX's preemption service is off (jax_enable_preemption_service): SIGTERM "
                    "and SIGINT end these processes without a checkpoint."
                )
                self._shared = None

    def install(self):
        """Handlers in the main thread (elsewhere Python allows none: nothing is watched)."""
        if self._shared is None or threading.current_thread() is not threading.main_thread():
            return
        watched = (signal.SIGINT,) if self._shared else SIGNALS  # SIGTERM: JAX's notifier
        for signum in watched:
            previous = signal.signal(signum, self._handle)
            # None: a handler set outside Python, which Python cannot put back.
            self._previous[signum] = signal.SIG_DFL if previous is None else previous

    def restore(self):
        """The handlers that were there before `install`."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum, frame):
        del frame
        self.signal = signal.Signals(signum)
        signal.signal(signum, self._previous.pop(signum))  # a second one: as without us
        logging.warning(
            "%s received: training stops after the current step with a checkpoint (send it "
            "again to stop at once).",
            self.signal.name,
        )
        if self._shared:
            os.kill(os.getpid(), signal.SIGTERM)  # to JAX's notifier: every process agrees

    def begin(self, start_step: int):
        """Several processes: reports the step training starts from (it resumes from
        `start_step`), so that a notice before the first step fixes a step the loop reaches."""
        if self._shared:
            multihost_utils.reached_preemption_sync_point(start_step)

    def reached(self, step: int) -> bool:
        """True at the step where every process stops (call it once per step, on all)."""
        if self._shared:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.signal is not None

    def stopped(self, step: int, checkpoint: str) -> Stopped:
        """The exception that ends the run after the stop's checkpoint is on disk."""
        signum = self.signal or signal.SIGTERM  # on several processes: the preemption notice
        cause = signum.name if self.signal else "a preemption notice (SIGTERM or SIGINT)"
        return Stopped(
            f"{cause} stopped training after step {step}; its checkpoint is {checkpoint}: rerun "
            "the same command to resume from it.",
            128 + int(signum),
        )


@contextlib.contextmanager
def watching():
    """A StopWatch with its handlers installed for the duration of the block."""
    watch = StopWatch()
    watch.install()
    try:
        yield watch
    finally:
        watch.restore()
