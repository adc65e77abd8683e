"""graphc.calib: calibration data sources and activation range calibration.

``calibrate(model, data, tensors, method)`` returns ``{tensor name: Range(lo, hi)}``; see
:mod:`graphc.calib.calibrate`. Data sources are in :mod:`graphc.calib.data`.
"""
from graphc.calib.calibrate import Range, calibrate

__all__ = ["Range", "calibrate"]
