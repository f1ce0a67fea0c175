"""diff names the first diverging module; extract cuts a repro that reproduces bit for bit."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnx_ir as ir
import pytest

import svsurgery
from svsurgery import golden, patch
from svsurgery.cli.main import main
from svsurgery.layerwise import diff, diff_models, module_scopes
from svsurgery.parity.inputs import generate_inputs
from svsurgery.repro import extract_repro


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
    assert overflow is not None and overflow.op_type == "Pow" and overflow.module == "encoder.encoders0.0.norm1", overflow
    assert overflow.parity.inf_count > 0


def test_diff_command_and_its_plot(tmp_path, capsys, legacy_path):
    factory = tmp_path / "factory.py"
    factory.write_text(textwrap.dedent(
        """
        from svsurgery.testing.encoder import EncoderConfig, build_encoder

        def make():
            return build_encoder(EncoderConfig.tiny())
        """
    ))  # fmt: skip
    plot, report_path = tmp_path / "diff.png", tmp_path / "diff.json"
    code = main(["diff", str(legacy_path), "--torch", f"{factory}:make", "--plot", str(plot), "--report", str(report_path)])
    out = capsys.readouterr().out
    assert code == 0 and "no value beyond tolerance" in out
    assert plot.stat().st_size > 10_000 and plot.read_bytes()[:4] == b"\x89PNG"
    report = json.loads(report_path.read_text())
    assert report["passed"] and report["compared"] == len(report["rows"]) > 25
    assert main(["diff", str(legacy_path)]) == 2
    assert "give one reference" in capsys.readouterr().err


def test_extract_reproduces_the_captured_outputs_bit_exactly(tmp_path, capsys, legacy_path):
    model = svsurgery.load(legacy_path)
    inputs = generate_inputs(model, legacy_path).feeds
    for name, depth in (("/encoder/encoders.0/self_attn/Softmax", 2), ("/encoder/encoders.0/feed_forward/w_1/MatMul", 0)):
        repro, feeds, expected, report = extract_repro(model, name, inputs, depth=depth)
        assert report.bit_exact and report.nodes >= 1
        out = svsurgery.runtime.run(repro, feeds, optimize=False)
        for key, value in expected.items():
            np.testing.assert_array_equal(out[key], value)
    output = tmp_path / "repro.onnx"
    code = main(["extract", str(legacy_path), "--node", "/encoder/encoders.0/norm2/Div", "--depth", "3", "-o", str(output)])
    assert code == 0 and "bit for bit" in capsys.readouterr().out
    recorded = golden.load(tmp_path / "repro.npz")
    assert "captured from" in recorded.meta["source"]
    assert main(["check", str(output), str(tmp_path / "repro.npz"), "--tolerance", "fp32-strict"]) == 0
    assert main(["extract", str(legacy_path), "--node", "no-such-node", "-o", str(tmp_path / "x.onnx")]) == 2
    assert "expected exactly one node" in capsys.readouterr().err


def test_thousands_of_values_are_compared_in_bounded_memory(tmp_path):
    """SenseVoice-Small depth (8.8k nodes): every value compared, fetched 200 at a time."""
    from svsurgery.testing.encoder import EncoderConfig, build_encoder
    from svsurgery.testing.export import export_legacy

    path = export_legacy(build_encoder(EncoderConfig.small_depth()), tmp_path / "deep.onnx")
    report_path = tmp_path / "report.json"
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    done = subprocess.run(
        [sys.executable, "-m", "svsurgery", "diff", str(path), str(path), "--chunk", "200", "--report", str(report_path)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(report_path.read_text())
    assert report["compared"] >= 5000 and report["passed"]
    peak_kib = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before)
    assert peak_kib < 4 * 2**20, f"peak {peak_kib / 2**20:.1f} GiB"
