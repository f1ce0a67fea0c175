"""The patch API: every edit leaves the model valid; semantics-preserving edits are bit-identical."""

from __future__ import annotations

import re

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

import svsurgery
from svsurgery import patch
from svsurgery.errors import BadInputError
from svsurgery.runtime import run


@pytest.fixture()
def model(legacy_path):
    return svsurgery.load(legacy_path)


# Semantic equality is judged with onnxruntime's graph optimizations off: which fusions it
# applies depends on the graph's shape (an Identity, an exposed intermediate), and a fused
# kernel rounds differently from the ops it replaces.


@pytest.fixture(scope="module")
def baseline(legacy_path, feeds):
    return run(legacy_path, feeds, optimize=False)


def assert_valid_and_identical(model, feeds, baseline):
    svsurgery.validate(model)
    outputs = run(model, feeds, optimize=False)
    for name, expected in baseline.items():
        np.testing.assert_array_equal(outputs[name], expected, err_msg=name)
    return outputs


def _no_op_cast(model):
    patch.infer_types(model)  # exporters write no value_info; dtypes of intermediates come from inference
    for node in patch.find_nodes(model, "Cast"):
        source = node.inputs[0]
        if source.dtype == ir.DataType.FLOAT and node.attributes["to"].as_int() == ir.DataType.FLOAT:
            return node
    raise AssertionError("the legacy export should contain a no-op Cast(to=FLOAT)")


def test_find_nodes_by_type_name_domain_and_predicate(model, torch_encoder):
    softmaxes = patch.find_nodes(model, "Softmax")
    assert len(softmaxes) == torch_encoder.config.num_blocks + torch_encoder.config.tp_blocks
    first_block = patch.find_nodes(model, name="/encoder/encoders0.0/*")
    assert first_block and all(n.name.startswith("/encoder/encoders0.0/") for n in first_block)
    by_regex = patch.find_nodes(model, "ReduceMean", name=re.compile(r"norm1"))
    assert by_regex and all("norm1" in n.name for n in by_regex)
    assert patch.find_nodes(model, "Softmax", domain="ai.onnx") == softmaxes
    assert patch.find_nodes(model, domain="com.microsoft") == []
    wide = patch.find_nodes(model, where=lambda n: len(n.inputs) >= 3)
    assert wide and all(len(n.inputs) >= 3 for n in wide)
    with pytest.raises(BadInputError, match="exactly one node"):
        patch.find_node(model, "Softmax")


def test_walk_producers_and_consumers(model):
    softmax = patch.find_nodes(model, "Softmax")[0]
    assert patch.producer(model, softmax.inputs[0]).op_type == "Where"
    assert {n.op_type for n in patch.consumers(model, softmax.outputs[0])} == {"Where"}
    upstream_ops = [n.op_type for n in patch.upstream(model, softmax)]
    assert upstream_ops[0] == "Where" and "MatMul" in upstream_ops
    stopped = list(patch.upstream(model, softmax, stop=lambda n: n.op_type == "Where"))
    assert len(stopped) == 1
    downstream_ops = {n.op_type for n in patch.downstream(model, softmax.outputs[0])}
    assert "MatMul" in downstream_ops
    with pytest.raises(BadInputError, match="did you mean"):
        patch.find_value(model, "ctc_logit")


def test_insert_after_and_before_keep_semantics_and_output_names(model, feeds, baseline):
    softmax = patch.find_nodes(model, "Softmax")[0]
    original_name = softmax.outputs[0].name
    added = patch.insert_after(model, softmax.outputs[0], "Identity")
    assert softmax.outputs[0].name == original_name
    assert {n for n in patch.consumers(model, softmax.outputs[0])} == {added}
    after_output = patch.insert_after(model, "ctc_logits", "Identity")
    before_output = patch.insert_before(model, "ctc_logits", "Identity")
    assert [o.name for o in model.graph.outputs] == ["ctc_logits", "encoder_out_lens"]
    assert model.graph.outputs[0].producer() is before_output
    assert before_output.inputs[0].producer() is after_output
    scaled = patch.insert_after(model, "speech", "Mul", [1.0])
    assert scaled.inputs[1].const_value.numpy().dtype == np.float32
    assert_valid_and_identical(model, feeds, baseline)
    with pytest.raises(BadInputError, match="graph input"):
        patch.insert_before(model, "speech", "Identity")


def test_replace_node_keeps_semantics(model, feeds, baseline):
    softmax = patch.find_nodes(model, "Softmax")[1]
    axis = softmax.attributes["axis"].as_int()
    replacement = ir.Node("", "Softmax", [softmax.inputs[0]], attributes=[ir.AttrInt64("axis", axis)])
    patch.replace_node(model, softmax, replacement)
    assert replacement.name.startswith("svs/patch/")
    assert softmax not in list(model.graph)
    assert_valid_and_identical(model, feeds, baseline)
    with pytest.raises(BadInputError, match="has 1 outputs but 2"):
        patch.replace_node(model, replacement, [], outputs=[replacement.outputs[0]] * 2)


