"""graphc: an ONNX graph-rewriting compiler that makes models smaller and faster, and proves
it did no harm.

    import graphc
    model = graphc.load("model.onnx")
    report = graphc.PassManager("fold-bn,cleanup").run(model)
    graphc.save(model, "model.opt.onnx")
"""
__version__ = "0.1.0"

from graphc.errors import GraphcError  # noqa: E402
from graphc.ir import Model, load, save  # noqa: E402
from graphc.passmanager import (  # noqa: E402
    Context,
    Pass,
    PassManager,
    PassResult,
    option,
    parse_pipeline,
    register_pass,
)


def verify(reference, candidate, **kwargs):
    """Compare two models in onnxruntime; see :func:`graphc.verify.compare_models`."""
    from graphc.verify import compare_models

    return compare_models(reference, candidate, **kwargs)


__all__ = ["__version__", "GraphcError", "Model", "load", "save", "Context", "Pass",
           "PassManager", "PassResult", "option", "parse_pipeline", "register_pass", "verify"]
