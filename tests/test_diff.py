"""diff names the first diverging module; extract cuts a repro that reproduces bit for bit."""

from __future__ import annotations

import collections
import json
import resource
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import onnx
import onnx_ir as ir
import pytest

import svsurgery
from svsurgery import golden
from svsurgery.cli.main import main
from svsurgery.divergence import diff, diff_models, module_scopes
from svsurgery.errors import BadInputError
from svsurgery.parity.inputs import generate_inputs
from svsurgery.precision import convert_to_float16
from svsurgery.repro import extract_repro
from svsurgery.torchspec import load_module


def _node_in_module(model: ir.Model, module: str, op_type: str) -> ir.Node:
    return next(n for n in model.graph if n.op_type == op_type and module_scopes(n) and module_scopes(n)[-1] == module)


def _perturb_weight(model: ir.Model, module: str) -> None:
    matmul = _node_in_module(model, module, "MatMul")
    weight = matmul.inputs[1]
    weight.const_value = ir.tensor(weight.const_value.numpy() * 1.05, name=weight.name)


def _change_epsilon(model: ir.Model, module: str) -> None:
    fused = [n for n in model.graph if n.op_type == "LayerNormalization" and module_scopes(n)[-1:] == [module]]
    if fused:
        fused[0].attributes["epsilon"] = ir.AttrFloat32("epsilon", 1.0)
        return
    add = _node_in_module(model, module, "Add")  # decomposed: variance + eps
    constant = add.inputs[1].producer()
    constant.attributes["value"] = ir.AttrTensor("value", ir.tensor(np.array(1.0, np.float32)))


@pytest.mark.parametrize("kind", ["legacy", "dynamo"])
@pytest.mark.parametrize(
    "plant, module",
    [(_perturb_weight, "encoder.encoders.0.feed_forward.w_1"), (_change_epsilon, "encoder.encoders.0.norm2")],
    ids=["weight", "epsilon"],
)
def test_planted_divergence_is_named_first(exported, torch_encoder, kind, plant, module):
    model = svsurgery.load(exported[kind])
    inputs = generate_inputs(model, exported[kind]).feeds
    faithful = svsurgery.diff(torch_encoder, model, inputs)  # the top-level API
    assert faithful.passed and faithful.compared >= 25, faithful.first
    plant(model, module)
    report = diff(torch_encoder, model, inputs)
    assert report.first is not None and report.first.module == module, report.first
    assert report.path[-1] is report.first and all(row.parity.passed for row in report.path[:-1])


def test_naive_float16_model_points_at_the_first_layer_norm_pow(tmp_path):
    """A naive fp16 conversion (onnxruntime's converter) of the 512-wide encoder: the first value that
    overflows under true float16 evaluation is the Pow of the first LayerNorm."""
    from onnxruntime.transformers import float16

    from svsurgery.testing.encoder import EncoderConfig, build_encoder
    from svsurgery.testing.export import export_legacy

    path = export_legacy(build_encoder(EncoderConfig.tiny(output_size=512, linear_units=1024)), tmp_path / "wide.onnx")
    naive = ir.from_proto(float16.convert_float_to_float16(onnx.load(str(path)), keep_io_types=True))
    original = svsurgery.load(path)
    report = diff_models(naive, original, generate_inputs(original, path).feeds)
    assert "true float16" in report.evaluation
    overflow = report.first_nonfinite
    assert overflow is not None and overflow.op_type == "Pow" and overflow.module == "encoder.encoders0.0.norm1", (
        overflow
    )
    assert overflow.parity.inf_count > 0
    # the float16 side's headroom is reported with it: below 1x (it already overflows), at that Pow
    assert report.headroom is not None and report.headroom["headroom"] < 1.0
    assert report.headroom["op_type"] == "Pow" and "overflowed" in report.headroom["lowest"][0]["what"]


