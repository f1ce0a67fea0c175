"""Verifiers: the validity gate and parity against expected outputs, for any candidate model.

The engine asks one question of every candidate a rule family produces: does it still
load (``onnx.checker`` with shape inference, an onnxruntime session) and how far are its
outputs from the expected ones? :class:`Verifier` answers it with onnxruntime's CPU
provider; :class:`Float16Verifier` converts the candidate to float16 first and evaluates
it in true float16 arithmetic, where onnxruntime's CPU kernels would hide overflow.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir

from svsurgery.model_io import to_proto, validate, validate_with_proto
from svsurgery.parity.float16 import SEMANTICS, Float16Evaluator
from svsurgery.parity.metrics import ParityResult, Tolerance, compare_outputs
from svsurgery.precision import convert_to_float16

__all__ = ["Float16Verifier", "Snapshot", "Verifier"]


class Verifier:
    """Validity gate + parity against the expected outputs, for any candidate model.

    Candidates run with onnxruntime's graph optimizations off: the graph as written, loaded
    in a third of the time on large graphs (the result a command writes is gated again, with
    default optimizations, when it is saved). ``last_proto`` is the self-contained proto of
    the last model verified, which the engine keeps as the snapshot it rolls back to
    instead of copying the model before every pass.
    """

    evaluation = "onnxruntime CPU session, graph optimizations off (the graph as written)"

    def __init__(self, expected: dict, feeds: dict, tolerance: Tolerance, label: str) -> None:
        self.expected = expected
        self.feeds = feeds
        self.tolerance = tolerance
        self.label = label
        self.last_proto: onnx.ModelProto | None = None

    def __call__(self, model: ir.Model) -> ParityResult:
        """Parity of ``model``; raises CheckFailedError when it fails the validity gate."""
        self.last_proto = None
        session, self.last_proto = validate_with_proto(model, self.label, optimize=False)
        names = [o.name for o in session.get_outputs()]
        wanted = [n for n in self.expected if n in names]
        outputs = dict(zip(wanted, session.run(wanted, self.feeds)))
        return compare_outputs(outputs, self.expected, self.tolerance)


class Float16Verifier(Verifier):
    """The candidate converted to float16 (its marked regions in float32), gated, and evaluated
    with true float16 arithmetic (onnxruntime's CPU provider would hide overflow)."""

    def __init__(self, expected: dict, feeds: dict, tolerance: Tolerance, label: str, keep_io_types: bool) -> None:
        super().__init__(expected, feeds, tolerance, label)
        self.keep_io_types = keep_io_types
        self.evaluation = f"converted to float16, evaluated in {SEMANTICS}"

    def __call__(self, model: ir.Model) -> ParityResult:
        self.last_proto = None  # what is checked is the conversion, not the model given
        converted, _ = convert_to_float16(model, keep_io_types=self.keep_io_types)
        validate(converted, self.label, optimize=False)  # the float16 model is what gets shipped: it must load
        evaluator = Float16Evaluator(converted)
        outputs = evaluator.run(self.feeds)
        self.headroom = evaluator.headroom  # measured on the same run (svsurgery.parity.headroom)
        return compare_outputs({n: outputs[n] for n in self.expected if n in outputs}, self.expected, self.tolerance)


class Snapshot:
    """An accepted state of a model to roll back to, without copying the model up front.

    It holds the proto the state's verification already serialized (or, when there is none,
    one serialized now, external data left in its files); :meth:`restore` rebuilds the model
    only when a pass is rolled back. ``meta`` (where the model came from) carries over.
    """

    def __init__(self, model: ir.Model, proto: onnx.ModelProto | None = None) -> None:
        self.proto = proto if proto is not None else to_proto(model)
        self.meta = dict(model.meta)
        # where external data left in its files is found (a proto does not say: its locations are relative)
        external = [
            v.const_value for v in model.graph.initializers.values() if isinstance(v.const_value, ir.ExternalTensor)
        ]
        self.base_dir = external[0].base_dir if external and proto is None else None

    def restore(self) -> ir.Model:
        restored = ir.serde.deserialize_model(self.proto)
        restored.meta.update(self.meta)
        if self.base_dir:
            ir.external_data.set_base_dir(restored.graph, self.base_dir)
        return restored
