"""Headroom (issue 14 §2): what it measures, that it predicts the input scale where each kind of
value overflows, how the engine weighs it, fp16 --min-headroom; the SenseVoice acceptance case;
and the true-float16 evaluator checked op by op against an independent float16 implementation
(torch's CPU half arithmetic), the judge behind every fp16 claim (issue 16)."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import svsurgery
from svsurgery.cli.main import main
from svsurgery.parity.float16 import Float16Evaluator
from svsurgery.parity.headroom import DEFAULT_MIN_HEADROOM, FLOAT16_MAX, Headroom, Site, measure_model, measure_sites
from svsurgery.parity.judge import judge_headroom, regression
from svsurgery.parity.metrics import compare, compare_outputs, tolerance
from svsurgery.precision import convert_to_float16
from svsurgery.runtime import run

INPUT_SCALE = 4.0  # the activation scale a trained SenseVoiceSmall's first LayerNorms see (../shared/FACTS.md)
MIN_COSINE = 0.9999  # svsurgery fp16 in true float16 vs the float32 model, inputs x4
PREDICTION_MARGIN = 0.2  # headroom predicts overflow within 20 %: none at 0.8 x headroom, overflow at 1.25 x


def _model(nodes, inputs, outputs, initializers=(), opset=18) -> ir.Model:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9))


def _io(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


# ----------------------------------------------------------------------------- the definition


def _probe():
    """x [2, 3, 400] -> a linear value (MatMul), a square (Pow), a sum of squares (ReduceSumSquare),
    Exp, and InstanceNormalization (whose float16 variance sums 400 squared deviations)."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["linear"], name="/linear"),
        helper.make_node("Pow", ["x", "two"], ["square"], name="/square"),
        helper.make_node("ReduceSumSquare", ["x", "axes"], ["sum_of_squares"], keepdims=1, name="/sum_of_squares"),
        helper.make_node("Exp", ["x"], ["exp"], name="/exp"),
        helper.make_node(
            "InstanceNormalization", ["x", "scale", "bias"], ["normalized"], epsilon=1e-5, name="/instance_norm"
        ),
    ]
    initializers = [
        numpy_helper.from_array(rng.standard_normal((400, 8)).astype(np.float32), "w"),
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        numpy_helper.from_array(np.array([-1], np.int64), "axes"),
        numpy_helper.from_array(np.ones(3, np.float32), "scale"),
        numpy_helper.from_array(np.full(3, 0.5, np.float32), "bias"),
    ]
    outputs = [
        _io("linear", [2, 3, 8]),
        _io("square", [2, 3, 400]),
        _io("sum_of_squares", [2, 3, 1]),
        _io("exp", [2, 3, 400]),
        _io("normalized", [2, 3, 400]),
    ]
    model = _model(nodes, [_io("x", [2, 3, 400])], outputs, initializers)
    x = (0.5 + rng.standard_normal((2, 3, 400))).astype(np.float32)
    return model, {"x": x}, numpy_helper.to_array(initializers[0]).astype(np.float64)


def _overflowed(name: str, array: np.ndarray) -> bool:
    if name == "normalized":  # a float16 variance that overflowed: every output of the channel is its bias
        return bool(np.any(np.all(array == np.float16(0.5), axis=-1)))
    return bool(np.isinf(array).any())