def test_diff_command_and_its_plot(tmp_path, capsys, legacy_path):
    factory = tmp_path / "factory.py"
    factory.write_text(
        textwrap.dedent(
            """
        from svsurgery.testing.encoder import EncoderConfig, build_encoder

        def make():
            return build_encoder(EncoderConfig.tiny())
        """
        )
    )
    plot, report_path = tmp_path / "diff.png", tmp_path / "diff.json"
    code = main(
        ["diff", str(legacy_path), "--torch", f"{factory}:make", "--plot", str(plot), "--report", str(report_path)]
    )
    out = capsys.readouterr().out
    assert code == 0 and "no value introduces an error beyond tolerance" in out
    assert plot.stat().st_size > 10_000 and plot.read_bytes()[:4] == b"\x89PNG"
    report = json.loads(report_path.read_text())
    assert report["passed"] and report["compared"] == len(report["rows"]) > 25
    assert main(["diff", str(legacy_path)]) == 2
    assert "give one reference" in capsys.readouterr().err


def test_extract_reproduces_the_captured_outputs_bit_exactly(tmp_path, capsys, legacy_path):
    model = svsurgery.load(legacy_path)
    inputs = generate_inputs(model, legacy_path).feeds
    for name, depth in (
        ("/encoder/encoders.0/self_attn/Softmax", 2),
        ("/encoder/encoders.0/feed_forward/w_1/MatMul", 0),
    ):
        repro, feeds, expected, report = extract_repro(model, name, inputs, depth=depth)
        assert report.bit_exact and report.nodes >= 1
        out = svsurgery.runtime.run(repro, feeds, optimize=False)
        for key, value in expected.items():
            np.testing.assert_array_equal(out[key], value)
    output = tmp_path / "repro.onnx"
    code = main(
        ["extract", str(legacy_path), "--node", "/encoder/encoders.0/norm2/Div", "--depth", "3", "-o", str(output)]
    )
    assert code == 0 and "bit for bit" in capsys.readouterr().out
    recorded = golden.load(tmp_path / "repro.npz")
    assert "captured from" in recorded.meta["source"]
    assert main(["check", str(output), str(tmp_path / "repro.npz"), "--tolerance", "fp32-strict"]) == 0
    assert main(["extract", str(legacy_path), "--node", "no-such-node", "-o", str(tmp_path / "x.onnx")]) == 2
    assert "expected exactly one node" in capsys.readouterr().err


def _plant_weight(path, out, depth: float = 0.9) -> str:
    """A copy of the model at ``path`` with one MatMul weight negated, the MatMul at about ``depth``
    of the graph that reads a weight nothing else reads; returns that MatMul's name."""
    proto = onnx.load(str(path))
    weights = {t.name: t for t in proto.graph.initializer}
    readers = collections.Counter(name for node in proto.graph.node for name in node.input)
    matmuls = [
        node
        for node in proto.graph.node
        if node.op_type == "MatMul" and node.input[1] in weights and readers[node.input[1]] == 1
    ]
    planted = matmuls[int(depth * (len(matmuls) - 1))]
    weight = weights[planted.input[1]]
    weight.CopyFrom(onnx.numpy_helper.from_array(-onnx.numpy_helper.to_array(weight), weight.name))
    onnx.save(proto, str(out))
    return planted.name


def test_thousands_of_values_are_compared_in_bounded_memory(tmp_path):
    """SenseVoice-Small depth (8.8k nodes): every value compared, fetched 200 at a time, and the
    verdict is a real one: a weight negated deep in the graph is the first divergence, named."""
    from svsurgery.testing.encoder import EncoderConfig, build_encoder
    from svsurgery.testing.export import export_legacy

    path = export_legacy(build_encoder(EncoderConfig.small_depth()), tmp_path / "deep.onnx")
    planted = _plant_weight(path, tmp_path / "planted.onnx")
    report_path = tmp_path / "report.json"
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "svsurgery",
            "diff",
            str(tmp_path / "planted.onnx"),
            str(path),
            "--chunk",
            "200",
            "--report",
            str(report_path),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    report = json.loads(report_path.read_text())
    assert report["compared"] >= 5000 and not report["passed"]
    first = report["first"]
    assert first["node"] == planted and first["verdict"] == "introduces", first
    assert first["position"] > 0.8 * report["rows"][-1]["position"]  # deep in the graph
    assert all(row["verdict"] == "ok" for row in report["rows"] if row["position"] < first["position"])
    peak_kib = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before)
    assert peak_kib < 4 * 2**20, f"peak {peak_kib / 2**20:.1f} GiB"


