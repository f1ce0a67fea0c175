"""Every rule family reaches every graph of a model: the main graph, If/Loop/Scan bodies,
model-local functions and the bodies inside those functions (issue 16, §3).

One model per family carries the family's pattern six times, once in each place, each copy
reading a float tensor [2, 4, 16] and writing one of the same shape. The family is applied
once, with the options it needs (float16 precision, which the precision families act on),
and every place must have changed; the result must still pass the validity gate. Each
model comes twice: untyped, and typed the way exporters leave models (ONNX shape inference
over the main graph and its bodies, function bodies untyped), so a family that asks for
types only where its own walk looks finds the function bodies untyped.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import svsurgery
from svsurgery.precision import kept_in_float32
from svsurgery.rules import CATALOG
from svsurgery.rules.base import ApplyOptions, graph_fingerprint
from svsurgery.summary import summarize

DIM, STEPS, BATCH = 16, 4, 2
FUNCTION = ("svs.test", "Pattern")
PLACES = ("main graph", "If branch", "Loop body", "Scan body", "function", "If branch in a function")

Nodes = list[onnx.NodeProto]


def _constant(name: str, value, dtype=np.float32) -> onnx.NodeProto:
    """A Constant node (functions cannot hold initializers, so every place uses these)."""
    array = np.asarray(value, dtype)
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array, name), name=f"{name}/Constant")


# ----------------------------------------------------------------------------- patterns: x -> out, names under p


def _reduce_mean(source: str, target: str, name: str, opset: int) -> Nodes:
    """ReduceMean over the last axis, axes as an attribute (< 18) or an input (>= 18)."""
    if opset < 18:
        return [helper.make_node("ReduceMean", [source], [target], axes=[-1], keepdims=1, name=name)]
    return [
        _constant(f"{name}/axes", [-1], np.int64),
        helper.make_node("ReduceMean", [source, f"{name}/axes"], [target], keepdims=1, name=name),
    ]


def _layer_norm(x: str, out: str, p: str, opset: int) -> Nodes:
    return [
        *_reduce_mean(x, f"{p}/mean", f"{p}/ReduceMean", opset),
        helper.make_node("Sub", [x, f"{p}/mean"], [f"{p}/d"], name=f"{p}/Sub"),
        _constant(f"{p}/two", 2.0),
        helper.make_node("Pow", [f"{p}/d", f"{p}/two"], [f"{p}/sq"], name=f"{p}/Pow"),
        *_reduce_mean(f"{p}/sq", f"{p}/var", f"{p}/ReduceMean_1", opset),
        _constant(f"{p}/eps", 1e-5),
        helper.make_node("Add", [f"{p}/var", f"{p}/eps"], [f"{p}/shifted"], name=f"{p}/Add"),
        helper.make_node("Sqrt", [f"{p}/shifted"], [f"{p}/std"], name=f"{p}/Sqrt"),
        helper.make_node("Div", [f"{p}/d", f"{p}/std"], [out], name=f"{p}/Div"),
    ]


def _rms_norm(x: str, out: str, p: str, opset: int) -> Nodes:
    """x / Sqrt(mean(x^2) + eps) * w (the scale is what the opset-23 fusion needs)."""
    return [
        _constant(f"{p}/two", 2.0),
        helper.make_node("Pow", [x, f"{p}/two"], [f"{p}/sq"], name=f"{p}/Pow"),
        *_reduce_mean(f"{p}/sq", f"{p}/ms", f"{p}/ReduceMean", opset),
        _constant(f"{p}/eps", 1e-6),
        helper.make_node("Add", [f"{p}/ms", f"{p}/eps"], [f"{p}/shifted"], name=f"{p}/Add"),
        helper.make_node("Sqrt", [f"{p}/shifted"], [f"{p}/rms"], name=f"{p}/Sqrt"),
        helper.make_node("Div", [x, f"{p}/rms"], [f"{p}/normalized"], name=f"{p}/Div"),
        _constant(f"{p}/w", np.linspace(0.5, 1.5, DIM)),
        helper.make_node("Mul", [f"{p}/normalized", f"{p}/w"], [out], name=f"{p}/Mul"),
    ]


def _identity_cast(x: str, out: str, p: str, opset: int) -> Nodes:
    """Of a value computed in the place, so the place itself must be typed (not only its inputs)."""
    return [
        helper.make_node("Neg", [x], [f"{p}/neg"], name=f"{p}/Neg"),
        helper.make_node("Cast", [f"{p}/neg"], [f"{p}/cast"], to=TensorProto.FLOAT, name=f"{p}/Cast"),
        helper.make_node("Relu", [f"{p}/cast"], [out], name=f"{p}/Relu"),
    ]


def _lossy_round_trip(x: str, out: str, p: str, opset: int) -> Nodes:
    """Of a value computed in the place, as the identity cast."""
    return [
        helper.make_node("Neg", [x], [f"{p}/neg"], name=f"{p}/Neg"),
        helper.make_node("Cast", [f"{p}/neg"], [f"{p}/half"], to=TensorProto.FLOAT16, name=f"{p}/Cast"),
        helper.make_node("Cast", [f"{p}/half"], [f"{p}/back"], to=TensorProto.FLOAT, name=f"{p}/Cast_1"),
        helper.make_node("Relu", [f"{p}/back"], [out], name=f"{p}/Relu"),
    ]


def _attention(x: str, out: str, p: str, opset: int) -> Nodes:
    """scores = x W; Where(scores > 0, -inf, scores) -> Softmax -> x' = p V (the mask-fill and softmax pattern)."""
    rng = np.random.default_rng(0)
    return [
        _constant(f"{p}/W", rng.standard_normal((DIM, STEPS))),
        helper.make_node("MatMul", [x, f"{p}/W"], [f"{p}/scores"], name=f"{p}/MatMul"),
        _constant(f"{p}/zero", 0.0),
        helper.make_node("Greater", [f"{p}/scores", f"{p}/zero"], [f"{p}/mask"], name=f"{p}/Greater"),
        _constant(f"{p}/fill", -np.inf),
        helper.make_node("Where", [f"{p}/mask", f"{p}/fill", f"{p}/scores"], [f"{p}/masked"], name=f"{p}/Where"),
        helper.make_node("Softmax", [f"{p}/masked"], [f"{p}/weights"], axis=-1, name=f"{p}/Softmax"),
        _constant(f"{p}/V", rng.standard_normal((STEPS, DIM))),
        helper.make_node("MatMul", [f"{p}/weights", f"{p}/V"], [out], name=f"{p}/MatMul_1"),
    ]


