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


# A compiled module's text, cut to what hlo_index reads: a fused convolution whose root has no
# metadata, a GroupNorm fusion, a resampling fusion, an optimizer update, a layout copy, a
# cuDNN call (a GPU's convolution) and an attention softmax.
def _line(name: str, op: str, op_name: str = "", extra: str = "") -> str:
    """One instruction line of a compiled module's text."""
    meta = f', metadata={{op_name="jit(step)/{op_name}"}}' if op_name else ""
    return f"  %{name} = f32[8,4]{{1,0}} {op}(%p){extra}{meta}"


NET = "jvp(UNet)"  # the name stack of the network's forward pass
HLO = "\n".join(
    [
        "%fused_computation.1 (param_0: f32[8,4], param_1: f32[4,4]) -> f32[8,4] {",
        _line("dot.3", "dot", f"{NET}/enc/conv0/conv_general_dilated"),
        "  ROOT %copy.4 = f32[8,4]{0,1} copy(%dot.3)",
        "}",
        "",
        "ENTRY %main.9 (p: f32[8,4]) -> f32[8,4] {",
        _line("ynn_fusion.1", "fusion", "", ", kind=kCustom, calls=%fused_computation.1"),
        _line("add_fusion.2", "fusion", f"transpose({NET})/dec/norm0/add_any", ", calls=%f.2"),
        _line("pad_fusion.3", "fusion", f"{NET}/enc/enc._resample/resample/pad", ", calls=%f.3"),
        _line("multiply_fusion.4", "fusion", "mul", ", calls=%f.4"),
        _line("transpose_copy_fusion.5", "fusion", "", ", calls=%f.5"),
        _line(
            "custom-call.6",
            "custom-call",
            f"{NET}/enc/conv1/conv_general_dilated",
            ', custom_call_target="__cudnn$convForward"',
        ),
        _line("divide_fusion.7", "fusion", f"{NET}/dec/attn/div", ", calls=%f.7"),
        "}",
    ]
)


def test_hlo_instructions_are_attributed_to_categories():
    index = profile_step.hlo_index(HLO)
    category = {n: profile_step.instruction_category(index.get(n)) for n in index}
    # the conv fusion takes the op_name of its fused dot (its root copy has none)
    assert index["ynn_fusion.1"]["op_name"].endswith("conv0/conv_general_dilated")
    assert category["ynn_fusion.1"] == "conv/matmul"
    assert category["custom-call.6"] == "conv/matmul"  # cuDNN, by its call target
    assert category["add_fusion.2"] == "normalization"
    assert category["pad_fusion.3"] == "resampling"
    assert category["multiply_fusion.4"] == "loss, optimizer, EMA"  # outside the network
    assert category["transpose_copy_fusion.5"] == "layout copies"
    assert category["divide_fusion.7"] == "attention (softmax etc.)"
    assert profile_step.instruction_category(None) == "unattributed"
    # GPU kernels name their instruction in args.hlo_op; CPU events are named after it
    events = [
        {"name": "sm90_xmma_fprop", "dur": 3000.0, "args": {"hlo_op": "custom-call.6"}},
        {"name": "add_fusion.2", "dur": 1000.0},
        {"name": "cutlass_gemm_kernel", "dur": 500.0},  # a library kernel of no instruction
        {"name": "memset", "dur": 500.0},
    ]
    totals = profile_step.category_totals(events, index, steps=1)
    # 3 ms + 0.5 ms of matmul kernels, 1 ms of normalization, 0.5 ms unattributed
    assert totals["conv/matmul"] == pytest.approx(3.5) and totals["normalization"] == 1.0
    assert totals["unattributed"] == 0.5 and sum(totals.values()) == pytest.approx(5.0)
    rows = profile_step.category_table(totals)
    assert [r["category"] for r in rows] == list(profile_step.CATEGORIES)
    assert rows[1]["share"] == "70.0%"
