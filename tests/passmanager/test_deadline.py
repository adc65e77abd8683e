"""max_seconds: a pass over its wall-clock limit stops with a typed error naming it."""
import signal
import threading
import time

import pytest
from onnx import TensorProto, helper

import graphc
from graphc.errors import PassError, PassTimeoutError
from graphc.passes.cleanup import Cleanup
from graphc.passmanager import Pass, PassManager, PassResult
from graphc.passmanager.deadline import Deadline, DeadlineReached
from support import make_model


def _model():
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Identity", ["a"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    return graphc.load(make_model(graph))


class _Spins(Pass):
    """Loops in Python and swallows every Exception, as a careless pass might."""
    name = "t-spins"

    def run(self, graph, ctx):
        end = time.monotonic() + 30
        while time.monotonic() < end:
            try:
                sum(range(1000))
            except Exception:  # must not hide the deadline
                pass
        return PassResult(False)


def test_pass_over_the_limit_is_stopped_and_named():
    handler = signal.getsignal(signal.SIGALRM)
    start = time.monotonic()
    with pytest.raises(PassTimeoutError) as info:
        PassManager([Cleanup(), _Spins()], max_seconds=0.3).run(_model())
    assert time.monotonic() - start < 10  # the pass would spin for 30 s
    assert info.value.pass_name == "t-spins"
    assert isinstance(info.value, PassError)
    message = str(info.value)
    assert message.startswith("pass 't-spins' exceeded --max-seconds 0.3 (stopped after ") and \
        message.endswith(" s) (after cleanup)")
    assert signal.getsignal(signal.SIGALRM) is handler  # restored
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_passes_within_the_limit_run_normally():
    report = PassManager("cleanup", max_seconds=60).run(_model())
    assert report.records[0].stats == {"identity_removed": 1}
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_limit_checked_on_return_off_the_main_thread():
    caught = []

    def body():
        try:
            with Deadline(0.01):
                time.sleep(0.1)
        except DeadlineReached:
            caught.append(True)
    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert caught == [True]


def test_max_seconds_must_be_positive():
    with pytest.raises(ValueError):
        PassManager("cleanup", max_seconds=0)
