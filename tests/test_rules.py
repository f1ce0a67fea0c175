"""The rule catalog on real exports and on every form exporters write: layer-norm, casts, lossy-casts."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from conftest import make_feeds
from graphs import LayerNormSpec, cast_chain_model, feeds_for, layer_norm_model

import svsurgery
from svsurgery import patch
from svsurgery.parity.references import Float64Reference
from svsurgery.runtime import run

MAX_ABS_VS_TORCH = 1e-5  # fp32 rewrite vs the torch module (acceptance of the rule-engine issue)


def _ops(model: ir.Model) -> collections.Counter:
    return collections.Counter(n.op_type for g in patch.all_graphs(model) for n in g)


def _identity_casts(model: ir.Model) -> list[str]:
    patch.infer_types(model)
    return [
        n.name
        for g in patch.all_graphs(model)
        for n in g
        if n.op_type == "Cast" and n.inputs[0].dtype is not None and n.inputs[0].dtype == n.attributes["to"].value
    ]


def _layer_norm_modules(module: torch.nn.Module) -> int:
    return sum(isinstance(m, torch.nn.LayerNorm) for m in module.modules())


def _status(report) -> dict[str, str]:
    return {s.family + (f"@{s.site}" if s.site else ""): s.status for s in report.steps}


# ----------------------------------------------------------------------------- the reference encoder


def test_funasr_export_every_layer_norm_fused_every_identity_cast_removed(legacy_path, torch_encoder, encoder_config):
    original = svsurgery.load(legacy_path)
    assert _identity_casts(original), "the FunASR-style export should have identity casts to remove"
    feeds = make_feeds(encoder_config, lengths=(37, 23))
    fixed, report = svsurgery.fix(original, torch_module=torch_encoder, example_inputs=feeds, tolerance="fp32-strict")

    assert _status(report) == {
        "layer-norm": "accepted",
        "casts": "accepted",
        "mask-fill": "accepted",  # -inf fills -> float32's minimum
        "rms-norm": "no match",
        "instance-norm": "no match",
        "gelu": "no match",  # no such patterns
        "softmax-fp32": "no match",
        "positional-fp32": "no match",
        "spectral-fp32": "no match",
        "lossy-casts": "no match",  # float32 model
    }
    ops = _ops(fixed)
    assert ops["LayerNormalization"] == _layer_norm_modules(torch_encoder)
    assert ops["ReduceMean"] == ops["Sqrt"] == ops["Pow"] == 0
    assert _identity_casts(fixed) == []
    assert fixed.opset_imports[""] == 17
    assert any("raised ai.onnx opset 14 -> 17" in note for s in report.steps for note in s.notes)
    # parity against torch, on the engine's inputs and on a batch it never saw
    assert report.passed and report.final.by_name()["ctc_logits"].max_abs <= MAX_ABS_VS_TORCH
    unseen = make_feeds(encoder_config, lengths=(5, 50, 12, 50), seed=4)
    with torch.no_grad():
        expected = torch_encoder(*(torch.from_numpy(unseen[n]) for n in unseen))[0].numpy()
    actual = run(fixed, unseen)["ctc_logits"]
    assert np.abs(actual.astype(np.float64) - expected).max() <= MAX_ABS_VS_TORCH
    svsurgery.validate(fixed)
    applied = {
        entry["id"]: entry["status"]
        for entry in __import__("json").loads(fixed.metadata_props["svsurgery.rules_applied"])
    }
    assert applied == _status(report)
    assert "svsurgery.parity" in fixed.metadata_props and "svsurgery.versions" in fixed.metadata_props
    # the model passed in is untouched
    assert _ops(original)["LayerNormalization"] == 0 and original.opset_imports[""] == 14


def test_dynamo_export_nothing_wrongly_changed(dynamo_path, torch_encoder, feeds):
    original = svsurgery.load(dynamo_path)
    fixed, report = svsurgery.fix(original, torch_module=torch_encoder, example_inputs=feeds)
    changed = {family: status for family, status in _status(report).items() if status != "no match"}
    assert changed == {"mask-fill": "accepted"}  # its -inf fills become float32's minimum; nothing else moves
    assert _ops(fixed) == _ops(svsurgery.load(dynamo_path))
    before, after = run(original, feeds, optimize=False), run(fixed, feeds, optimize=False)
    for name in before:
        np.testing.assert_array_equal(before[name], after[name])


# ----------------------------------------------------------------------------- layer-norm on every form


FORMS = [
    LayerNormSpec(),  # the legacy exporter's form: axes attribute, keepdims implicit, Pow, Div
    LayerNormSpec(opset=18, keepdims=1),  # axes as an input
    LayerNormSpec(opset=14, cast_front=True),  # FunASR: no-op Cast in front, below opset 17
    LayerNormSpec(axes="positive", square="mul", normalize="mul"),
    LayerNormSpec(normalize="mul-swapped", scale="first", bias="first", eps_first=True),
    LayerNormSpec(scale=None, bias=None, rank=2),
    LayerNormSpec(scale="second", bias=None, rank=4, eps=1e-12),
    LayerNormSpec(dtype="float64", eps=1e-6),
]


@pytest.mark.parametrize(
    "spec", FORMS, ids=lambda s: f"opset{s.opset}-{s.square}-{s.normalize}-{s.axes}-{s.scale}-{s.bias}-{s.dtype}"
)
def test_every_exporter_form_fuses_with_epsilon_kept(spec):
    model = ir.from_proto(layer_norm_model(spec))
    feeds = feeds_for(spec)
    fixed, report = svsurgery.fix(model, "layer-norm", inputs=feeds)
    assert _status(report) == {"layer-norm": "accepted"}
    fused = [n for n in fixed.graph if n.op_type == "LayerNormalization"]
    assert len(fused) == 1
    node = fused[0]
    assert node.attributes["epsilon"].value == np.float32(np.asarray(spec.eps, spec.dtype))
    assert node.attributes["axis"].value == -1
    stash = ir.DataType.DOUBLE if spec.dtype == "float64" else ir.DataType.FLOAT
    assert node.attributes["stash_type"].value == stash
    assert report.passed
    reference = Float64Reference(ir.from_proto(layer_norm_model(spec))).outputs(feeds)["y"]
    scale = np.abs(reference).max()
    assert np.abs(run(fixed, feeds)["y"] - reference).max() <= 1e-5 * scale


def test_keepdims_zero_is_refused():
    """[1, D] with keepdims=0: the mean has shape [1] and broadcasts, but over the wrong axis."""
    spec = LayerNormSpec(keepdims=0, rank=2)
    proto = layer_norm_model(spec)
    model = ir.from_proto(proto)
    fixed, report = svsurgery.fix(model, "layer-norm", inputs=feeds_for(spec, batch=1), tolerance="fp32")
    assert _ops(fixed)["LayerNormalization"] == 0
    assert _status(report) == {"layer-norm": "no match"}


def _with_constant(proto: onnx.ModelProto, name: str, value: float) -> onnx.ModelProto:
    """The model with the Constant node that makes ``name`` holding ``value`` instead."""
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    (node,) = [n for n in proto.graph.node if n.output[0] == name]
    node.attribute[0].t.CopyFrom(onnx.numpy_helper.from_array(np.array(value, np.float32), name))
    return proto


def _with_input_epsilon(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The model with epsilon a graph input (a value known only at run time) instead of a Constant."""
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    (node,) = [n for n in proto.graph.node if n.output[0] == "/ln/eps"]
    proto.graph.node.remove(node)
    proto.graph.input.append(onnx.helper.make_tensor_value_info("/ln/eps", onnx.TensorProto.FLOAT, []))
    return proto


