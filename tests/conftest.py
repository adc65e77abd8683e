import onnx_graphsurgeon as gs
import pytest

from support import ppocr_model


@pytest.fixture(params=["det", "rec", "cls"])
def ppocr(request):
    """(kind, path) of each PP-OCR model; skipped if rapidocr-onnxruntime is not installed."""
    path = ppocr_model(request.param)
    if path is None:
        pytest.skip("rapidocr-onnxruntime is not installed")
    return request.param, path


@pytest.fixture
def node_comparisons(monkeypatch):
    """How often graphsurgeon's Node.__eq__ runs (list.remove and `in` scans call it per element)."""
    calls = [0]
    original = gs.Node.__eq__

    def counting(self, other):
        calls[0] += 1
        return original(self, other)
    monkeypatch.setattr(gs.Node, "__eq__", counting)
    return calls
