"""True float16 evaluation: what a float16 model computes on a GPU, on this CPU.

onnxruntime's CPU provider runs most float16 ops in float32 (it inserts Casts), so a model
that overflows on a GPU looks fine on a CPU. This evaluator runs the model with
``onnx.reference`` instead, where every float16 op really produces float16: each result is
rounded to float16 (and overflows to inf beyond 65504). Where GPU kernels accumulate in
float32, so does it: MatMul, Gemm, Conv and the reductions, Softmax and BatchNormalization
compute in float32 and round their outputs (onnx.reference alone would accumulate in
float16, harsher than any GPU); LayerNormalization and RMSNormalization compute their
statistics in their ``stash_type`` (onnx.reference alone ignores it), and so does
GroupNormalization (opset 21; its function body casts to it). InstanceNormalization and
GroupNormalization-18 carry no ``stash_type``: the spec computes their statistics in the
input's type, and so does this evaluator (onnx.reference's own kernels: the variance's sum
of squares is accumulated in float16), since nothing in the model asks a runtime for more.
:data:`SEMANTICS` says this in one sentence for reports.

Every run also measures the model's headroom (:mod:`svsurgery.parity.headroom`): how far
each value computed in float16 is from float16's range, on the inputs given.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun
from onnx.reference.ops import load_op
from onnx.reference.ops.op_loop import Loop as _ReferenceLoop

from svsurgery import patch
from svsurgery.errors import CheckFailedError
from svsurgery.model_io import to_proto
from svsurgery.parity.headroom import Headroom, measure

__all__ = ["SEMANTICS", "Float16Evaluator"]

SEMANTICS = (
    "true float16 (onnx.reference): every float16 result rounded to float16, inf beyond 65504; "
    "MatMul/Gemm/Conv, reductions, Softmax and BatchNormalization accumulate in float32 as GPU kernels do; "
    "LayerNormalization/RMSNormalization/GroupNormalization statistics in their stash_type; "
    "InstanceNormalization (no stash_type) as the spec states it: statistics in float16"
)

# ops whose GPU kernels accumulate or compute internally in float32, rounding only the result
_FLOAT32_INSIDE = (
    "MatMul",
    "Gemm",
    "Conv",
    "ConvTranspose",
    "Einsum",
    "ReduceMean",
    "ReduceSum",
    "ReduceSumSquare",
    "ReduceL2",
    "ReduceL1",
    "ReduceLogSumExp",
    "Softmax",
    "LogSoftmax",
    "BatchNormalization",
    "LayerNormalization",
    "RMSNormalization",
)
_STASHED = frozenset({"LayerNormalization", "RMSNormalization"})  # statistics in their stash_type (1: float32)


def _widen(value):
    return value.astype(np.float32) if isinstance(value, np.ndarray) and value.dtype == np.float16 else value


def _accumulating_in_float32(op_type: str) -> type[OpRun]:
    """An onnx.reference op that runs the standard implementation on float32 copies of its
    float16 inputs and rounds the float32 results back to float16."""

    def __init__(self, onnx_node, run_params, schema=None):
        OpRun.__init__(self, onnx_node, run_params, schema)
        standard = load_op("", op_type, run_params["opsets"][""], evaluator_cls=run_params["evaluator_cls"])
        self._standard = standard(onnx_node, run_params)

    def run(self, *inputs, **context):
        low = any(isinstance(x, np.ndarray) and x.dtype == np.float16 for x in inputs)
        stash = self._standard.onnx_node.attribute
        if op_type in _STASHED and any(a.name == "stash_type" and a.i != 1 for a in stash):
            low = False  # statistics asked for in another type: leave them to the standard implementation
        if not low:
            return self._standard.run(*inputs, **context)
        outputs = self._standard.run(*(_widen(x) for x in inputs), **context)
        return tuple(
            o.astype(np.float16) if isinstance(o, np.ndarray) and o.dtype == np.float32 else o for o in outputs
        )

    def _run(self, *inputs, **attributes):  # never called: run() delegates whole
        raise NotImplementedError

    return type(op_type, (OpRun,), {"op_domain": "", "__init__": __init__, "run": run, "_run": _run})


class _StackingLoop(_ReferenceLoop):
    """onnx.reference's Loop with scan outputs stacked on a new first axis, as the Loop schema's
    shape inference and onnxruntime give them. onnx.reference (1.23) joins them with np.vstack,
    which stacks 1-D values but concatenates values of rank 2 or more along their first axis
    (svsurgery's fused front end scans [B, frames, 80] blocks); with no iteration it fails."""

    op_domain = ""

    def __init__(self, onnx_node, run_params) -> None:
        super().__init__(onnx_node, run_params)
        run_body = getattr(self, "_run_body")  # noqa: B009 - OpRun sets it at run time for the "body" attribute
        scans = self.K

        def stacked(context, attributes=None, bindings=None):
            outputs = list(run_body(context, attributes=attributes, bindings=bindings))
            if scans:
                outputs[-scans:] = [np.expand_dims(value, 0) for value in outputs[-scans:]]
            return outputs

        setattr(self, "_run_body", stacked)  # noqa: B010 - replaces what OpRun set

    def _run(self, M, cond, *args, **kwargs):
        if self.K and ((M is not None and int(M) <= 0) or (cond is not None and not bool(cond))):
            body = next(a.g for a in self.onnx_node.attribute if a.name == "body")
            empty = [
                np.empty((0,), dtype=onnx.helper.tensor_dtype_to_np_dtype(o.type.tensor_type.elem_type))
                for o in body.output[-self.K :]
            ]
            return (*args[: self.N], *empty)  # no iteration: the initial values and empty scan outputs
        return super()._run(M, cond, *args, **kwargs)


_StackingLoop.__name__ = "Loop"  # onnx.reference takes an op type's override by class name
_OVERRIDES: list[type[OpRun]] = [*(_accumulating_in_float32(op) for op in _FLOAT32_INSIDE), _StackingLoop]


class Float16Evaluator:
    """Runs a model (float16 or mixed) with true float16 arithmetic; outputs by name.

    After each run, :attr:`headroom` holds the model's headroom on those inputs
    (:class:`svsurgery.parity.headroom.Headroom`), measured on the values the run computed.
    """

    semantics = SEMANTICS

    def __init__(self, model: ir.Model, *, measure_headroom: bool = True) -> None:
        self._inputs = {v.name: v.dtype for v in model.graph.inputs}
        self._model = patch.clone(model)  # onnx.reference runs nodes in order, which the clone guarantees
        self._proto = to_proto(self._model, inline_external_data=True)
        self._evaluator = ReferenceEvaluator(self._proto, new_ops=_OVERRIDES)
        self.output_names = list(self._evaluator.output_names)
        self.measure_headroom = measure_headroom
        self.headroom: Headroom | None = None

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The graph outputs by name."""
        values = self._run(feeds)
        return {name: values[name] for name in self.output_names}

    def run_intermediates(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every value the graph computes (inputs and weights included), by name."""
        return self._run(feeds)

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        typed = {}
        for name, value in feeds.items():
            dtype = self._inputs.get(name)
            array = np.asarray(value)
            typed[name] = array.astype(dtype.numpy()) if dtype is not None and dtype.is_floating_point() else array
        with np.errstate(all="ignore"):  # overflow to inf and NaN are what is being looked for
            try:
                values = dict(self._evaluator.run(None, typed, intermediate=True))
            except Exception as error:  # onnx.reference's own limits: one line, not its traceback
                first = str(error).strip().splitlines()[0] if str(error).strip() else ""
                raise CheckFailedError(
                    f"the true-float16 evaluation (onnx.reference) cannot run this model: "
                    f"{type(error).__name__}: {first}"
                ) from error
        if self.measure_headroom:
            self.headroom = measure(self._model, values, opsets=self._proto.opset_import)
        return values
