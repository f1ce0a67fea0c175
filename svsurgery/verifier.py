"""Verifiers: the validity gate and parity against expected outputs, for any candidate model.

The engine asks one question of every candidate a rule family produces: does it still
load (``onnx.checker`` with shape inference, an onnxruntime session) and how far are its
outputs from the expected ones? :class:`Verifier` answers it with onnxruntime's CPU
provider; :class:`Float16Verifier` converts the candidate to float16 first and evaluates
it in true float16 arithmetic, where onnxruntime's CPU kernels would hide overflow.
"""

from __future__ import annotations

import onnx_ir as ir

from svsurgery.io import validate
from svsurgery.parity.metrics import ParityResult, Tolerance, compare_outputs
from svsurgery.precision import convert_to_float16

__all__ = ["Float16Verifier", "Verifier"]


class Verifier:
    """Validity gate + parity against the expected outputs, for any candidate model."""

    evaluation = "onnxruntime CPU session, default graph optimizations"

    def __init__(self, expected: dict, feeds: dict, tolerance: Tolerance, label: str) -> None:
        self.expected = expected
        self.feeds = feeds
        self.tolerance = tolerance
        self.label = label

    def __call__(self, model: ir.Model) -> ParityResult:
        """Parity of ``model``; raises CheckFailedError when it fails the validity gate."""
        session = validate(model, self.label)
        names = [o.name for o in session.get_outputs()]
        wanted = [n for n in self.expected if n in names]
        outputs = dict(zip(wanted, session.run(wanted, self.feeds)))
        return compare_outputs(outputs, self.expected, self.tolerance)


class Float16Verifier(Verifier):
    """The candidate converted to float16 (its marked regions in float32), gated, and evaluated
    with true float16 arithmetic (onnxruntime's CPU provider would hide overflow)."""

    def __init__(self, expected: dict, feeds: dict, tolerance: Tolerance, label: str, keep_io_types: bool) -> None:
        from svsurgery.parity.float16 import SEMANTICS

        super().__init__(expected, feeds, tolerance, label)
        self.keep_io_types = keep_io_types
        self.evaluation = f"converted to float16, evaluated in {SEMANTICS}"

    def __call__(self, model: ir.Model) -> ParityResult:
        from svsurgery.parity.float16 import Float16Evaluator

        converted, _ = convert_to_float16(model, keep_io_types=self.keep_io_types)
        validate(converted, self.label)  # the float16 model is what gets shipped: it must load
        outputs = Float16Evaluator(converted).run(self.feeds)
        return compare_outputs({n: outputs[n] for n in self.expected if n in outputs}, self.expected, self.tolerance)