def _positional(x: str, out: str, p: str, opset: int) -> Nodes:
    """x + Sin(Range(0, T) * inv_timescales), T from x's shape."""
    return [
        helper.make_node("Shape", [x], [f"{p}/shape"], name=f"{p}/Shape"),
        _constant(f"{p}/time_axis", -2, np.int64),
        helper.make_node("Gather", [f"{p}/shape", f"{p}/time_axis"], [f"{p}/steps"], name=f"{p}/Gather"),
        helper.make_node("Cast", [f"{p}/steps"], [f"{p}/limit"], to=TensorProto.FLOAT, name=f"{p}/Cast"),
        _constant(f"{p}/start", 0.0),
        _constant(f"{p}/delta", 1.0),
        helper.make_node("Range", [f"{p}/start", f"{p}/limit", f"{p}/delta"], [f"{p}/positions"], name=f"{p}/Range"),
        _constant(f"{p}/column", [1], np.int64),
        helper.make_node("Unsqueeze", [f"{p}/positions", f"{p}/column"], [f"{p}/positions2"], name=f"{p}/Unsqueeze"),
        _constant(f"{p}/inv_timescales", 1e-4 ** (np.arange(DIM) / DIM)),
        helper.make_node("Mul", [f"{p}/positions2", f"{p}/inv_timescales"], [f"{p}/angles"], name=f"{p}/Mul"),
        helper.make_node("Sin", [f"{p}/angles"], [f"{p}/encoding"], name=f"{p}/Sin"),
        helper.make_node("Add", [x, f"{p}/encoding"], [out], name=f"{p}/Add"),
    ]


def _instance_norm(x: str, out: str, p: str, opset: int) -> Nodes:
    return [
        _constant(f"{p}/scale", np.ones(STEPS)),
        _constant(f"{p}/bias", np.zeros(STEPS)),
        helper.make_node(
            "InstanceNormalization", [x, f"{p}/scale", f"{p}/bias"], [out], name=f"{p}/InstanceNormalization"
        ),
    ]