def test_non_constant_epsilon_and_other_exponents_are_refused():
    spec = LayerNormSpec()
    feeds = feeds_for(spec)
    # the exponent 3: not a variance
    cubed = _with_constant(layer_norm_model(spec), "/ln/two", 3.0)
    fixed, _ = svsurgery.fix(ir.from_proto(cubed), "layer-norm", inputs=feeds)
    assert _ops(fixed)["LayerNormalization"] == 0 and _ops(fixed)["Pow"] == 1
    # epsilon a graph input: LayerNormalization's epsilon is an attribute, so it cannot be fused
    proto = _with_input_epsilon(layer_norm_model(spec))
    onnx.checker.check_model(proto, full_check=True)
    runtime = {**feeds, "/ln/eps": np.array(1e-5, np.float32)}
    fixed, _report = svsurgery.fix(ir.from_proto(proto), "layer-norm", inputs=runtime)
    assert _ops(fixed)["LayerNormalization"] == 0 and _ops(fixed)["ReduceMean"] == 2
    assert [v.name for v in fixed.graph.inputs] == ["x", "/ln/eps"]
    # ... and the same model with the epsilon constant again does fuse: the refusal is about the epsilon
    fixed, _ = svsurgery.fix(ir.from_proto(layer_norm_model(spec)), "layer-norm", inputs=feeds)
    assert _ops(fixed)["LayerNormalization"] == 1


def test_float16_layer_norm_fuses_with_float32_statistics():
    spec = LayerNormSpec(dtype="float16", dim=32)
    fixed, report = svsurgery.fix(
        ir.from_proto(layer_norm_model(spec)), "layer-norm", inputs=feeds_for(spec, spread=100.0)
    )
    (node,) = [n for n in fixed.graph if n.op_type == "LayerNormalization"]
    assert node.inputs[0].dtype == ir.DataType.FLOAT16 and node.attributes["stash_type"].value == ir.DataType.FLOAT
    assert report.passed, report.final.failures()