# ----------------------------------------------------------------------------- capture, introduced vs inherited, intent


def _toy_module():
    """Three ways third-party torch code changes a tensor after a hook has seen it."""
    import torch
    from torch import nn

    class Memory(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.conv = nn.Conv1d(width, width, 3, padding=1, groups=width, bias=False)

        def forward(self, x):
            return self.conv(x.transpose(1, 2)).transpose(1, 2)  # a view of the Conv output

    class Toy(nn.Module):
        def __init__(self, width=8):
            super().__init__()
            self.memory = Memory(width)
            self.proj = nn.Linear(width, width)
            self.norm = nn.LayerNorm(width)

        def forward(self, x):
            x *= 2.0  # in place on the input itself (FunASR's encoder: xs_pad *= sqrt(d))
            h = self.memory(x)
            h += x  # in place on the module's output, a view (FunASR's SANM: x += inputs)
            a = self.proj(h)
            b = self.proj(a)  # a second call of the same module
            a += b  # in place on the first call's output, after the second call
            return self.norm(a)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return Toy().eval()


def test_capture_is_not_fooled_by_in_place_ops_views_or_repeated_calls(tmp_path):
    """Guards the forward-hook capture: outputs are copied when the hook fires (a caller's
    ``h += x`` on a returned view, ``a += b`` on a first call's output after a second call
    left the old capture at max rel ~84 and ~95 on a faithful export), and the module runs
    on copies of the feeds (its ``x *= 2`` used to double the array the ONNX model was fed)."""
    import torch

    module = _toy_module()
    x = np.random.default_rng(0).standard_normal((2, 5, 8)).astype(np.float32)
    path = tmp_path / "toy.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter's notices about the in-place ops it removes
        torch.onnx.export(
            _toy_module(),
            (torch.from_numpy(x.copy()),),
            str(path),
            dynamo=False,
            opset_version=14,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "b", 1: "t"}},
        )
    feeds = {"x": x.copy()}
    report = diff(module, svsurgery.load(path), feeds)
    np.testing.assert_array_equal(feeds["x"], x)  # the caller's array is untouched
    assert [row.module for row in report.rows] == ["memory.conv", "memory", "proj", "proj", "norm"]
    assert report.passed and all(row.parity.max_rel < 1e-4 for row in report.rows), [
        r.parity.max_rel for r in report.rows
    ]


