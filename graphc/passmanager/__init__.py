"""Pass infrastructure: Pass, Options, PassResult, registry, Context, pipelines, PassManager."""
from graphc.passmanager.base import Pass, PassResult
from graphc.passmanager.context import Context, ShapeAnalysis
from graphc.passmanager.manager import Instrument, PassManager, PassRecord, RunReport
from graphc.passmanager.options import NoOptions, OptionSpec, option, option_specs
from graphc.passmanager.pipeline import Pipeline, PassSpec, expand_preparation, parse_pipeline
from graphc.passmanager.registry import all_passes, get_pass, register_pass

__all__ = [
    "Pass", "PassResult", "Context", "ShapeAnalysis", "Instrument", "PassManager", "PassRecord",
    "RunReport", "NoOptions", "OptionSpec", "option", "option_specs", "Pipeline", "PassSpec",
    "parse_pipeline", "expand_preparation", "all_passes", "get_pass", "register_pass",
]