def _gelu(x: str, out: str, p: str, opset: int) -> Nodes:
    """0.5 * x * (1 + erf(x / sqrt 2)) as torch's TorchScript exporter orders it."""
    return [
        _constant(f"{p}/sqrt2", math.sqrt(2)),
        helper.make_node("Div", [x, f"{p}/sqrt2"], [f"{p}/scaled"], name=f"{p}/Div"),
        helper.make_node("Erf", [f"{p}/scaled"], [f"{p}/erf"], name=f"{p}/Erf"),
        _constant(f"{p}/one", 1.0),
        helper.make_node("Add", [f"{p}/erf", f"{p}/one"], [f"{p}/shifted"], name=f"{p}/Add"),
        helper.make_node("Mul", [x, f"{p}/shifted"], [f"{p}/doubled"], name=f"{p}/Mul"),
        _constant(f"{p}/half", 0.5),
        helper.make_node("Mul", [f"{p}/doubled", f"{p}/half"], [out], name=f"{p}/Mul_1"),
    ]


def _spectral(x: str, out: str, p: str, opset: int) -> Nodes:
    """x read as 64-sample frames times a Hann-windowed 64-point Fourier basis (33 cos, 31 sin filters)."""
    taps = np.arange(64)
    window = np.hanning(64)
    cosines = [np.cos(2 * np.pi * k * taps / 64) * window for k in range(33)]
    sines = [np.sin(2 * np.pi * k * taps / 64) * window for k in range(1, 32)]
    return [
        _constant(f"{p}/frames_shape", [-1, 64], np.int64),
        helper.make_node("Reshape", [x, f"{p}/frames_shape"], [f"{p}/frames"], name=f"{p}/Reshape"),
        _constant(f"{p}/basis", np.stack(cosines + sines).T),
        helper.make_node("MatMul", [f"{p}/frames", f"{p}/basis"], [f"{p}/spectrum"], name=f"{p}/MatMul"),
        _constant(f"{p}/shape", [BATCH, STEPS, DIM], np.int64),
        helper.make_node("Reshape", [f"{p}/spectrum", f"{p}/shape"], [out], name=f"{p}/Reshape_1"),
    ]


# ----------------------------------------------------------------------------- what "changed" means, per place


def _ops(graph) -> list[str]:
    return [n.op_type for n in graph]  # the place's own nodes: bodies nested in it are other places


def _marked(op_type: str) -> Callable:
    return lambda graph, opset: any(n.op_type == op_type and kept_in_float32(n) for n in graph)


def _fused_layer_norm(graph, opset):
    dead = [n for n in graph if n.op_type == "Constant" and not n.outputs[0].uses()]  # epsilon, exponent
    return "LayerNormalization" in _ops(graph) and "ReduceMean" not in _ops(graph) and not dead


def _rms_norm_changed(graph, opset):
    if opset >= 23:
        return "RMSNormalization" in _ops(graph) and "Sqrt" not in _ops(graph)
    return _marked("ReduceMean")(graph, opset)


def _no_casts(graph, opset):
    return "Cast" not in _ops(graph)


def _finite_fills(graph, opset):
    fills = [n for n in graph if n.op_type == "Constant" and n.outputs[0].name.endswith("/fill")]
    return len(fills) == 1 and np.isfinite(fills[0].attributes["value"].value.numpy()).all()


def _safe_softmax(graph, opset):
    return _marked("Softmax")(graph, opset) and "IsNaN" in _ops(graph)


def _gelu_changed(graph, opset):
    if opset >= 20:
        return any(n.op_type == "Gelu" and kept_in_float32(n) for n in graph) and "Erf" not in _ops(graph)
    return _marked("Erf")(graph, opset)


# family id -> (pattern, changed(graph, opset), opsets to build the model at)
FAMILIES: dict[str, tuple[Callable, Callable, tuple[int, ...]]] = {
    "layer-norm": (_layer_norm, _fused_layer_norm, (17, 18)),
    "rms-norm": (_rms_norm, _rms_norm_changed, (17, 23)),  # float32 core below 23, RMSNormalization at 23
    "casts": (_identity_cast, _no_casts, (17,)),
    "mask-fill": (_attention, _finite_fills, (17,)),
    "softmax-fp32": (_attention, _safe_softmax, (17,)),
    "positional-fp32": (_positional, _marked("Sin"), (17,)),
    "spectral-fp32": (_spectral, _marked("MatMul"), (17,)),
    "instance-norm": (_instance_norm, _marked("InstanceNormalization"), (17,)),
    "gelu": (_gelu, _gelu_changed, (17, 20)),  # float32 chain below 20, Gelu at 20
    "lossy-casts": (_lossy_round_trip, _no_casts, (17,)),
}


