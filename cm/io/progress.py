"""Progress of a long loop as a person reads it, on a terminal and in a log file alike.

A terminal gets a tqdm bar. Any other stream (a log file, a pipe, a batch system's output) gets
one plain line every 1/LINES_PER_LOOP of the work and at the end, never a carriage return: a
'\\r' update would make the whole loop one unreadable line of the file. Training logs a line of
its own (`TrainClock`): images/s, the time elapsed and the ETA to training.num_steps.
The formatting is pure functions of numbers, so that tests pin it with hand-computed values.
"""

import math
import sys
import time
from collections.abc import Callable

LINES_PER_LOOP = 10  # a non-terminal stream gets a line every 10 % of the loop (issue 21, §4)


def format_duration(seconds: float) -> str:
    """'H:MM:SS' rounded to whole seconds, hours unbounded ('27:46:40'); '?' when unknown."""
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(round(max(seconds, 0.0)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def per_second(count: float, seconds: float) -> float:
    """count / seconds; inf for no time elapsed (a clock that has not ticked)."""
    return count / seconds if seconds > 0 else math.inf


def eta_seconds(remaining: float, rate: float) -> float:
    """Seconds to do `remaining` more at `rate` per second; inf at a rate of 0 (unknown)."""
    return remaining / rate if rate > 0 else math.inf


def format_rate(rate: float, unit: str) -> str:
    """'1234.5 images/s'; '? images/s' when unknown."""
    return f"{rate:.1f} {unit}/s" if math.isfinite(rate) else f"? {unit}/s"


def loop_line(label: str, done: int, total: int, unit: str, elapsed: float) -> str:
    """'fid_stats: 500/5000 images (10%), 12.5 images/s, elapsed 0:00:40, ETA 0:06:00':
    the average rate since the loop began, and the ETA at that rate."""
    rate = per_second(done, elapsed)
    eta = eta_seconds(total - done, rate)
    percent = 100 * done // total if total else 100
    return (
        f"{label}: {done}/{total} {unit} ({percent}%), {format_rate(rate, unit)}, "
        f"elapsed {format_duration(elapsed)}, ETA {format_duration(eta)}"
    )


def line_due(previous: int, done: int, total: int, lines: int = LINES_PER_LOOP) -> bool:
    """Whether `done` (after `previous`) enters a new 1/lines of `total`, or ends the loop: the
    line cadence on a non-terminal stream. Integer arithmetic, so 10 % of 30 is exactly 3."""
    if done >= total:
        return True
    return done * lines // total > previous * lines // total


def is_terminal(stream) -> bool:
    """Whether a person watches `stream` live (a tty); False for files, pipes, closed streams."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def reporter(
    label: str, unit: str, stream=None, clock: Callable[[], float] = time.monotonic
) -> Callable[[int, int], None]:
    """report(done, total) for a loop: a tqdm bar on a terminal, else `loop_line`s on the
    `line_due` cadence. The clock starts now: create it just before the loop (stream defaults
    to sys.stdout at this call)."""
    stream = sys.stdout if stream is None else stream
    if is_terminal(stream):
        return _bar(label, unit, stream)
    start, last = clock(), [0]

    def report(done: int, total: int):
        if line_due(last[0], done, total):
            print(loop_line(label, done, total, unit, clock() - start), file=stream, flush=True)
            last[0] = done

    return report


def _bar(label: str, unit: str, stream) -> Callable[[int, int], None]:
    """A tqdm bar, opened at the first report (when the total is known), closed at the end."""
    from tqdm import tqdm

    bar = []

    def report(done: int, total: int):
        if not bar:
            bar.append(tqdm(total=total, desc=label, unit=f" {unit}", file=stream))
        bar[0].update(done - bar[0].n)
        if done >= total:
            bar[0].close()

    return report


def train_line(
    step: int, num_steps: int, loss: float, images_per_sec: float, elapsed: float, eta: float
) -> str:
    """'step 100/1000 (10%): loss 0.0312, 1234.5 images/s, elapsed 0:01:23, ETA 0:12:34'."""
    percent = 100 * step // num_steps
    return (
        f"step {step}/{num_steps} ({percent}%): loss {loss:.4g}, "
        f"{format_rate(images_per_sec, 'images')}, elapsed {format_duration(elapsed)}, "
        f"ETA {format_duration(eta)}"
    )


class TrainClock:
    """The numbers of the training log line, read at the logged steps (where the loss is
    fetched, so the device has finished the step and the clock measures it).

    images/s is over the steps since the previous line (the current speed). The ETA is at the
    average rate since this run's first line, which leaves out the first step's compilation and
    averages in the periodic checkpoints, grids and evaluations; until a second line, at the
    current speed. elapsed counts from this launch's first step (a resumed run starts at 0).
    """

    def __init__(self, start_step: int, batch_size: int, num_steps: int, clock=time.monotonic):
        self.batch_size, self.num_steps, self.clock = batch_size, num_steps, clock
        self.start_time = clock()
        self.previous = (start_step, self.start_time)  # (step, time) of the previous line
        self.first = None  # (step, time) of this run's first line

    def line(self, step: int, loss: float) -> str:
        now = self.clock()
        window_rate = per_second(
            (step - self.previous[0]) * self.batch_size, now - self.previous[1]
        )
        if self.first is None:
            self.first, steps_rate = (step, now), window_rate / self.batch_size
        else:
            steps_rate = per_second(step - self.first[0], now - self.first[1])
        self.previous = (step, now)
        eta = eta_seconds(self.num_steps - step, steps_rate)
        return train_line(step, self.num_steps, loss, window_rate, now - self.start_time, eta)
