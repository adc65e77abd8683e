"""Kinds of ONNX ops and dtypes that several parts of graphc agree on (one definition each)."""
from __future__ import annotations

import numpy as np

#: ops whose cost is multiply-accumulates with a weight: they carry the MACs, are the anchors of
#: quantization and the sites that absorb per-channel affine maps.
LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")

#: floating-point dtypes a rewrite may compute in.
FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
