import pytest

from support import ppocr_model


@pytest.fixture(params=["det", "rec", "cls"])
def ppocr(request):
    """(kind, path) of each PP-OCR model; skipped if rapidocr-onnxruntime is not installed."""
    path = ppocr_model(request.param)
    if path is None:
        pytest.skip("rapidocr-onnxruntime is not installed")
    return request.param, path