def _first_variance(model):
    """(x - mean) -> Pow(2) -> ReduceMean: the variance of the first decomposed LayerNorm."""
    pow_node = patch.find_nodes(model, "Pow")[0]
    reduce_mean = patch.consumers(model, pow_node.outputs[0])[0]
    assert reduce_mean.op_type == "ReduceMean"
    return pow_node, reduce_mean


def test_replace_subgraph_with_rebuilt_nodes(model, feeds, baseline):
    pow_node, reduce_mean = _first_variance(model)
    axes = reduce_mean.attributes["axes"].as_ints()

    def variance(tape, centered):
        two = tape.initializer(ir.tensor(np.array(2.0, np.float32), name="svs/patch/two"))
        squared = tape.op("Pow", [centered, two])
        return tape.op("ReduceMean", [squared], attributes={"axes": axes, "keepdims": 1})

    new_nodes = patch.replace_subgraph(model, [pow_node.inputs[0]], [reduce_mean.outputs[0]], variance)
    assert [n.op_type for n in new_nodes] == ["Pow", "ReduceMean"]
    assert pow_node not in list(model.graph)
    assert_valid_and_identical(model, feeds, baseline)


def test_replace_subgraph_refuses_a_leaking_region(model):
    pow_node, reduce_mean = _first_variance(model)
    sub = pow_node.inputs[0].producer()
    with pytest.raises(BadInputError, match="also read by"):
        # the centred value (Sub output) feeds both the variance and the division
        patch.replace_subgraph(model, [sub.inputs[0]], [reduce_mean.outputs[0]], lambda tape, x: x)
    with pytest.raises(BadInputError, match="reaches graph input"):
        patch.replace_subgraph(model, [], [reduce_mean.outputs[0]], lambda tape: None)


def test_bypass_and_remove(model, feeds, baseline):
    cast = _no_op_cast(model)
    patch.bypass(model, cast)
    assert cast not in list(model.graph)
    identity = patch.insert_after(model, "ctc_logits", "Identity")
    patch.bypass(model, identity)
    assert model.graph.outputs[0].name == "ctc_logits"
    dead = patch.insert_after(model, patch.find_nodes(model, "Softmax")[0].outputs[0], "Relu")
    patch.bypass(model, dead)
    unused = ir.Node("", "Relu", [model.graph.inputs[0]], name="svs/patch/unused")
    model.graph.append(unused)
    unused.outputs[0].name = "svs/patch/unused_out"
    with pytest.raises(BadInputError, match="still read"):
        patch.remove_node(model, patch.find_nodes(model, "Softmax")[0])
    patch.remove_node(model, unused)
    assert_valid_and_identical(model, feeds, baseline)


def test_insert_casts_runs_a_node_in_another_precision(model, feeds, baseline):
    softmax = patch.find_nodes(model, "Softmax")[0]
    casts = patch.insert_casts(model, softmax, ir.DataType.DOUBLE)
    assert [c.attributes["to"].as_int() for c in casts] == [ir.DataType.DOUBLE, ir.DataType.FLOAT]
    assert softmax.outputs[0].dtype == ir.DataType.DOUBLE
    svsurgery.validate(model)
    outputs = run(model, feeds, optimize=False)
    for name, expected in baseline.items():
        np.testing.assert_allclose(outputs[name], expected, rtol=0, atol=1e-5)


def test_expose_and_extract_reproduce_intermediates_bit_exactly(model, legacy_path, feeds, baseline):
    pow_node, reduce_mean = _first_variance(model)
    centered, variance = pow_node.inputs[0].name, reduce_mean.outputs[0].name
    patch.expose(model, [centered, variance])
    outputs = assert_valid_and_identical(model, feeds, baseline)
    assert [o.name for o in model.graph.outputs][-2:] == [centered, variance]

    source = svsurgery.load(legacy_path)
    repro = patch.extract(source, [centered], [variance])
    svsurgery.validate(repro)
    assert sorted(n.op_type for n in repro.graph) == ["Constant", "Pow", "ReduceMean"]
    assert len(source.graph.outputs) == 2  # the source is unchanged
    extracted = run(repro, {centered: outputs[centered]}, optimize=False)
    np.testing.assert_array_equal(extracted[variance], outputs[variance])
    with pytest.raises(BadInputError, match="reaches graph input"):
        patch.extract(source, [], [variance])


