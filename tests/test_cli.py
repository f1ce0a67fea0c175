"""The command line: inspect, exit codes, and one clear line for every kind of bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import onnx
import pytest

from svsurgery._version import __version__
from svsurgery.cli.main import main

FUNASR_SIGNATURE = {
    "speech": ("FLOAT", ["batch_size", "feats_length", 560]),
    "speech_lengths": ("INT32", ["batch_size"]),
    "language": ("INT32", ["batch_size"]),
    "textnorm": ("INT32", ["batch_size"]),
}


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"svsurgery {__version__}"


def test_inspect_json_on_the_funasr_style_export(capsys, legacy_path, encoder_config):
    code, out, _ = _cli(capsys, "inspect", str(legacy_path), "--json")
    assert code == 0
    summary = json.loads(out)
    assert {i["name"]: (i["dtype"], i["shape"]) for i in summary["inputs"]} == FUNASR_SIGNATURE
    assert {o["name"]: (o["dtype"], o["shape"]) for o in summary["outputs"]} == {
        "ctc_logits": ("FLOAT", ["batch_size", "logits_length", encoder_config.vocab_size]),
        "encoder_out_lens": ("INT32", ["batch_size"]),
    }
    assert summary["opset_imports"] == {"": 14}
    assert summary["ir_version"] == onnx.load(str(legacy_path)).ir_version
    assert summary["producer_name"] == "pytorch"
    assert summary["op_types"]["ReduceMean"] == 16 and summary["subgraph_count"] == 0
    proto = onnx.load(str(legacy_path))
    assert summary["initializer_count"] == len(proto.graph.initializer)
    assert summary["parameter_count"] >= sum(onnx.numpy_helper.to_array(t).size for t in proto.graph.initializer)


def test_inspect_table_shows_the_same_content(capsys, legacy_path, dynamo_path):
    code, out, _ = _cli(capsys, "inspect", str(legacy_path))
    assert code == 0
    for name, (dtype, shape) in FUNASR_SIGNATURE.items():
        row = next(line for line in out.splitlines() if f" {name} " in line)
        assert dtype in row and "[" + ", ".join(map(str, shape)) + "]" in row
    assert "ai.onnx 14" in out and "ReduceMean" in out
    code, out, _ = _cli(capsys, "inspect", str(dynamo_path))
    assert code == 0 and "LayerNormalization" in out and "external data: sensevoice_dynamo.onnx.data" in out


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _bad_inputs(tmp_path, legacy_path, dynamo_path) -> dict[str, tuple[str, str]]:
    """case -> (path, what the one-line error must say)."""
    proto = onnx.load(str(legacy_path))
    legacy_bytes = legacy_path.read_bytes()
    cases = {
        "missing": (str(tmp_path / "nope.onnx"), "no such file"),
        "directory": (str(tmp_path), "is a folder"),
        "empty": (str(_write(tmp_path / "empty.onnx", b"")), "empty file"),
        "random bytes": (str(_write(tmp_path / "random.onnx", bytes(range(256)) * 7)), "do not parse as an ONNX model"),
        "truncated": (str(_write(tmp_path / "truncated.onnx", legacy_bytes[: len(legacy_bytes) // 2])), "truncated"),
    }
    boundary = onnx.ModelProto()
    boundary.CopyFrom(proto)
    del boundary.opset_import[:]  # a cut that lands on a field boundary still parses
    cases["truncated at a field boundary"] = (
        str(_write(tmp_path / "cut.onnx", boundary.SerializeToString())),
        "no opset imports",
    )
    newer_ir = onnx.ModelProto()
    newer_ir.CopyFrom(proto)
    newer_ir.ir_version = onnx.IR_VERSION + 1
    cases["unsupported IR version"] = (str(_write(tmp_path / "ir.onnx", newer_ir.SerializeToString())), "IR version")
    for version, label in ((onnx.defs.onnx_opset_version() + 1, "newer"), (5, "older")):
        changed = onnx.ModelProto()
        changed.CopyFrom(proto)
        changed.opset_import[0].version = version
        cases[f"opset {label}"] = (
            str(_write(tmp_path / f"opset{version}.onnx", changed.SerializeToString())),
            f"opset {version} is {label}",
        )
    lonely = tmp_path / "no_data"
    lonely.mkdir()
    shutil.copy(dynamo_path, lonely / dynamo_path.name)
    cases["external data missing"] = (str(lonely / dynamo_path.name), "missing external data file")
    return cases


def test_every_bad_input_gets_one_line_and_exit_2(capsys, tmp_path, legacy_path, dynamo_path):
    for case, (path, message) in _bad_inputs(tmp_path, legacy_path, dynamo_path).items():
        code, out, err = _cli(capsys, "inspect", path)
        assert code == 2, case
        assert out == "", case
        lines = err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in err, (case, err)
        assert lines[0].startswith("svsurgery inspect: error: "), case


def test_console_script_and_module_print_no_traceback(tmp_path):
    bad = _write(tmp_path / "random.onnx", b"\x08\x07garbage" * 50)
    for command in (["svsurgery"], [sys.executable, "-m", "svsurgery"]):
        done = subprocess.run([*command, "inspect", str(bad)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_bad_usage_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["inspect"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["no-such-verb"])
    assert exit_info.value.code == 2
