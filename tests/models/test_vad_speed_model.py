"""The trained VAD (vad_trained_if) under the default ``-p quant --data`` with a measured cost
table: the table measured on an AVX512-VNNI AMD EPYC with onnxruntime 1.32 (committed as
speed_model_epyc.json, so nothing is timed here) puts the branch Conv1d on int8, where the
builtin table (fitted on PP-OCR's Conv2d) keeps every one float; the speech decisions stay
unchanged on >= 99.5% of held-out frames."""
import json
from pathlib import Path

import numpy as np
import pytest

import graphc
import graphc.passes.quant.speed_model as speed_model
from graphc.bench.cost_table import MeasuredTable, TableKey
from graphc.calib.data import open_data
from graphc.ir import walk_graphs
from graphc.runtime import create_session, run_session
from test_vad_trained import CORPUS, SIGNALS, SOURCE

TABLE = json.loads((Path(__file__).parent / "speed_model_epyc.json").read_text())


def _int8_branch_convs(model) -> int:
    return sum(1 for path, scope in walk_graphs(model.graph) if path for n in scope.nodes
               if n.op == "Conv" and n.inputs[1].inputs and n.inputs[1].inputs[0].op == "DequantizeLinear")


def _quant(pipeline):
    model = graphc.load(SOURCE)
    report = graphc.PassManager(pipeline, data=open_data(CORPUS / "vad_trained_if.npz", model)).run(model)
    return model, report.records[-1]


@pytest.fixture(scope="module")
def measured():
    key = TableKey(**{**TABLE["key"], "cpu_flags": tuple(TABLE["key"]["cpu_flags"])})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(speed_model, "measured_table", lambda: MeasuredTable(key, TABLE["table"], None, False))
        return _quant("quant{speed-model=measured}")


def test_builtin_table_keeps_the_branch_convs_float():
    model, record = _quant("quant{speed-model=builtin}")
    assert _int8_branch_convs(model) == 0 and record.stats["speed_model"].startswith("builtin")


def test_measured_table_puts_the_branch_convs_on_int8(measured):
    model, record = measured
    assert _int8_branch_convs(model) >= 8  # 10 on the machine it was measured on
    assert record.stats["speed_model"].startswith("measured on AMD EPYC")
    assert record.stats["speed_model_chosen_us"] < record.stats["speed_model_float_us"]


def test_measured_placement_keeps_995_of_speech_decisions(measured):
    model, _ = measured
    ref, cand = create_session(SOURCE, threads=1), create_session(model, threads=1)
    for sr in SIGNALS.RATES:
        audio, _labels = SIGNALS.heldout(sr)
        feed = {"audio": audio, "sr": np.array(sr, np.int64)}
        agreement = SIGNALS.frame_agreement(run_session(ref, feed)[0], run_session(cand, feed)[0])
        assert agreement >= 0.995, (sr, agreement)