def test_headroom_predicts_the_input_scale_where_each_kind_of_value_overflows():
    """Guards the definition: linear values overflow at 65504 / max, squares at its square root,
    Exp when its argument passes ln 65504, a float16 variance when its sum of squares passes 65504."""
    model, feeds, weights = _probe()
    converted, _ = convert_to_float16(model)
    evaluator = Float16Evaluator(converted)
    sites = {s.value: s for s in measure_sites(converted, evaluator.run_intermediates(feeds))}
    x = feeds["x"].astype(np.float64)
    deviations = x - x.mean(axis=-1, keepdims=True)
    expected = {
        "linear": FLOAT16_MAX / np.abs(x @ weights).max(),
        "square": math.sqrt(FLOAT16_MAX) / np.abs(x).max(),
        "sum_of_squares": math.sqrt(FLOAT16_MAX / (x**2).sum(axis=-1).max()),
        "exp": math.log(FLOAT16_MAX) / x.max(),
        "normalized": math.sqrt(FLOAT16_MAX / (deviations**2).sum(axis=-1).max()),
    }
    for name, headroom in expected.items():
        site = sites[name]
        assert site.headroom == pytest.approx(headroom, rel=5e-3), (name, site)
        assert site.degree == {"linear": 1, "exp": 1}.get(name, 2), site  # Exp: its argument's degree
        below = Float16Evaluator(converted).run({"x": feeds["x"] * site.headroom * (1 - PREDICTION_MARGIN)})[name]
        above = Float16Evaluator(converted).run({"x": feeds["x"] * site.headroom * (1 + PREDICTION_MARGIN + 0.05)})[
            name
        ]
        assert not _overflowed(name, below) and _overflowed(name, above), (name, site)
    headroom = evaluator.headroom
    assert headroom.headroom == min(s.headroom for s in sites.values())
    assert headroom.site.value == "exp" and "argument" in headroom.describe() and "/exp" in headroom.describe()


def test_an_overflow_is_measured_before_the_op_and_its_consequences_are_not_blamed():
    """Pow(x, 2) that overflowed to inf is measured by what it would have been (from its finite
    operand); the ReduceMean and Sqrt after it, fed inf, are consequences, not sites."""
    nodes = [
        helper.make_node("Pow", ["x", "two"], ["square"], name="/norm/Pow"),
        helper.make_node("ReduceMean", ["square", "axes"], ["variance"], keepdims=1, name="/norm/ReduceMean"),
        helper.make_node("Sqrt", ["variance"], ["y"], name="/norm/Sqrt"),
    ]
    initializers = [
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        numpy_helper.from_array(np.array([-1], np.int64), "axes"),
    ]
    model = _model(nodes, [_io("x", [1, 16])], [_io("y", [1, 1])], initializers)
    x = np.linspace(-600, 600, 16, dtype=np.float32)[None]
    headroom = measure_model(model, {"x": x})
    assert headroom.site.value == "square" and headroom.site.what.startswith("would-be")
    assert headroom.site.magnitude == pytest.approx(600.0**2, rel=1e-3)
    assert headroom.headroom == pytest.approx(math.sqrt(FLOAT16_MAX) / 600, rel=1e-3) and headroom.overflows
    assert not {"variance", "y"} & {s.value for s in headroom.lowest}  # fed inf: consequences


def test_masks_and_mask_fills_are_not_activations():
    """A float mask input (0/1) is not scaled with the signal, and the -65504 a mask fills in is
    not an activation about to overflow: only the unmasked scores are measured."""
    nodes = [
        helper.make_node("Mul", ["scores", "scale"], ["scaled"]),
        helper.make_node("Sub", ["one", "mask"], ["inverted"]),
        helper.make_node("Mul", ["inverted", "fill"], ["bias"]),
        helper.make_node("Add", ["scaled", "bias"], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["y"], axis=-1),
    ]
    initializers = [
        numpy_helper.from_array(np.array(v, np.float32), n)
        for n, v in (("scale", 0.5), ("one", 1.0), ("fill", -65504.0))
    ]
    model = _model(nodes, [_io("scores", [2, 6]), _io("mask", [2, 6])], [_io("y", [2, 6])], initializers)
    mask = np.ones((2, 6), np.float32)
    mask[:, 4:] = 0
    feeds = {"scores": np.full((2, 6), 100.0, np.float32), "mask": mask}
    converted, _ = convert_to_float16(model)
    evaluator = Float16Evaluator(converted)
    sites = {s.value: s for s in measure_sites(converted, evaluator.run_intermediates(feeds))}
    assert sites["mask"].degree == 0 and sites["inverted"].degree == 0  # not scaled with the signal
    assert sites["bias"].magnitude == 0 and sites["masked"].magnitude == 50  # masked positions (-65504) left out
    assert sites["masked"].degree == 1 and sites["masked"].headroom == pytest.approx(FLOAT16_MAX / 50)
    assert evaluator.headroom.headroom == pytest.approx(FLOAT16_MAX / 100)  # the scores input itself