def test_below_opset_17_with_keep_opset_float16_chains_compute_in_float32():
    spec = LayerNormSpec(dtype="float16", opset=14)
    model = ir.from_proto(layer_norm_model(spec))
    fixed, report = svsurgery.fix(model, "layer-norm", inputs=feeds_for(spec), raise_opset=False)
    assert fixed.opset_imports[""] == 14 and _ops(fixed)["LayerNormalization"] == 0
    (step,) = report.steps
    assert step.status == "accepted" and step.matches == 1
    assert "kept the decomposed form" in step.notes[0] and "--keep-opset" in step.notes[0]
    patch.infer_types(fixed)
    means = [n for n in fixed.graph if n.op_type == "ReduceMean"]
    assert means and all(n.inputs[0].dtype == ir.DataType.FLOAT for n in means)


def test_below_opset_17_with_keep_opset_float32_is_left_alone():
    spec = LayerNormSpec(opset=14)
    fixed, report = svsurgery.fix(
        ir.from_proto(layer_norm_model(spec)), "layer-norm", inputs=feeds_for(spec), raise_opset=False
    )
    (step,) = report.steps
    assert step.status == "no match" and "kept the decomposed form" in step.notes[0]
    assert _ops(fixed) == _ops(ir.from_proto(layer_norm_model(spec)))


# ----------------------------------------------------------------------------- casts


def _cast_targets(model: ir.Model) -> list[str]:
    return [ir.DataType(n.attributes["to"].value).name for n in model.graph if n.op_type == "Cast"]


def _x(dtype="float32", seed=0, scale=100.0):
    return {"x": (np.random.default_rng(seed).standard_normal((2, 8)) * scale).astype(dtype)}


@pytest.mark.parametrize(
    "chain, source, left",
    [
        (["float32"], "float32", []),  # identity cast
        (["float32", "float64"], "float16", ["DOUBLE"]),  # f16 -> f32 lossless: one cast f16 -> f64
        (["int64", "float32"], "int32", ["FLOAT"]),  # i32 -> i64 lossless
        (["float64", "float32"], "float32", []),  # f32 -> f64 -> f32: exact round trip, nothing left
        (["int16", "int32", "int64", "float64"], "int8", ["DOUBLE"]),  # a long lossless chain
        (["float64", "float32", "float64"], "float64", ["FLOAT", "DOUBLE"]),  # f64 -> f32 is lossy: kept
        (["int32", "float32"], "float32", ["INT32", "FLOAT"]),  # truncation: kept
    ],
)
def test_cast_chains_collapse_only_where_the_types_prove_it(chain, source, left):
    proto = cast_chain_model(chain, source_dtype=source)
    feeds = _x(source) if source.startswith("float") else {"x": np.arange(-8, 8, dtype=source).reshape(2, 8)}
    fixed, _report = svsurgery.fix(ir.from_proto(proto), "casts", inputs=feeds, tolerance="fp32-strict")
    assert _cast_targets(fixed) == left
    before = run(ir.from_proto(proto), feeds, optimize=False)["y"]
    np.testing.assert_array_equal(run(fixed, feeds, optimize=False)["y"], before)


def test_lossy_round_trips_are_reported():
    _, report = svsurgery.fix(ir.from_proto(cast_chain_model(["float16", "float32"])), "casts", inputs=_x())
    (step,) = report.steps
    assert len(step.findings) == 1 and "FLOAT -> FLOAT16 -> FLOAT" in step.findings[0] and "rounds" in step.findings[0]


def test_lossy_round_trip_removed_where_parity_improves():
    """An f32 -> f16 -> f32 round trip left in a float32 graph: the float64 reference (the
    intended math) is closer without it, so the removal is kept."""
    proto = cast_chain_model(["float16", "float32"])
    fixed, report = svsurgery.fix(ir.from_proto(proto), "lossy-casts", inputs=_x())
    (step,) = report.steps
    assert step.site == "/chain/Cast_1" and step.status == "accepted", step.reason
    assert _cast_targets(fixed) == []
    assert report.final.by_name()["y"].max_abs < report.baseline.by_name()["y"].max_abs


def test_intended_truncation_is_rolled_back():
    """float -> int -> float truncates on purpose (x.long().float()): removing it makes the
    model disagree with its own float64 statement, so the engine puts it back."""
    proto = cast_chain_model(["int32", "float32"])
    fixed, report = svsurgery.fix(ir.from_proto(proto), "lossy-casts", inputs=_x(scale=10.0))
    (step,) = report.steps
    assert step.status == "rolled back" and "did not improve" in step.reason
    assert _cast_targets(fixed) == ["INT32", "FLOAT"]


def test_graph_output_names_survive_cast_removal():
    """A Cast whose output is a graph output: its input takes the output's name."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Cast", ["r"], ["y"], to=TensorProto.FLOAT)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    fixed, _report = svsurgery.fix(model, "casts", inputs=_x())
    assert [v.name for v in fixed.graph.outputs] == ["y"] and _ops(fixed) == {"Relu": 1}