# ----------------------------------------------------------------------------- the model


def _value(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _if(condition: str, x: str, out: str, p: str, pattern: Callable, opset: int) -> onnx.NodeProto:
    """If(condition) then pattern(x) else x."""
    then_branch = helper.make_graph(pattern(x, f"{p}/out", p, opset), f"{p}/then", [], [_value(f"{p}/out", None)])
    else_branch = helper.make_graph(
        [helper.make_node("Identity", [x], [f"{p}/same"], name=f"{p}/else/Identity")],
        f"{p}/else",
        [],
        [_value(f"{p}/same", None)],
    )
    return helper.make_node("If", [condition], [out], then_branch=then_branch, else_branch=else_branch, name=f"{p}/If")


def walks_model(pattern: Callable, opset: int) -> onnx.ModelProto:
    """``pattern`` once in each of :data:`PLACES`. Inputs x float [2, 4, 16] and c bool; one output per place."""
    shape = [BATCH, STEPS, DIM]
    loop_body = helper.make_graph(
        [
            *pattern("x", "/loop/out", "/loop", opset),
            helper.make_node("Identity", ["/loop/cond_in"], ["/loop/cond_out"], name="/loop/Identity"),
        ],
        "/loop/body",
        [
            helper.make_tensor_value_info("/loop/i", TensorProto.INT64, []),
            helper.make_tensor_value_info("/loop/cond_in", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("/loop/cond_out", TensorProto.BOOL, []), _value("/loop/out", None)],
    )  # a scan output of one iteration; the body reads x from the outer scope
    scan_body = helper.make_graph(
        pattern("/scan/x", "/scan/out", "/scan", opset),
        "/scan/body",
        [_value("/scan/x", shape)],
        [_value("/scan/out", None)],
    )  # scans x with one more axis in front, so its body sees [2, 4, 16] too
    function = helper.make_function(
        FUNCTION[0],
        FUNCTION[1],
        ["fx", "fc"],
        ["fy", "fy_if"],
        [*pattern("fx", "fy", "/fn", opset), _if("fc", "fx", "fy_if", "/fn_if", pattern, opset)],
        [helper.make_opsetid("", opset)],
    )
    nodes = [
        *pattern("x", "y_main", "/main", opset),
        _if("c", "x", "y_if", "/if", pattern, opset),
        _constant("/loop/trips", 1, np.int64),
        _constant("/loop/cond", True, np.bool_),
        helper.make_node("Loop", ["/loop/trips", "/loop/cond"], ["y_loop"], body=loop_body, name="/loop/Loop"),
        _constant("/scan/axis", [0], np.int64),
        helper.make_node("Unsqueeze", ["x", "/scan/axis"], ["/scan/xs"], name="/scan/Unsqueeze"),
        helper.make_node("Scan", ["/scan/xs"], ["y_scan"], body=scan_body, num_scan_inputs=1, name="/scan/Scan"),
        helper.make_node(FUNCTION[1], ["x", "c"], ["y_fn", "y_fn_if"], domain=FUNCTION[0], name="/fn/call"),
    ]
    graph = helper.make_graph(
        nodes,
        "walks",
        [_value("x", shape), helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [
            _value("y_main", shape),
            _value("y_if", shape),
            _value("y_loop", [1, *shape]),
            _value("y_scan", [1, *shape]),
            _value("y_fn", shape),
            _value("y_fn_if", shape),
        ],
    )
    return helper.make_model(
        graph,
        functions=[function],
        ir_version=10,
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(FUNCTION[0], 1)],
    )


def places(model: ir.Model) -> dict[str, ir.Graph | ir.Function]:
    def node(graph, op_type: str) -> ir.Node:
        (found,) = [n for n in graph if n.op_type == op_type]
        return found

    function = model.functions[(*FUNCTION, "")]
    return {
        "main graph": model.graph,
        "If branch": node(model.graph, "If").attributes["then_branch"].value,
        "Loop body": node(model.graph, "Loop").attributes["body"].value,
        "Scan body": node(model.graph, "Scan").attributes["body"].value,
        "function": function,
        "If branch in a function": node(function, "If").attributes["then_branch"].value,
    }


def _load(proto: onnx.ModelProto, typed: bool) -> ir.Model:
    if typed:  # value_info in the main graph and its bodies, none in function bodies (as exporters leave them)
        proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    return ir.serde.deserialize_model(proto)


# Places a family reaches but cannot change as it does elsewhere: what it does there instead, and why.
# The test requires exactly these places to fall back, and the fallback to happen.
KNOWN_GAPS: dict[tuple[str, int], tuple[set[str], Callable, str]] = {
    ("rms-norm", 23): (
        {"If branch", "Loop body", "If branch in a function"},
        _marked("ReduceMean"),  # not fused, but its core computes in float32 as below opset 23
        (
            "onnxscript's shipped RmsNormFusion binds x through OrValue([Cast(x), x]), and its matcher refuses an "
            "OrValue over a value captured from the enclosing graph (onnxscript/rewriter/_matcher.py: 'Pattern "
            "matches crossing graph boundaries are not supported'); these bodies read x from outside"
        ),
    ),
}

CASES = [(family.id, opset) for family in CATALOG for opset in FAMILIES.get(family.id, (None, None, (17,)))[2]]


def test_every_catalog_family_has_a_walks_pattern():
    assert sorted(FAMILIES) == sorted(family.id for family in CATALOG)


@pytest.mark.parametrize("typed", [False, True], ids=["untyped", "typed-except-functions"])
@pytest.mark.parametrize(("family_id", "opset"), CASES, ids=[f"{f}@{o}" for f, o in CASES])
def test_family_changes_every_graph_of_the_model(family_id, opset, typed):
    (family,) = [f for f in CATALOG if f.id == family_id]
    pattern, changed, _ = FAMILIES[family_id]
    proto = walks_model(pattern, opset)
    model = _load(proto, typed)
    svsurgery.validate(model)
    if typed:
        assert all(v.type is not None for v in places(model)["Scan body"].inputs)
        assert all(v.type is None for n in places(model)["function"] for v in n.outputs)
    assert not any(changed(graph, opset) for graph in places(model).values())

    applied = family.apply(model, ApplyOptions(precision=ir.DataType.FLOAT16))
    model = applied.model or model

    missed = [place for place, graph in places(model).items() if not changed(graph, opset)]
    gaps, fallback, why = KNOWN_GAPS.get((family_id, opset), (set(), None, ""))
    assert set(missed) == gaps, f"{family_id} left its pattern as it was in: {', '.join(missed) or 'none'} {why}"
    assert all(fallback(places(model)[place], opset) for place in gaps)
    assert applied.matches == len(PLACES)  # each place counted, once
    svsurgery.validate(model)


def test_inspect_counts_every_graph():
    """The op histogram, subgraph and initializer counts of ``svsurgery inspect`` cover every place."""
    summary = summarize(_load(walks_model(_gelu, 17), typed=False))
    assert summary.op_types["Erf"] == len(PLACES)
    assert summary.subgraph_count == 6  # then and else of two Ifs, the Loop body, the Scan body
    assert summary.function_count == 1


def test_a_patch_that_edits_a_body_inside_a_function_is_seen_to_change_the_model():
    """A user's patch is judged by the graph fingerprint; an edit anywhere must change it."""
    model = _load(walks_model(_gelu, 17), typed=False)
    before = graph_fingerprint(model)
    (erf,) = [n for n in places(model)["If branch in a function"] if n.op_type == "Erf"]
    erf.name = "/fn_if/renamed"
    assert graph_fingerprint(model) != before


def test_layer_norm_below_opset_17_keeps_the_functions_it_cannot_convert():
    """onnx's version converter drops model-local functions: raising the opset of a model that has
    some would leave calls to nothing. The family keeps the opset then, and says why."""
    model = _load(walks_model(_layer_norm, 16), typed=False)
    (family,) = [f for f in CATALOG if f.id == "layer-norm"]
    applied = family.apply(model, ApplyOptions())
    model = applied.model or model
    assert model.opset_imports[""] == 16 and (*FUNCTION, "") in model.functions
    assert any("drops model-local functions" in note for note in applied.notes), applied.notes
    svsurgery.validate(model)