# ----------------------------------------------------------------------------- the judge


def _headroom(value: float) -> Headroom:
    site = Site(
        "/encoder/encoders0.0/norm1/Pow_output_0", "/encoder/encoders0.0/norm1/Pow", "Pow", "value", 1.0, 2.0, value
    )
    return Headroom(value, site, [site], 100, [value])


def test_a_precision_rule_that_raises_headroom_is_kept_though_max_rel_crosses_the_profile():
    """Issue 14: fp16 rolled back layer-norm because max rel on generated inputs went 0.05 -> 0.0548
    (cosine improved, argmax 100 %), so the decomposed LayerNorm's Pow stayed in float16."""
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((1, 50, 32))
    profile = tolerance("fp16")
    floor = profile.rel_floor * np.abs(reference).max()  # errors count relative to at least 5 % of the scale
    near_zero = np.unravel_index(np.argmin(np.abs(reference)), reference.shape)
    before = reference + 0.002 * floor * rng.standard_normal(reference.shape)
    before[near_zero] = reference[near_zero] + 0.0499 * floor  # max rel 0.0499
    after = reference.copy()
    after[near_zero] += 0.0548 * floor  # max rel 0.0548, exact elsewhere: cosine rises
    parity_before = compare_outputs({"ctc_logits": before}, {"ctc_logits": reference}, profile)
    parity_after = compare_outputs({"ctc_logits": after}, {"ctc_logits": reference}, profile)
    assert parity_before.passed and not parity_after.passed
    assert parity_after.outputs[0].cosine > parity_before.outputs[0].cosine
    assert regression(parity_before, parity_after).startswith("left tolerance")  # parity alone rolls it back
    kept, lowered = judge_headroom(
        parity_before, parity_after, _headroom(0.71), _headroom(146.0), profile, DEFAULT_MIN_HEADROOM
    )
    assert lowered is None and kept.startswith("raises headroom 0.71x -> 146x") and "max rel 0.0548 not weighed" in kept
    # unmoved headroom: parity decides; a lowered one below the requirement: rolled back whatever parity says
    assert judge_headroom(
        parity_before, parity_after, _headroom(146.0), _headroom(150.0), profile, DEFAULT_MIN_HEADROOM
    ) == (None, None)
    kept, lowered = judge_headroom(
        parity_before, parity_before, _headroom(146.0), _headroom(3.0), profile, DEFAULT_MIN_HEADROOM
    )
    assert kept is None and "lowers headroom where it was 146x to 3x, below the 8x required" in lowered
    # a rise does not excuse a cosine that leaves the profile
    broken = compare_outputs({"ctc_logits": -after}, {"ctc_logits": reference}, profile)
    assert judge_headroom(parity_before, broken, _headroom(0.71), _headroom(146.0), profile, DEFAULT_MIN_HEADROOM) == (
        None,
        None,
    )


# ----------------------------------------------------------------------------- fp16 --min-headroom