def _two_model_pair(scale: float) -> tuple[ir.Model, ir.Model]:
    """d = x*w - x*v with v = w*(1 - 1e-3): a cancellation that magnifies the relative error
    of x*w. The candidate's w is scaled by ``scale``."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.linspace(0.5, 1.5, 8, dtype=np.float32)
    v = (w * (1 - 1e-3)).astype(np.float32)

    def build(weight):
        graph = helper.make_graph(
            [
                helper.make_node("Mul", ["x", "w"], ["a"], name="/scale/Mul"),
                helper.make_node("Mul", ["x", "v"], ["b"], name="/shifted/Mul"),
                helper.make_node("Sub", ["a", "b"], ["d"], name="/difference/Sub"),
                helper.make_node("Relu", ["d"], ["y"], name="/out/Relu"),
            ],
            "pair",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])],
            [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(v, "v")],
        )
        return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))

    return build((w * scale).astype(np.float32)), build(w)


def test_a_propagating_divergence_is_not_blamed_on_the_node_it_reaches():
    """Guards introduced vs inherited: x*w off by 5e-4 (within tolerance) becomes a 50 % error
    after the cancellation ``x*w - x*v``. The Sub computes exactly what it is given, so it
    only inherits; the old first-value-beyond-tolerance rule named it. No value introduces an
    error beyond tolerance, and the report says the errors add up from the Sub on."""
    model, reference = _two_model_pair(1 + 5e-4)
    inputs = {"x": np.abs(np.random.default_rng(0).standard_normal((2, 8))).astype(np.float32) + 1}
    report = diff_models(model, reference, inputs)
    rows = {row.value: row for row in report.rows}
    assert not rows["d"].parity.passed and rows["d"].parity.max_rel > 0.3  # beyond tolerance in total...
    assert rows["d"].verdict == "inherits" and rows["d"].introduced.max_rel == 0.0  # ...but the Sub is exact
    assert rows["a"].verdict == "ok" and 1e-4 < rows["a"].introduced.max_rel < 1e-2
    assert report.first is None and report.passed and report.first_inherited is rows["d"]
    model, reference = _two_model_pair(1.05)  # beyond tolerance at its source: that node is the culprit
    report = diff_models(model, reference, inputs)
    assert report.first is not None and report.first.value == "a" and not report.passed


def test_introduced_error_inside_a_subgraph_reading_outer_values():
    """The replay of a node with a body (If) feeds the outer values its branches capture: a
    constant changed inside the then-branch is introduced by the If, not by what it reads."""
    from onnx import TensorProto, helper, numpy_helper

    def build(bias):
        def branch(name, op):
            return helper.make_graph(
                [
                    helper.make_node(
                        "Constant", [], ["c_" + name], value=numpy_helper.from_array(np.float32(bias), "c")
                    ),
                    helper.make_node(op, ["a", "c_" + name], ["out_" + name]),
                ],
                name,
                [],
                [helper.make_tensor_value_info("out_" + name, TensorProto.FLOAT, [2, 4])],
            )

        graph = helper.make_graph(
            [
                helper.make_node("Mul", ["x", "w"], ["a"], name="/scale/Mul"),
                helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0, name="/flag/ReduceSum"),
                helper.make_node("Greater", ["s", "zero"], ["cond"], name="/flag/Greater"),
                helper.make_node(
                    "If",
                    ["cond"],
                    ["y"],
                    then_branch=branch("then", "Add"),
                    else_branch=branch("else", "Sub"),
                    name="/branch/If",
                ),
            ],
            "branchy",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
            [numpy_helper.from_array(np.full(4, 1.5, np.float32), "w"), numpy_helper.from_array(np.float32(0), "zero")],
        )
        return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))

    inputs = {"x": np.abs(np.random.default_rng(1).standard_normal((2, 4))).astype(np.float32) + 0.5}
    same = diff_models(build(1.0), build(1.0), inputs)
    assert same.passed and not same.notes and all(row.replayed_nodes >= 1 for row in same.rows)
    report = diff_models(build(3.0), build(1.0), inputs)
    assert report.first is not None and report.first.value == "y" and report.first.op_type == "If", report.first
    assert report.first.inherited.passed and not report.notes


def test_intended_mask_fill_is_no_divergence_in_either_order(tmp_path, capsys, legacy_path):
    """Guards provenance: ``diff original fixed`` (the README's order) named the -inf -> finite
    mask constant mask-fill changed on purpose as first divergence and first overflow and
    exited 1, while the reverse order exited 0. Both orders now exit 0; the same constant
    without the provenance is still reported; a weight planted on top of the fix is still
    named first, in both orders."""
    fixed = tmp_path / "fixed.onnx"
    assert main(["fix", str(legacy_path), "-o", str(fixed), "--rules", "mask-fill"]) == 0
    capsys.readouterr()
    for pair in ((legacy_path, fixed), (fixed, legacy_path)):
        report_path = tmp_path / "order.json"
        code = main(["diff", str(pair[0]), str(pair[1]), "--report", str(report_path)])
        out = " ".join(capsys.readouterr().out.split())
        data = json.loads(report_path.read_text())
        assert code == 0 and data["first"] is None and data["first_nonfinite"] is None, out[-1500:]
        assert len(data["intended"]) == 3 and set(data["intended"].values()) == {"mask-fill"}
        assert "changed on purpose" in out
    stripped = svsurgery.load(fixed)
    del stripped.metadata_props["svsurgery.rules_applied"]
    inputs = generate_inputs(stripped, legacy_path).feeds
    report = diff_models(svsurgery.load(legacy_path), stripped, inputs)
    assert (
        report.first_nonfinite is not None
        and report.first_nonfinite.value
        in json.loads(svsurgery.load(fixed).metadata_props["svsurgery.rules_applied"])[0]["changed_values"]
    )
    planted = svsurgery.load(fixed)
    _perturb_weight(planted, "encoder.encoders.0.feed_forward.w_1")
    for model, reference in ((planted, svsurgery.load(legacy_path)), (svsurgery.load(legacy_path), planted)):
        report = diff_models(model, reference, inputs)
        assert report.first is not None and report.first.module == "encoder.encoders.0.feed_forward.w_1", report.first


def test_diff_table_is_whole_at_80_columns(exported, torch_encoder):
    """Guards the terminal table: at 80 columns no figure is cut (``9.33e-…``) and no line is
    wider; the culprit's introduced and inherited errors are printed whole."""
    from rich.console import Console

    model = svsurgery.load(exported["legacy"])
    inputs = generate_inputs(model, exported["legacy"]).feeds
    _perturb_weight(model, "encoder.encoders.0.feed_forward.w_1")
    report = diff(torch_encoder, model, inputs)
    console = Console(width=80, record=True, force_terminal=False)
    report.render(console)
    text = console.export_text()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    first = report.first
    assert f"{first.introduced.max_rel:.1e}" in text and f"{first.inherited.max_rel:.1e}" in text
    assert "introduces" in text and "first divergence" in text


def test_state_dict_mismatch_lists_every_missing_and_unexpected_key(tmp_path):
    """Guards --weights errors: the line names the missing and unexpected keys and the shape
    mismatches (the first 20 of each, with how many more), not the first line of torch's error."""
    import torch

    (tmp_path / "wide.py").write_text(
        textwrap.dedent(
            """
        import torch

        def build():
            return torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(15)])
        """
        )
    )
    module = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(15)])
    state = {f"other.{key}": value for key, value in module.state_dict().items()}  # 30 unexpected, 30 missing
    state["0.weight"] = torch.zeros(5, 4)  # present, wrong shape
    torch.save(state, tmp_path / "weights.pt")
    with pytest.raises(BadInputError) as caught:
        load_module(f"{tmp_path / 'wide.py'}:build", tmp_path / "weights.pt")
    message = str(caught.value)
    assert "\n" not in message and "29 missing" in message and "30 unexpected" in message
    assert (
        "0.bias" in message and "other.0.weight" in message and ", and 9 more" in message and ", and 10 more" in message
    )
    assert "1 shape mismatch: 0.weight [5, 4] (module [4, 4])" in message


def test_a_float16_model_is_compared_with_its_float32_original_from_the_same_inputs():
    """Guards: inputs generated for MODEL were fed unchanged to REFERENCE, so `diff half.onnx
    original.onnx` failed with onnxruntime's "Unexpected input data type"; each side now gets
    the inputs in the types it declares."""
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])],
        [weight],
    )
    original = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))
    half, _ = convert_to_float16(original, keep_io_types=False)
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 8)).astype(np.float16)}
    report = diff_models(half, original, feeds)
    assert report.passed and report.compared >= 2, report.notes
