import os

import onnx_graphsurgeon as gs
import pytest

from support import MODELS, ppocr_model

# placement=auto's cost table: the shipped one, so that no test times kernels or depends on this
# CPU (tests of the measured table pass their tables or timings explicitly)
os.environ.setdefault("GRAPHC_SPEED_MODEL", "builtin")


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


@pytest.fixture
def sweep_recipes(tmp_path) -> list[str]:
    """Two recipe files for `graphc sweep` tests, in tmp_path: exact (``fold-bn,cleanup``) and int8
    (``quant{placement=all}``), both calibrated on 4 samples of digits_calib.npz, no layer errors."""
    paths = []
    for name, pipeline in (("exact", "fold-bn,cleanup"), ("int8", "quant{placement=all}")):
        path = tmp_path / f"{name}.toml"
        path.write_text(f'pipeline = "{pipeline}"\n\n[data]\ncalibration = "{MODELS / "digits_calib.npz"}"\n'
                        'samples = 4\n\n[outputs]\nlayer_errors = false\n')
        paths.append(str(path))
    return paths


@pytest.fixture
def shard_calls(monkeypatch):
    """Calibration shards go to the executor whatever this machine's cores and the first shard's
    time; the number of shards each call to ``map_shards`` (ranges, channel maxima, moments) sent
    is recorded, in call order."""
    import graphc.calib.shards as shards_module  # lazy: only the shard tests need it

    monkeypatch.setattr(shards_module, "usable_cores", lambda: 8)
    monkeypatch.setattr(shards_module, "MIN_PARALLEL_SECONDS", 0.0)
    calls = []
    real = shards_module.map_shards

    def spy(fn, shared, shards, desc):
        calls.append(len(shards))
        return real(fn, shared, shards, desc)

    # every statistic sends its shards through ShardedJob.run, which calls this module's map_shards
    monkeypatch.setattr(shards_module, "map_shards", spy)
    return calls