def _loud_model(path):
    """x [2, 16] @ W: outputs up to ~2e4 on the inputs below (headroom ~3x): no rule can help."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["loud"], name="/loud/MatMul"),
        helper.make_node("Relu", ["loud"], ["y"], name="/relu"),
    ]
    weights = numpy_helper.from_array((rng.standard_normal((16, 16)) * 500).astype(np.float32), "w")
    graph = helper.make_graph(nodes, "loud", [_io("x", [2, 16])], [_io("y", [2, 16])], initializer=[weights])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
    inputs = path.with_suffix(".npz")
    np.savez(inputs, x=(rng.standard_normal((2, 16)) * 2).astype(np.float32))
    return path, inputs


def test_fp16_refuses_a_result_with_too_little_headroom_naming_the_value(tmp_path, capsys):
    path, inputs = _loud_model(tmp_path / "loud.onnx")
    out, report = tmp_path / "loud.fp16.onnx", tmp_path / "report.json"
    code = main(["fp16", str(path), "--inputs", str(inputs), "-o", str(out), "--report", str(report)])
    stdout = capsys.readouterr().out
    assert code == 1 and not out.exists()
    assert "loud" in stdout and "below the required 8x (--min-headroom)" in stdout
    data = json.loads(report.read_text())
    assert data["passed"] is False and data["min_headroom"] == DEFAULT_MIN_HEADROOM
    after = data["headroom_after"]
    assert after["value"] == "loud" and after["op_type"] == "MatMul" and 1 < after["headroom"] < DEFAULT_MIN_HEADROOM
    # within parity, so a lower requirement writes it, with headroom before/after in its metadata
    code = main(["fp16", str(path), "--inputs", str(inputs), "-o", str(out), "--min-headroom", "2"])
    capsys.readouterr()
    assert code == 0 and out.exists()
    recorded = json.loads(svsurgery.load(out).metadata_props["svsurgery.parity"])["headroom"]
    assert recorded["required"] == 2 and recorded["after"]["value"] == "loud"
    assert recorded["before"]["headroom"] == pytest.approx(recorded["after"]["headroom"])


# ----------------------------------------------------------------------------- SenseVoice, inputs x4


def _reference_encoder(tmp_path):
    from svsurgery.testing.encoder import EncoderConfig, build_encoder
    from svsurgery.testing.export import export_legacy

    return export_legacy(
        build_encoder(EncoderConfig.tiny(output_size=512, linear_units=1024)), tmp_path / "encoder.onnx"
    )


def _funasr_sensevoice(tmp_path):
    funasr_sensevoice = pytest.importorskip("svsurgery.testing.funasr_sensevoice")
    pytest.importorskip("funasr")
    config = funasr_sensevoice.FunasrConfig(output_size=512, linear_units=1024, num_blocks=3)
    return funasr_sensevoice.export_funasr(funasr_sensevoice.build_funasr_sensevoice(config), tmp_path / "model.onnx")


@pytest.mark.parametrize(
    "export", [_reference_encoder, _funasr_sensevoice], ids=["reference-encoder", "funasr-sensevoice-small"]
)
def test_sensevoice_fp16_keeps_layer_norm_and_holds_at_inputs_x4(tmp_path, capsys, export):
    """Issue 14's acceptance: `svsurgery fp16` on a FunASR-style SenseVoice export (opset 14,
    decomposed LayerNorm behind a no-op Cast, 512 wide: its first LayerNorm's squares reach
    ~1.3e5 on realistic features) keeps layer-norm and reports headroom >= the default; in true
    float16 on inputs x4 its outputs keep cosine >= 0.9999 against the float32 model, where the
    naive conversion reports headroom < 1 and falls apart."""
    from svsurgery.parity.inputs import generate_inputs

    path = export(tmp_path)
    out, report_path = tmp_path / "model.fp16.onnx", tmp_path / "report.json"
    code = main(["fp16", str(path), "--keep-io-types", "-o", str(out), "--report", str(report_path)])
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    report = json.loads(report_path.read_text())
    statuses = {s["family"]: s["status"] for s in report["steps"] if s["site"] is None}
    assert statuses["layer-norm"] == "accepted"
    assert report["headroom_before"]["headroom"] < 1 <= DEFAULT_MIN_HEADROOM <= report["headroom_after"]["headroom"]
    assert "headroom" in stdout and report["headroom_before"]["op_type"] == "Pow"

    model = svsurgery.load(path)
    feeds = generate_inputs(model, path).feeds
    feeds["speech"] = feeds["speech"] * INPUT_SCALE
    expected = run(model, feeds)["ctc_logits"]
    written = Float16Evaluator(svsurgery.load(out))
    parity = compare("ctc_logits", written.run(feeds)["ctc_logits"], expected)
    assert parity.nan_count == parity.inf_count == 0 and parity.cosine >= MIN_COSINE, parity
    assert written.headroom.headroom >= 1  # nothing overflows at x4 ...
    naive, _ = convert_to_float16(model, keep_io_types=True)
    evaluator = Float16Evaluator(naive)
    naive_parity = compare("ctc_logits", evaluator.run(feeds)["ctc_logits"], expected)
    assert evaluator.headroom.headroom < 1 and naive_parity.cosine < 0.9  # ... where the naive conversion overflows
    assert evaluator.headroom.site.op_type == "Pow" and "norm1" in evaluator.headroom.site.value


# ----------------------------------------------------------------------------- the evaluator vs torch half


def _one_node(op_type, inputs, attributes=None, constants=(), opset=18):
    """A float16 model of one node; ``inputs`` are (name, array) fed at run time, ``constants`` initializers."""
    node = helper.make_node(op_type, [n for n, _ in inputs] + [n for n, _ in constants], ["y"], **(attributes or {}))
    graph = helper.make_graph(
        [node],
        op_type,
        [_io(n, list(a.shape), TensorProto.FLOAT16) for n, a in inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, None)],
        initializer=[numpy_helper.from_array(a, n) for n, a in constants],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9))


def _half(rng, shape, scale=1.0, offset=0.0):
    return (offset + scale * rng.standard_normal(shape)).astype(np.float16)


def _t(array):
    return torch.from_numpy(np.ascontiguousarray(array))


def _cases():
    """(id, op, inputs, attributes, constants, torch half implementation, ulps allowed)."""
    rng = np.random.default_rng(0)
    a, b = _half(rng, (4, 33), 30), _half(rng, (4, 33), 30, 2.0)
    big = _half(rng, (4, 33), 300)  # squares and products beyond 65504: inf in both
    positive = np.abs(_half(rng, (4, 33), 50)) + np.float16(0.01)
    m1, m2 = _half(rng, (3, 64, 48)), _half(rng, (48, 40))
    x3, w3 = _half(rng, (2, 8, 50)), _half(rng, (6, 8, 5), 0.3)
    rows = _half(rng, (3, 5, 300), 4, 1.0)
    scale, bias = _half(rng, (300,), 0.1, 1.0), _half(rng, (300,), 0.1)
    channels = _half(rng, (2, 4, 300), 2, 1.0)
    c_scale, c_bias = _half(rng, (4,), 0.1, 1.0), _half(rng, (4,), 0.1)
    mean, var = _half(rng, (4,), 0.5), np.abs(_half(rng, (4,), 1.0)) + np.float16(0.1)
    return [
        # elementwise: torch rounds each half result from float32, which is exact for + - * / sqrt
        ("Add", "Add", [("a", a), ("b", b)], {}, [], lambda a, b: a + b, 0),
        ("Sub", "Sub", [("a", a), ("b", b)], {}, [], lambda a, b: a - b, 0),
        ("Mul-overflow", "Mul", [("a", big), ("b", big)], {}, [], lambda a, b: a * b, 0),
        ("Div", "Div", [("a", a), ("b", b)], {}, [], lambda a, b: a / b, 0),
        ("Sqrt", "Sqrt", [("a", positive)], {}, [], torch.sqrt, 0),
        ("Pow-square-overflow", "Pow", [("a", big)], {}, [("two", np.array(2, np.float16))], lambda a: a**2, 0),
        ("Exp", "Exp", [("a", _half(rng, (4, 33), 4))], {}, [], torch.exp, 1),
        ("Tanh", "Tanh", [("a", a / np.float16(10))], {}, [], torch.tanh, 1),
        ("Sigmoid", "Sigmoid", [("a", a / np.float16(10))], {}, [], torch.sigmoid, 1),
        ("Erf", "Erf", [("a", a / np.float16(10))], {}, [], torch.erf, 1),
        # float32 accumulation, one rounding (MatMul/Gemm/Conv, reductions, Softmax, normalisations)
        ("MatMul", "MatMul", [("a", m1), ("b", m2)], {}, [], torch.matmul, 1),
        (
            "Gemm",
            "Gemm",
            [("a", m1[0]), ("b", m2)],
            {"alpha": 0.5},
            [("c", _half(rng, (40,)))],
            lambda a, b, c: (0.5 * (a.float() @ b.float()) + c.float()).half(),
            1,
        ),  # torch's half addmm rounds twice
        (
            "Conv",
            "Conv",
            [("x", x3), ("w", w3)],
            {"pads": [2, 2]},
            [],
            lambda x, w: torch.nn.functional.conv1d(x, w, padding=2),
            1,
        ),
        (
            "ReduceMean",
            "ReduceMean",
            [("a", rows)],
            {"keepdims": 1},
            [("axes", np.array([-1], np.int64))],
            lambda a: a.mean(-1, keepdim=True),
            1,
        ),
        (
            "ReduceSum",
            "ReduceSum",
            [("a", rows)],
            {"keepdims": 1},
            [("axes", np.array([-1], np.int64))],
            lambda a: a.sum(-1, keepdim=True),
            1,
        ),
        (
            "ReduceSumSquare",
            "ReduceSumSquare",
            [("a", rows)],
            {"keepdims": 1},
            [("axes", np.array([-1], np.int64))],
            lambda a: (a.float() ** 2).sum(-1, keepdim=True).half(),
            1,
        ),
        ("Softmax", "Softmax", [("a", rows)], {"axis": -1}, [], lambda a: torch.softmax(a, -1), 1),
        (
            "LayerNormalization",
            "LayerNormalization",
            [("a", rows * np.float16(20))],
            {"epsilon": 1e-5},
            [("s", scale), ("b", bias)],
            lambda a, s, b: torch.nn.functional.layer_norm(a, (300,), s, b, 1e-5),
            2,
        ),
        (
            "RMSNormalization",
            "RMSNormalization",
            [("a", rows * np.float16(20))],
            {"epsilon": 1e-5},
            [("s", scale)],
            lambda a, s: torch.nn.functional.rms_norm(a, (300,), s, 1e-5),
            2,
        ),
        (
            "BatchNormalization",
            "BatchNormalization",
            [("x", channels)],
            {"epsilon": 1e-5},
            [("s", c_scale), ("b", c_bias), ("mean", mean), ("var", var)],
            lambda x, s, b, mean, var: torch.nn.functional.batch_norm(x, mean, var, s, b, False, 0.0, 1e-5),
            1,
        ),
        ("Relu", "Relu", [("a", a)], {}, [], torch.relu, 0),
    ]


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c[0])
def test_the_float16_evaluator_agrees_with_torch_half_op_by_op(case):
    """Each op the evaluator runs, against torch's CPU half arithmetic (each result computed in
    float32 and rounded to half; its matmul, conv, reductions, softmax and norms accumulate in
    float32): equal to the bit where one rounding decides, within 1-2 float16 steps where the
    order of a float32 accumulation or a libm differs. Overflow to inf must agree."""
    _, op_type, inputs, attributes, constants, implementation, ulps = case
    opset = 23 if op_type == "RMSNormalization" else 18
    model = _one_node(op_type, inputs, attributes, constants, opset)
    actual = Float16Evaluator(model).run(dict(inputs))["y"]
    assert actual.dtype == np.float16
    arrays = [_t(a) for _, a in inputs] + [_t(c) for name, c in constants if c.dtype == np.float16 and name != "two"]
    expected = implementation(*arrays).numpy()
    assert expected.dtype == np.float16 and expected.shape == actual.shape
    assert np.array_equal(np.isinf(actual), np.isinf(expected)) and np.array_equal(np.isnan(actual), np.isnan(expected))
    finite = np.isfinite(expected)
    step = np.spacing(np.abs(expected[finite]).astype(np.float16)).astype(np.float64)
    difference = np.abs(actual[finite].astype(np.float64) - expected[finite].astype(np.float64))
    assert np.all(difference <= ulps * step), f"max difference {(difference / step).max():.1f} float16 steps > {ulps}"


def test_instance_normalization_keeps_its_stock_float16_statistics():
    """InstanceNormalization has no stash_type: the evaluator computes its statistics in float16
    as the spec and onnx.reference do (torch's half ops step by step: the variance's sum of
    squares overflows once it passes 65504 and the channel collapses to its bias), and within
    one float16 step of torch's float16 arithmetic while that sum stays in range."""
    rng = np.random.default_rng(0)
    scale, bias = np.ones(2, np.float16), np.array([0.25, -0.5], np.float16)
    for spread, collapses in ((2.0, False), (20.0, True)):  # sum of squares over 400 frames: ~1600 / ~160000
        x = _half(rng, (1, 2, 400), spread, 3.0)
        model = _one_node("InstanceNormalization", [("x", x)], {"epsilon": 1e-5}, [("s", scale), ("b", bias)])
        actual = Float16Evaluator(model).run({"x": x})["y"]
        t = _t(x)
        mean = t.float().mean(-1, keepdim=True).half()  # numpy's float16 mean accumulates in float32
        deviation = t - mean
        variance = (deviation * deviation).sum(-1, keepdim=True) / np.float16(400)  # half: inf beyond 65504
        expected = (
            _t(scale)[:, None] * deviation / torch.sqrt(variance + np.float16(1e-5)) + _t(bias)[:, None]
        ).numpy()
        assert bool(np.isinf(variance.numpy()).any()) == collapses
        if collapses:  # both collapse to the bias, where float32 statistics would not
            assert np.array_equal(actual, expected) and np.all(actual == bias[None, :, None])
            gpu_style = torch.nn.functional.instance_norm(
                t.float(), weight=_t(scale).float(), bias=_t(bias).float()
            ).numpy()
            assert np.abs(gpu_style).max() > 2
        else:
            # one float16 step at the output's scale (+ bias cancels near zero: steps per element would be tiny there)
            step = float(np.spacing(np.float16(np.abs(expected).max())))
            assert np.abs(actual.astype(np.float64) - expected).max() <= step


