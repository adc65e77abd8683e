"""Pipeline text: parsing against the registry, canonical printing, and clear errors."""
from dataclasses import dataclass

import pytest

from graphc.errors import OptionError, PipelineError
from graphc.passmanager import Pass, PassResult, option, parse_pipeline
from graphc.passmanager import registry


@dataclass(frozen=True)
class _Opts:
    ratio: float = option(0.5, "fraction", min=0.0, max=1.0)
    round_to: int = option(8, "multiple", min=1)
    criterion: str = option("l1", "importance", choices=("l1", "l2", "fpgm"))
    ignore: tuple[str, ...] = option((), "patterns")
    enabled: bool = option(True, "switch")
    limit: int | None = option(None, "optional limit", min=0)


class _Sample(Pass):
    name = "sample"
    Options = _Opts

    def run(self, graph, ctx):
        return PassResult(False)


@pytest.fixture(autouse=True)
def sample_pass(monkeypatch):
    registry._load_builtins()
    monkeypatch.setitem(registry._REGISTRY, "sample", _Sample)


def test_parse_and_print_canonical():
    text = "cleanup,sample{ratio=0.25 criterion=l2 ignore=head.*,stem.*},fold-constants"
    pipeline = parse_pipeline(text)
    assert [s.name for s in pipeline.steps] == ["cleanup", "sample", "fold-constants"]
    opts = pipeline.steps[1].options
    assert opts.ratio == 0.25 and opts.criterion == "l2" and opts.ignore == ("head.*", "stem.*")
    assert opts.round_to == 8  # default kept
    assert pipeline.text() == text


def test_print_normalizes_order_spacing_and_values():
    pipeline = parse_pipeline("  sample{ enabled=no   round-to=16 ratio=1 } , cleanup ")
    assert pipeline.text() == "sample{ratio=1.0 round-to=16 enabled=false},cleanup"
    assert parse_pipeline(pipeline.text()) == pipeline


def test_optional_and_quoted_values():
    pipeline = parse_pipeline('sample{limit=none ignore="a b"}')
    assert pipeline.steps[0].options.limit is None
    assert pipeline.steps[0].options.ignore == ("a b",)
    assert parse_pipeline(pipeline.text()) == pipeline


def test_underscore_spelling_is_accepted():
    assert parse_pipeline("sample{round_to=4}").steps[0].options.round_to == 4


@pytest.mark.parametrize("text,error,match", [
    ("sampel", PipelineError, "did you mean 'sample'"),
    ("sample{ratoi=0.1}", OptionError, "did you mean 'ratio'"),
    ("sample{ratio=abc}", OptionError, "expected a number"),
    ("sample{ratio=1.5}", OptionError, "above the maximum"),
    ("sample{round-to=0}", OptionError, "below the minimum"),
    ("sample{round-to=2.5}", OptionError, "expected an integer"),
    ("sample{criterion=l3}", OptionError, "did you mean 'l1'|not one of"),
    ("sample{enabled=maybe}", OptionError, "true or false"),
    ("sample{ratio=0.1 ratio=0.2}", OptionError, "given twice"),
    ("sample{ratio=nan}", OptionError, "finite"),
    ("sample{ratio}", PipelineError, "expected '='"),
    ("sample{ratio=0.1", PipelineError, "expected '}'"),
    ("sample,,cleanup", PipelineError, "expected a pass name"),
    ("sample cleanup", PipelineError, "expected ','"),
    ("", PipelineError, "expected a pass name"),
    ("cleanup{x=1}", OptionError, "no option 'x'"),
])
def test_errors(text, error, match):
    with pytest.raises(error, match=match):
        parse_pipeline(text)


def test_error_is_one_line():
    with pytest.raises(PipelineError) as info:
        parse_pipeline("sample{ratio=0.1")
    assert "\n" not in str(info.value)
