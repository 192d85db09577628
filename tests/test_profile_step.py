"""benchmarks/profile_step.py's reading of a Perfetto trace, on a trace written by hand."""

import pytest

from benchmarks import profile_step


def _trace(device_process: str):
    """Two processes: the host (a python thread's event) and `device_process` with kernels."""
    meta = [
        {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/host:CPU"}},
        {"ph": "M", "name": "thread_name", "pid": 1, "tid": 7, "args": {"name": "python"}},
        {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": device_process}},
        {"ph": "M", "name": "thread_name", "pid": 2, "tid": 9, "args": {"name": "tf_XLA/1"}},
    ]
    x = lambda name, dur, pid=2, tid=9: {
        "ph": "X",
        "name": name,
        "dur": dur,
        "pid": pid,
        "tid": tid,
    }  # noqa: E731
    events = [
        x("PjitFunction(step)", 5000.0, pid=1, tid=7),  # host: never counted
        x("sm90_xmma_fprop_conv", 300.0),
        x("sm90_xmma_fprop_conv", 300.0),
        x("loop_add_fusion", 100.0),
        x("memcpy", 200.0),
    ]
    return {"traceEvents": meta + events}


def test_device_kernels_are_summed_per_step_by_name():
    events = profile_step.device_events(_trace("/device:GPU:0"))
    assert sorted(e["name"] for e in events) == [
        "loop_add_fusion", "memcpy", "sm90_xmma_fprop_conv", "sm90_xmma_fprop_conv"
    ]  # fmt: skip
    rows = profile_step.kernel_table(events, steps=2, top=2)
    # 900 us of device time over 2 steps: the conv 600 us (0.300 ms/step, 66.7%, 1 call/step),
    # memcpy 200 us (0.100 ms/step, 22.2%), and the fusion summed in the last row (11.1%).
    assert [r["kernel"] for r in rows] == ["sm90_xmma_fprop_conv", "memcpy", "(1 more kernels)"]
    assert [r["ms/step"] for r in rows] == ["0.300", "0.100", "0.050"]
    assert [r["share"] for r in rows] == ["66.7%", "22.2%", "11.1%"]
    assert rows[0]["calls/step"] == "1" and rows[0]["kind"] == "matmul/conv"
    totals = profile_step.kind_totals(events, steps=2)
    assert totals == pytest.approx({"matmul/conv": 0.3, "fusion": 0.05, "other": 0.1})


def test_a_cpu_trace_counts_xla_worker_threads_only():
    """No device process: the kernels are the tf_XLA threads' events, wrappers excluded."""
    trace = _trace("/host:CPU worker")
    trace["traceEvents"].append(
        {"ph": "X", "name": "ThunkExecutor::Execute", "dur": 1e6, "pid": 2, "tid": 9}
    )
    names = sorted(e["name"] for e in profile_step.device_events(trace))
    assert names == ["loop_add_fusion", "memcpy", "sm90_xmma_fprop_conv", "sm90_xmma_fprop_conv"]


@pytest.mark.parametrize(
    "name, kind",
    [
        ("cutlass_80_tensorop_s1688gemm", "matmul/conv"),
        ("cudnn::conv2d_grouped_direct_kernel", "matmul/conv"),
        ("loop_multiply_reduce_fusion_3", "fusion"),
        ("input_reduce_fusion", "fusion"),
        ("memcpy", "other"),
    ],
)
def test_kernel_kinds(name, kind):
    assert profile_step.kernel_kind(name) == kind
