"""Numeric verification: run a reference and a candidate model in onnxruntime on the same inputs,
compare their outputs, and optionally find the first intermediate tensor where they diverge.

    from graphc.verify import Tolerances, compare_models
    report = compare_models("model.onnx", "model.opt.onnx", input_shapes={"x": (1, 3, 224, 224)})
    report.passed, report.summary(), report.to_dict()

Modules: ``tolerances`` (the pass/fail rule: exact vs lossy), ``metrics`` (error metrics of two
arrays), ``running`` (the same metrics accumulated over samples), ``feeds`` (evaluation data),
``compare`` (:func:`compare_models`), ``localize`` (first divergence).
"""
from graphc.verify.compare import VerifyReport, compare_models, match_outputs
from graphc.verify.feeds import evaluation_data, open_model
from graphc.verify.localize import Localization, localize_divergence, shared_tensors
from graphc.verify.running import RunningMetrics, TensorMetrics
from graphc.verify.tolerances import Tolerances

#: per-output metrics (the name the API documents)
OutputMetrics = TensorMetrics

__all__ = [
    "Tolerances", "compare_models", "VerifyReport", "TensorMetrics", "OutputMetrics", "RunningMetrics",
    "Localization", "localize_divergence", "shared_tensors", "evaluation_data", "open_model",
    "match_outputs",
]