def test_rename_value_and_metadata(model, tmp_path, feeds, baseline):
    softmax = patch.find_nodes(model, "Softmax")[0]
    patch.rename_value(model, softmax.outputs[0], "attention_probabilities.0")
    with pytest.raises(BadInputError, match="already used"):
        patch.rename_value(model, "attention_probabilities.0", "speech")
    patch.set_metadata(model, "svsurgery.note", {"patched": True})
    patch.set_metadata(model, "author", "me")
    assert_valid_and_identical(model, feeds, baseline)
    reloaded = svsurgery.load(svsurgery.save(model, tmp_path / "renamed.onnx"))
    assert patch.find_value(reloaded, "attention_probabilities.0").producer().op_type == "Softmax"
    assert reloaded.metadata_props["svsurgery.note"] == '{"patched": true}'
    assert reloaded.metadata_props["author"] == "me"


@pytest.mark.parametrize("kind", ["legacy", "dynamo"])
def test_graphsurgeon_round_trip_is_bit_identical(exported, feeds, kind):
    source = svsurgery.load(exported[kind])
    source.metadata_props["kept"] = "yes"
    graph = svsurgery.to_graphsurgeon(source)
    assert len(graph.nodes) == len(list(source.graph))
    back = svsurgery.from_graphsurgeon(graph)
    assert back.metadata_props["kept"] == "yes"
    svsurgery.validate(back)
    expected, outputs = run(exported[kind], feeds, optimize=False), run(back, feeds, optimize=False)
    for name in expected:
        np.testing.assert_array_equal(outputs[name], expected[name])


def test_graphsurgeon_edits_come_back(legacy_path, feeds, baseline):
    import onnx_graphsurgeon as gs

    graph = svsurgery.to_graphsurgeon(svsurgery.load(legacy_path))
    logits = graph.outputs[0]
    scaled = gs.Variable("scaled_logits", dtype=np.float32)
    graph.nodes.append(gs.Node("Mul", inputs=[logits, gs.Constant("two", np.array(2.0, np.float32))], outputs=[scaled]))
    graph.outputs.append(scaled)
    model = svsurgery.from_graphsurgeon(graph, cleanup=True)
    svsurgery.validate(model)
    outputs = run(model, feeds, optimize=False)
    np.testing.assert_array_equal(outputs["scaled_logits"], baseline["ctc_logits"] * 2)


# ----------------------------------------------------------------------------- subgraphs


def _model_with_subgraphs() -> ir.Model:
    """If, Loop and Scan bodies that each read an outer value."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])
    then_branch = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["then_relu"], name="then_relu_node"),
            helper.make_node("Mul", ["then_relu", "two"], ["then_out"], name="then_mul"),
        ],
        "then",
        [],
        [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, [3])],
        initializer=[helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["else_out"], name="else_neg")],
        "else",
        [],
        [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, [3])],
    )
    loop_body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["acc_in", "x"], ["acc_out"], name="loop_add"),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [3]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [3]),
        ],
    )
    scan_body = helper.make_graph(
        [
            helper.make_node("Add", ["sum_in", "elem"], ["sum_out"], name="scan_add"),
            helper.make_node("Identity", ["sum_out"], ["scan_out"]),
        ],
        "scan",
        [
            helper.make_tensor_value_info("sum_in", TensorProto.FLOAT, []),
            helper.make_tensor_value_info("elem", TensorProto.FLOAT, []),
        ],
        [
            helper.make_tensor_value_info("sum_out", TensorProto.FLOAT, []),
            helper.make_tensor_value_info("scan_out", TensorProto.FLOAT, []),
        ],
    )
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0, name="sum"),
        helper.make_node("Greater", ["total", "zero"], ["positive"], name="is_positive"),
        helper.make_node("If", ["positive"], ["branch"], then_branch=then_branch, else_branch=else_branch, name="if"),
        helper.make_node("Loop", ["trips", "", "x"], ["looped"], body=loop_body, name="loop"),
        helper.make_node("Scan", ["zero", "x"], ["final", "cumsum"], body=scan_body, num_scan_inputs=1, name="scan"),
    ]
    graph = helper.make_graph(
        nodes,
        "main",
        [x],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [3]) for n in ("branch", "looped", "cumsum")],
        initializer=[
            helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
            helper.make_tensor("trips", TensorProto.INT64, [], [3]),
        ],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(proto, full_check=True)
    return ir.from_proto(proto)


def test_find_and_patch_inside_if_loop_and_scan_bodies():
    model = _model_with_subgraphs()
    feeds = {"x": np.array([1.0, -0.5, 2.0], np.float32)}
    baseline = run(model, feeds)
    assert {n.name for n in patch.find_nodes(model, "Add")} == {"loop_add", "scan_add"}
    assert patch.find_nodes(model, "Add", recursive=False) == []
    assert patch.find_value(model, "then_relu").producer().name == "then_relu_node"
    for value in ("then_relu", "acc_out", "sum_out"):
        added = patch.insert_after(model, value, "Identity")
        assert added.graph is patch.find_value(model, value).graph
    patch.insert_casts(model, "then_mul", ir.DataType.DOUBLE)
    assert_valid_and_identical(model, feeds, baseline)
