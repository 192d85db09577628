"""The GPU rows of BENCHMARKS.md recomputed: each measured program's FLOPs counted here, from
its lowered module, against the time the GPU measured.

    python -m benchmarks.flop_recount        # about a minute on a CPU: lowering only

Those rows first divided the GPU's compiled-module count by the time, and a GPU's compiled cost
analysis counts nothing inside the cuDNN / cuBLAS calls that run the convolutions
(BENCHMARKS.md, "FLOP counts"). The lowered module needs no device (nothing is compiled,
allocated or run), so each program is rebuilt here at the measured config, method and batch,
counted by benchmarks/perf.py `flops`, and divided by the measured time. MEASURED holds what
the lease recorded (times and the compiled counts it printed); the rates and MFU are derived.
"""

import jax
from absl import app

from benchmarks import measure, network_throughput, perf
from cm import experiment
from configs import cifar10_ict

DEVICE = "NVIDIA H200"  # the lease of BENCHMARKS.md, "JVP methods against iCT on an H200"
BATCH = 128

# (row, program, precision mode, measured seconds, GFLOP the GPU's compiled module reported).
# program: a method name for cifar10_ict's training step (benchmarks/jvp_cost.py, at the
# config's `highest`), or "forward + backward" for network_throughput's step of cifar10_ict
# (float32 at JAX's default precision: TF32 on the GPU).
MEASURED = (
    ("iCT training step", "ict", "f32 highest", 0.6150, 287.9),
    ("sCT training step", "sct", "f32 highest", 0.6156, 294.5),
    ("MeanFlow training step", "meanflow", "f32 highest", 0.6144, 294.6),
    ("NCSN++ forward + backward", "forward + backward", "f32 default", 0.100, 231.6),
)
# The lowered count is the program as written; where XLA then computes something once for two
# uses, the count holds it twice (BENCHMARKS.md, "FLOP counts").
NOTES = {
    "sct": "counts the network's forward pass twice: as the JVP's primal and with the "
    "gradient; XLA computes it once",
}


def program_flops(program: str) -> float:
    """perf.flops of a MEASURED program at batch BATCH on one device (shapes only)."""
    config = cifar10_ict.get_config()
    if program == "forward + backward":
        step, args, _ = network_throughput.program(config, BATCH)
        return perf.flops(step.trace(*args))
    config.training.batch_size = BATCH
    config.method.name = program
    return measure.train_step_flops(config, experiment.build(config, jax.devices()[:1]))


def rows(counts: dict) -> list[dict]:
    """The table: per MEASURED row, its counts (GFLOP), the rate and MFU on DEVICE."""
    table = []
    for name, program, mode, seconds, reported in MEASURED:
        count = counts[program]
        peak = perf.published_peak(DEVICE, mode)
        table.append({
            "program (cifar10_ict, batch 128)": name, "precision": mode,
            "measured ms": f"{1000 * seconds:.1f}",
            "GFLOP, GPU compiled (as reported)": f"{reported:.1f}",
            "GFLOP, lowered": f"{count / 1e9:.0f}", "x reported": f"{count / 1e9 / reported:.1f}",
            "TFLOP/s": f"{count / seconds / 1e12:.1f}",
            "MFU": perf.fraction(count / seconds, peak), "peak TFLOP/s": f"{peak / 1e12:g}",
            "note": NOTES.get(program, ""),
        })  # fmt: skip
    return table


def seconds_per_flop_ratio(counts: dict) -> float:
    """Seconds per FLOP of the iCT step at `highest` over those of the forward + backward at
    the default (TF32): what `highest` costs, read across two different programs."""
    ict = next(r for r in MEASURED if r[1] == "ict")
    default = next(r for r in MEASURED if r[1] == "forward + backward")
    return (ict[3] / counts["ict"]) / (default[3] / counts["forward + backward"])


def main(argv):
    del argv
    counts = {program: program_flops(program) for _, program, *_ in MEASURED}
    print(f"times: {DEVICE}, as measured; FLOPs: lowered here on {jax.devices()[0].device_kind}")
    print(perf.format_table(rows(counts)))
    ratio = seconds_per_flop_ratio(counts)
    print(f"seconds per FLOP, iCT step at highest / forward + backward at default: {ratio:.1f}")


if __name__ == "__main__":
    app.run(main)
