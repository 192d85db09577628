"""Progress output (cm/io/progress.py): readable lines in a log file (no carriage return, about
one per 10 % of a loop), a bar on a terminal, and the training line's images/s, elapsed and ETA
(the training loop's use of it: tests/test_train.py). Hand-computed numbers, a fake clock."""

import io

import numpy as np

from cm import experiment, modes
from cm.evaluation import features
from cm.io import progress


class FakeClock:
    """time.monotonic's stand-in: reads `now`, which the test advances."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_durations_rates_and_etas_by_hand():
    assert progress.format_duration(0) == "0:00:00"
    assert progress.format_duration(59.4) == "0:00:59"  # rounded to whole seconds
    assert progress.format_duration(59.6) == "0:01:00"
    assert progress.format_duration(3725) == "1:02:05"  # 3600 + 2 * 60 + 5
    assert progress.format_duration(100_000) == "27:46:40"  # 27 * 3600 + 46 * 60 + 40
    assert progress.format_duration(float("inf")) == "?"
    assert progress.per_second(500, 40.0) == 12.5
    assert progress.eta_seconds(4500, 12.5) == 360.0  # 4500 / 12.5
    assert progress.per_second(3, 0.0) == float("inf")  # a clock that has not ticked
    assert progress.eta_seconds(10, 0.0) == float("inf")  # no rate yet: unknown
    assert progress.format_rate(float("inf"), "images") == "? images/s"


def test_loop_line_by_hand():
    # 500 images in 40 s: 12.5 images/s; 4500 left at that rate: 360 s = 0:06:00.
    line = progress.loop_line("fid_stats", 500, 5000, "images", 40.0)
    assert line == "fid_stats: 500/5000 images (10%), 12.5 images/s, elapsed 0:00:40, ETA 0:06:00"


def test_a_line_every_tenth_and_at_the_end():
    def due(total, step):
        done, previous, out = 0, 0, []
        while done < total:
            done = min(done + step, total)
            if progress.line_due(previous, done, total):
                out.append(done)
                previous = done
        return out

    assert due(30, 1) == [3, 6, 9, 12, 15, 18, 21, 24, 27, 30]  # exactly every 3 (10 % of 30)
    # Batches of 64 of 1000: the first report past each 100 (128 is the first past 100, ...).
    assert due(1000, 64) == [128, 256, 320, 448, 512, 640, 704, 832, 960, 1000]
    assert due(5, 4) == [4, 5]  # fewer reports than lines: every report that moves a tenth
    assert due(8, 8) == [8]


def test_a_log_file_gets_readable_lines_without_carriage_returns():
    stream, clock = io.StringIO(), FakeClock()
    report = progress.reporter("1step", "samples", stream, clock)
    for done in range(64, 1000 + 64, 64):
        clock.now += 2.0  # 2 s per batch of 64
        report(min(done, 1000), 1000)
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 10  # one per 10 % (the reports at 128, 256, ..., 960, 1000)
    # 128 samples after 2 batches (4 s): 32.0 samples/s; 872 left: 27.25 s -> 0:00:27.
    assert lines[0] == "1step: 128/1000 samples (12%), 32.0 samples/s, elapsed 0:00:04, ETA 0:00:27"
    # 16 reports of 2 s: 1000 samples in 32 s = 31.25 samples/s, nothing left.
    assert lines[-1] == (
        "1step: 1000/1000 samples (100%), 31.2 samples/s, elapsed 0:00:32, ETA 0:00:00"
    )


def test_a_terminal_gets_a_bar():
    stream = FakeTerminal()
    report = progress.reporter("fid_stats", "images", stream)
    for done in (5, 10):
        report(done, 10)
    text = stream.getvalue()
    assert "fid_stats" in text and "10/10" in text and "100%" in text
    assert "fid_stats: 5/10 images" not in text  # the bar, not the log-file lines


def test_the_production_reporters_write_lines_to_a_non_terminal_stdout(capsys):
    """The reporters of eval/fid_stats (features.progress_printer, through the extractor that
    reference_stats and the Inception metric run) and of --mode=sample, on captured stdout."""
    extractor = features.ParallelExtractor(
        lambda variables, x: {"mean": x.astype(np.float32).mean(axis=(1, 2, 3))},  # [b]
        {},
        experiment.make_mesh(),
        batch_size=4,
    )
    images = np.arange(40 * 2 * 2 * 1, dtype=np.uint8).reshape(40, 2, 2, 1)
    got = extractor.extract(features.array_reader(images), 40, features.progress_printer("fid"))
    np.testing.assert_allclose(got["mean"], images.reshape(40, -1).mean(axis=1))
    report = modes._progress_printer("2step")
    report(8, 16)
    report(16, 16)
    out = capsys.readouterr().out
    assert "\r" not in out
    lines = out.splitlines()
    assert [line.split(" (")[0] for line in lines] == [
        *(f"fid: {k}/40 images" for k in range(4, 44, 4)),  # ten batches of 4: ten lines
        "2step: 8/16 samples",
        "2step: 16/16 samples",
    ]
    assert all("images/s, elapsed " in line and ", ETA " in line for line in lines[:10])


def test_train_clock_by_hand():
    clock = FakeClock()
    timer = progress.TrainClock(start_step=0, batch_size=8, num_steps=100, clock=clock)
    clock.now = 20.0
    # 10 steps of 8 images in 20 s: 4.0 images/s; the first line's ETA is at that speed,
    # 0.5 steps/s: 90 steps in 180 s.
    first = timer.line(10, 0.5)
    assert first == "step 10/100 (10%): loss 0.5, 4.0 images/s, elapsed 0:00:20, ETA 0:03:00"
    clock.now = 25.0
    # 80 images in 5 s: 16.0 images/s; since the first line 10 steps in 5 s = 2 steps/s, so
    # 80 steps in 40 s.
    second = timer.line(20, 0.25)
    assert second == "step 20/100 (20%): loss 0.25, 16.0 images/s, elapsed 0:00:25, ETA 0:00:40"


def test_a_resumed_run_counts_from_its_own_first_step():
    clock = FakeClock()
    clock.now = 1000.0
    timer = progress.TrainClock(start_step=50, batch_size=4, num_steps=60, clock=clock)
    clock.now = 1010.0
    # steps 51..60 (10 steps of 4 images) in 10 s: 4.0 images/s, elapsed 10 s, nothing left.
    assert timer.line(60, 1.0) == (
        "step 60/60 (100%): loss 1, 4.0 images/s, elapsed 0:00:10, ETA 0:00:00"
    )
