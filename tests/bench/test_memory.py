"""graphc.bench.memory and graphc.passmanager.memory: a peak that covers the whole process.

The oracle is the allocation itself: a child that touches N MiB must report at least N MiB, and a
transient N MiB before the passes (standing for a load's working memory) must show in the run's
peak although the pass manager resets the kernel's mark at every pass.
"""
from __future__ import annotations

import sys
import textwrap

import pytest

import graphc
from graphc.bench.memory import measure_process, python_command
from graphc.errors import DataError
from graphc.passmanager import memory

MIB = 1 << 20
N_MIB = 300

# touch every page of N MiB (np.ones writes them all), then free it
ALLOCATE = f"import numpy as np; a = np.ones({N_MIB} * (1 << 20) // 8); del a"

# a small model and two passes; PassManager resets the kernel's mark before each pass
RUN_PASSES = textwrap.dedent(f"""
    import numpy as np, onnx, graphc
    from onnx import TensorProto, helper
    nodes = [helper.make_node("Identity", ["x"], ["t"]), helper.make_node("Relu", ["t"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    model = graphc.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    {ALLOCATE}
    run = graphc.PassManager("cleanup,fold-bn").run(model)
    print(run.peak_rss_bytes, max(r.peak_rss_bytes for r in run.records))
""")


def test_a_child_that_allocates_n_mib_reports_at_least_n_mib():
    idle = measure_process(python_command("-c", "import numpy")).check()
    busy = measure_process(python_command("-c", ALLOCATE)).check()
    assert busy.peak_bytes >= N_MIB * MIB
    assert idle.peak_bytes < N_MIB * MIB  # the figure is the child's, not the parent's or a constant
    assert busy.wall_s > 0 and busy.reported_peak_bytes is None  # graphc never imported


def test_a_child_of_a_big_parent_reports_its_own_peak_not_the_parents():
    """At exec the kernel folds the replaced memory's high-water mark into ru_maxrss: a child
    started straight from this process would report this process's peak."""
    import numpy as np

    held = np.ones(2 * N_MIB * MIB // 8)  # this process now holds (and has peaked at) 600 MiB
    try:
        idle = measure_process(python_command("-c", "pass")).check()
    finally:
        del held
    assert idle.peak_bytes < N_MIB * MIB


def test_the_whole_run_peak_includes_what_came_before_the_passes():
    """The kernel's own figure loses the transient (each pass resets it); graphc's does not."""
    result = measure_process(python_command("-c", RUN_PASSES)).check()
    run_peak, worst_pass = map(int, result.stdout.split())
    assert run_peak >= N_MIB * MIB
    assert worst_pass < N_MIB * MIB  # each pass alone never saw the transient
    assert result.reported_peak_bytes is not None and result.reported_peak_bytes >= N_MIB * MIB
    assert result.peak_bytes >= N_MIB * MIB


def test_a_script_child_gets_its_arguments_and_its_exit_code(tmp_path):
    script = tmp_path / "child.py"
    script.write_text("import sys\nprint(' '.join(sys.argv[1:]))\nsys.exit(3)\n")
    result = measure_process(python_command(str(script), "a", "b"))
    assert result.returncode == 3 and result.stdout.strip() == "a b"
    with pytest.raises(DataError, match="exited with 3"):
        result.check()


def test_a_child_past_its_timeout_is_killed():
    with pytest.raises(DataError, match="did not finish"):
        measure_process([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5)


def test_nested_blocks_keep_the_peak_an_inner_reset_erased():
    import numpy as np

    with memory.PeakRss() as outer:
        a = np.ones(128 * MIB // 8)
        del a
        with memory.PeakRss() as inner:  # resets the kernel's mark: the 128 MiB is gone from it
            pass
    assert outer.peak - inner.peak >= 100 * MIB or not memory.reset_peak()
    assert memory.process_peak_rss() >= outer.peak


def test_run_report_and_report_carry_the_whole_run_peak():
    from graphc.report import build_report
    from tiny_nets import conv_net

    model = graphc.load(conv_net())
    run = graphc.PassManager("fold-bn,cleanup").run(model)
    assert run.peak_rss_bytes >= max(r.peak_rss_bytes for r in run.records)
    assert run.peak_rss_bytes <= memory.process_peak_rss()
    report = build_report(input_path="m.onnx", output_path=None, run=run, before={}, after={})
    assert report["peak_rss_bytes"] == run.peak_rss_bytes
