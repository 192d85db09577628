"""A full disk (or bucket quota) ends a run with one line, not hundreds of tracebacks.

When storage fills up, every background writer of Orbax and tensorstore fails at once and logs
its traceback. `install` drops those records and thread tracebacks once they say the storage is
full; `is_full_disk` recognizes the error that reaches launch.py, whatever wraps it.
"""

import errno
import logging
import sys
import threading

# How a full disk or an exhausted quota shows in messages of Python, tensorstore and GCS.
MARKERS = ("No space left on device", "os_error_code='28'", "Disk quota exceeded")


def _mentions_full_disk(text: str) -> bool:
    return any(marker in text for marker in MARKERS)


def is_full_disk(error: BaseException | None) -> bool:
    """True when the error or anything in its cause/context chain is a full disk."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if _mentions_full_disk(str(error)):
            return True
        error = error.__cause__ or error.__context__
    return False


class _DropFullDiskRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += str(record.exc_info[1])
        return not _mentions_full_disk(text)


def _closed_loop(error: BaseException | None) -> bool:
    """Orbax's asyncio callbacks that fire after a failed save closed their loop: noise."""
    return isinstance(error, RuntimeError) and str(error) == "Event loop is closed"


def install(handler: logging.Handler):
    """Silences full-disk log records on `handler`, full-disk tracebacks of threads, and the
    'Event loop is closed' tracebacks that a failed asynchronous save leaves behind."""
    handler.addFilter(_DropFullDiskRecords())
    thread_hook, unraisable_hook = threading.excepthook, sys.unraisablehook

    def on_thread_error(args):
        if not is_full_disk(args.exc_value):
            thread_hook(args)

    def on_unraisable(args):
        if not (is_full_disk(args.exc_value) or _closed_loop(args.exc_value)):
            unraisable_hook(args)

    threading.excepthook = on_thread_error
    sys.unraisablehook = on_unraisable


def message(workdir: str) -> str:
    return (
        f"the storage of {workdir} is full (No space left on device); free space or raise the "
        "quota, then rerun the same command: it resumes from the last good checkpoint."
    )
