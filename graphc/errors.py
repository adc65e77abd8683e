"""Typed errors. The CLI maps each to an exit code and a one-line message.

Exit codes: 0 ok, 1 verification or gate failed, 2 bad input or usage.
"""
from __future__ import annotations


class GraphcError(Exception):
    """Base of every error graphc raises on purpose. ``exit_code`` is what the CLI returns."""

    exit_code = 2


class InputError(GraphcError):
    """The input file is missing, unreadable, or not an ONNX model."""


class ModelError(GraphcError):
    """The model is ONNX but structurally invalid (cycle, dangling input, ...)."""


class UnsafeModelError(ModelError):
    """The model asks for something graphc refuses (external data outside its folder)."""


class OutputError(GraphcError):
    """The output cannot be written where asked, or would overwrite the input."""


class UnsafeOutputError(OutputError):
    """An output would write over or remove what the run reads (the input model, its external
    data), or over another output of the same run (:mod:`graphc.ir.output_safety`)."""


class PipelineError(GraphcError):
    """The pipeline text does not parse, or names an unknown pass."""


class OptionError(PipelineError):
    """A pass option is unknown, mistyped or out of range."""


class RecipeError(GraphcError):
    """A recipe file does not parse, has an unknown key, or a value of the wrong type or range."""


class DataError(GraphcError):
    """Calibration or evaluation data is missing, unreadable, or does not match the model."""


class ExecutorError(GraphcError):
    """The executor cannot be used: an unknown name, Ray not installed, a cluster not reached."""


class MetricError(GraphcError):
    """The user's metric (``--metric``): a bad spec, an import that fails, not callable, it raised,
    or it returned something that is not a finite number."""


class PassError(GraphcError):
    """A pass failed on a node; the message names the pass and the node."""

    def __init__(self, message: str, *, pass_name: str | None = None, node: str | None = None):
        self.pass_name = pass_name
        self.node = node
        super().__init__(message)


class StructureError(PassError):
    """A pass left the graph structurally invalid (caught by the post-pass check)."""


class PassTimeoutError(PassError):
    """A pass ran longer than its wall-clock limit (``max_seconds``, ``--max-seconds``)."""


class VerificationError(GraphcError):
    """Numeric verification failed: the candidate's outputs are outside tolerance."""

    exit_code = 1


