"""References: the float64 shadow states the intended math; golden files round-trip; metrics and judging."""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from svsurgery import golden
from svsurgery.errors import BadInputError
from svsurgery.parity.float64 import float64_shadow
from svsurgery.parity.judge import Margin, improvement, regression
from svsurgery.parity.metrics import PROFILES, compare, compare_outputs
from svsurgery.runtime import run


def _model(nodes, inputs, outputs, initializers=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8))


def test_shadow_computes_in_double_including_casts_to_float16_and_constants():
    """y = Cast(Cast(x * c, f16), f32) * 3.1: the shadow drops the f16 rounding (intended math)."""
    nodes = [
        helper.make_node("Constant", [], ["c"], value_float=1.1),
        helper.make_node("Mul", ["x", "c"], ["m"]),
        helper.make_node("Cast", ["m"], ["h"], to=TensorProto.FLOAT16),
        helper.make_node("Cast", ["h"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["f", "k"], ["y"]),
    ]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
                   [numpy_helper.from_array(np.array(3.1, np.float32), "k")])  # fmt: skip
    x = np.array([0.1, 1.0, 333.3, -7.7], np.float32)
    shadow = float64_shadow(model)
    y = shadow.run({"x": x})["y"]
    assert y.dtype == np.float64 and shadow.float32_ops == []
    exact = x.astype(np.float64) * np.float64(np.float32(1.1)) * np.float64(np.float32(3.1))
    np.testing.assert_allclose(y, exact, rtol=1e-15)
    assert np.abs(run(model, {"x": x})["y"] - exact).max() > 1e-3  # the float32 model rounds through f16
    assert run(model, {"x": x})["y"].dtype == np.float32  # the model itself is untouched


def test_shadow_runs_ops_without_double_kernels_in_float32_and_says_so():
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], group=2),
        helper.make_node("Resize", ["c", "", "scales"], ["r"], mode="nearest"),
        helper.make_node("Erf", ["r"], ["e"]),
        helper.make_node("Sin", ["e"], ["y"]),
    ]
    model = _model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.full((2, 1, 3), 0.5, np.float32), "w"),
         numpy_helper.from_array(np.array([1, 1, 2], np.float32), "scales")],
    )  # fmt: skip
    shadow = float64_shadow(model)
    assert set(shadow.float32_ops) == {"Conv", "Resize", "Erf"}
    assert "Conv" in shadow.describe() and "float32" in shadow.describe()
    x = np.linspace(-1, 1, 10, dtype=np.float32).reshape(1, 2, 5)
    y = shadow.run({"x": x})["y"]
    np.testing.assert_allclose(y, run(model, {"x": x})["y"], rtol=1e-6, atol=1e-6)


def test_shadow_reaches_into_subgraphs():
    branch = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16), helper.make_node("Cast", ["h"], ["out"], to=TensorProto.FLOAT)],
        "branch", [], [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2])],
    )  # fmt: skip
    model = _model(
        [helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]), helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )  # fmt: skip
    x = np.array([1.0001, 3.14159], np.float32)
    y = float64_shadow(model).run({"x": x, "cond": np.array(True)})["y"]
    np.testing.assert_array_equal(y, x.astype(np.float64))


def test_golden_files_round_trip_and_refuse_bad_input(tmp_path):
    inputs = {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}
    outputs = {"y": np.ones((2, 3), np.float32), "n": np.array([3, 3], np.int32)}
    path = golden.save(tmp_path / "g.npz", inputs, outputs, source="unit test")
    loaded = golden.load(path)
    assert loaded.meta["source"] == "unit test" and loaded.meta["versions"]["onnx"]
    np.testing.assert_array_equal(loaded.inputs["x"], inputs["x"])
    np.testing.assert_array_equal(loaded.outputs["n"], outputs["n"])
    assert not list(tmp_path.glob(".g.npz.*"))  # no temporary left behind
    with pytest.raises(BadInputError, match="either outputs or a torch module"):
        golden.save(tmp_path / "h.npz", inputs)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(BadInputError, match="not a readable golden npz"):
        golden.load(tmp_path / "bad.npz")


def test_metrics_and_judging():
    expected = {"logits": np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]]), "lens": np.array([3, 3])}
    actual = {"logits": expected["logits"].astype(np.float32), "lens": expected["lens"]}  # a float32 model's outputs
    same = compare_outputs(actual, expected, PROFILES["fp32"])
    assert same.passed and same.by_name()["lens"].exact and same.by_name()["logits"].argmax_agreement == 1.0
    nudged = {"logits": np.nextafter(actual["logits"], np.float32(9)), "lens": expected["lens"]}  # one float32 step
    assert regression(same, compare_outputs(nudged, expected, PROFILES["fp32"])) is None
    flipped = {"logits": expected["logits"][:, ::-1].copy(), "lens": np.array([3, 2])}
    worse = compare_outputs(flipped, expected, PROFILES["fp32"])
    assert not worse.passed and "left tolerance" in regression(same, worse)
    assert "integer values differ" in " ".join(worse.failures())
    assert improvement(worse, same) is not None and improvement(same, same) is None
    nan = compare("x", np.array([np.nan, 1.0]), np.array([0.0, 1.0]))
    assert nan.nan_count == 1 and not nan.check(PROFILES["fp32"]).passed
    shape = compare("x", np.zeros(3), np.zeros(4)).check(PROFILES["fp32"])
    assert not shape.passed and "shape" in shape.failures[0] and math.isinf(shape.max_abs)
    # growth within a few rounding steps of the output type is not a regression
    base = compare("x", np.float32([1.0, 2.0]) + np.float32(1e-7), np.array([1.0, 2.0]))
    after = compare("x", np.float32([1.0, 2.0]) + np.float32(2.4e-7), np.array([1.0, 2.0]))
    assert Margin().allowed_growth(base) >= after.max_abs - base.max_abs
