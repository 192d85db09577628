"""One training process per workdir: a lock file with its owner, refreshed by a heartbeat.

workdir/lock.json = {host, pid, boot_id, started, heartbeat, token}. A second training start
on the same workdir is refused with one sentence. A lock is stale, and is taken over, when its
owner is gone: on the same host, its pid is not alive or the machine rebooted since (boot_id);
on any host, its heartbeat is older than `stale_seconds` (the owner refreshes it every
`heartbeat_seconds` from a background thread, so a kill -9 stops it). Object stores have no
exclusive create, so after writing, the lock is read back and kept only if it holds our token:
two starts racing within one round trip is the one case this cannot rule out.

Once the lock is ours no one else writes the workdir's records, so the temporary files of
atomic writes killed midway (.config.json.tmp-*, digests/.3.json.tmp-*) are removed then.
"""

import os
import socket
import threading
import time
import uuid

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from cm.io import fileio


def _boot_id() -> str:
    p = "/proc/sys/kernel/random/boot_id"
    return fileio.read_text(p).strip() if fileio.exists(p) else ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_reason(info: dict, now: float, stale_seconds: float):
    """Why a lock's owner is gone, or None while it may still be running."""
    if info.get("host") == socket.gethostname():
        if info.get("boot_id") != _boot_id():
            return "its host rebooted"
        if not _pid_alive(int(info.get("pid", -1))):
            return f"process {info.get('pid')} is gone"
    age = now - float(info.get("heartbeat", 0))
    if age > stale_seconds:
        return f"its heartbeat is {age:.0f} s old"
    return None


class WorkdirLock:
    """Holds workdir/lock.json while training; `release` removes it."""

    def __init__(self, workdir: str, heartbeat_seconds: float, stale_seconds: float):
        self.path = fileio.path(workdir) / "lock.json"
        self._heartbeat_seconds = heartbeat_seconds
        self._stale_seconds = stale_seconds
        now = time.time()
        self._info = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "boot_id": _boot_id(),
            "started": now,
            "heartbeat": now,
            "token": uuid.uuid4().hex,
        }
        self._stop = threading.Event()
        self._thread = None

    def acquire(self):
        """Takes the lock or raises one sentence naming its owner."""
        if fileio.exists(self.path):
            try:
                owner = fileio.read_json(self.path)
            except ValueError:
                owner = {}  # a torn or empty lock file: nobody can hold it
            reason = stale_reason(owner, time.time(), self._stale_seconds) if owner else "empty"
            if reason is None:
                raise self._busy(owner)
            logging.warning("Taking over the stale lock %s (%s).", self.path, reason)
        fileio.write_json_atomic(self.path, self._info)
        owner = fileio.read_json(self.path)
        if owner.get("token") != self._info["token"]:
            raise self._busy(owner)
        self._thread = threading.Thread(target=self._beat, daemon=True, name="workdir-lock")
        self._thread.start()
        return self

    def _busy(self, owner: dict) -> ValueError:
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(owner.get("started", 0)))
        return ValueError(
            f"The workdir {self.path.parent} is in use by process {owner.get('pid')} on host "
            f"{owner.get('host')} (started {started}, lock file {self.path}); wait for it to "
            f"finish or stop it, or use another --workdir (a lock whose heartbeat stops is "
            f"taken over after {self._stale_seconds:.0f} s)."
        )

    def _beat(self):
        while not self._stop.wait(self._heartbeat_seconds):
            self._info["heartbeat"] = time.time()
            try:
                fileio.write_json_atomic(self.path, self._info)
            except OSError as e:  # a full disk or a network hiccup: try again next beat
                logging.warning("Could not refresh the lock %s: %s", self.path, e)

    def release(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            if fileio.read_json(self.path).get("token") == self._info["token"]:
                fileio.remove(self.path)
        except (OSError, ValueError):
            pass  # gone or unreadable: nothing of ours to remove


def lock_workdir(workdir: str, t):
    """Process 0 takes the workdir lock; every process learns whether it got it."""
    lock, error = None, None
    if jax.process_index() == 0:
        try:
            lock = WorkdirLock(workdir, t.lock_heartbeat_seconds, t.lock_stale_seconds).acquire()
        except ValueError as e:
            error = e
    if jax.process_count() > 1:
        locked = bool(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
        if not locked and error is None:
            error = ValueError(f"Process 0 could not lock the workdir {workdir}; see its error.")
    if error is not None:
        raise error
    if lock is not None:
        remove_temporaries(workdir)
    return lock


# The workdir's folders of atomically written records (run_record.py, checkpoint.py).
RECORD_FOLDERS = ("", "digests", "starts")


def remove_temporaries(workdir: str):
    """Leftovers of atomic writes killed midway in the workdir's record folders, logged."""
    root = fileio.path(workdir)
    removed = [
        f"{d}/{n}" if d else n for d in RECORD_FOLDERS for n in fileio.remove_temporaries(root / d)
    ]
    if removed:
        logging.info("Removed temporary files of interrupted writes in %s: %s", workdir, removed)
