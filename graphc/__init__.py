"""graphc: an ONNX graph-rewriting compiler that makes models smaller and faster, and proves
it did no harm.

    import graphc
    model = graphc.load("model.onnx")
    report = graphc.PassManager("fold-bn,cleanup").run(model)
    graphc.save(model, "model.opt.onnx")
"""
from graphc.errors import GraphcError
from graphc.ir import Model, load, save
from graphc.passmanager import (
    Context,
    Pass,
    PassManager,
    PassResult,
    option,
    parse_pipeline,
    register_pass,
)
from graphc.passmanager.registry import add_pass_package
from graphc.version import __version__

# The built-in passes: imported on the first registry lookup, so the pass manager never imports
# the passes (they sit above it) and `import graphc` stays fast.
add_pass_package("graphc.passes")


def verify(reference, candidate, **kwargs):
    """Compare two models in onnxruntime; see :func:`graphc.verify.compare_models`."""
    from graphc.verify import compare_models  # lazy: onnxruntime loads only when verifying

    return compare_models(reference, candidate, **kwargs)


__all__ = ["__version__", "GraphcError", "Model", "load", "save", "Context", "Pass",
           "PassManager", "PassResult", "option", "parse_pipeline", "register_pass", "verify"]