@pytest.mark.parametrize("trips", [3, 0], ids=["three-iterations", "no-iteration"])
def test_the_float16_evaluator_stacks_loop_scan_outputs_as_onnxruntime_does(trips):
    """Guards: onnx.reference's Loop joined rank-2 scan outputs with np.vstack (concatenated along
    their first axis: [6, 4] instead of [3, 2, 4]), which crashed `svsurgery fp16` on every fused
    model (its fbank scans [B, frames, 80] blocks); with no iteration it raised."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["acc_in", "x"], ["acc_out"]),
            helper.make_node("Identity", ["acc_out"], ["scan"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_in", TensorProto.FLOAT16, [2, 4]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT16, [2, 4]),
            helper.make_tensor_value_info("scan", TensorProto.FLOAT16, [2, 4]),
        ],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "go", "x"], ["final", "steps"], body=body)],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2, 4]),
            helper.make_tensor_value_info("trips", TensorProto.INT64, []),
            helper.make_tensor_value_info("go", TensorProto.BOOL, []),
        ],
        [
            helper.make_tensor_value_info("final", TensorProto.FLOAT16, [2, 4]),
            helper.make_tensor_value_info("steps", TensorProto.FLOAT16, None),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = {"x": np.arange(8, dtype=np.float16).reshape(2, 4), "trips": np.array(trips), "go": np.array(True)}
    ours = Float16Evaluator(ir.from_proto(model)).run(feeds)
    expected = run(ir.from_proto(model), feeds)
    final, steps = expected["final"], expected["steps"]
    np.testing.assert_array_equal(ours["final"], final)
    assert ours["steps"].shape[0] == trips and steps.shape[0] == trips
    if trips:
        assert ours["steps"].shape == steps.shape == (trips, 2, 4)
        np.testing.assert_array_equal(ours["steps"], steps)
