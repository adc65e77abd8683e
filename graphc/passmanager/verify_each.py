"""``--verify-each`` as an instrument: run the model before and after every pass in onnxruntime on
the same inputs. An exact pass (:attr:`Pass.exact`) outside tolerance raises
:class:`VerificationError`; a lossy one has its error recorded in ``PassRecord.verify``.

The pass manager installs it when asked (``PassManager(verify_each=True)``); importing this module
loads onnxruntime, which the pass manager otherwise never needs.
"""
from __future__ import annotations

from typing import Any

from graphc.errors import VerificationError
from graphc.ir.model import Model
from graphc.passmanager.base import Pass
from graphc.passmanager.context import Context
from graphc.passmanager.manager import Instrument, PassRecord
from graphc.verify import Tolerances, compare_models


class VerifyEach(Instrument):
    """Compares the model before and after each pass that modified it."""

    keeps_original = True  # the pass manager keeps ``ctx.original``, as it always did with verify-each

    def __init__(self, tolerances: Tolerances | None = None, data: Any = None, seed: int = 0):
        self.tolerances = tolerances or Tolerances()
        #: inputs when they should not be calibration data (e.g. random feeds of given shapes,
        #: without handing random data to passes); default: ``ctx.data``.
        self.data = data
        self.seed = seed
        self._before: Model | None = None

    def before_pass(self, step: Pass, ctx: Context) -> None:
        self._before = ctx.model.copy()

    def after_pass(self, step: Pass, ctx: Context, record: PassRecord) -> None:
        before, self._before = self._before, None
        if before is None or not record.modified:
            return
        data = self.data if self.data is not None else ctx.data
        report = compare_models(before, ctx.model, data=data, tolerances=self.tolerances,
                                input_shapes=ctx.input_shapes, seed=self.seed)
        if step.exact and not report.passed:
            raise VerificationError(f"pass '{step.name}' changed the outputs: {report.summary()}")
        record.verify = report
