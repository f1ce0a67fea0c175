"""Every command against bad input: one line on stderr, exit 2, no traceback, no file of the
user's changed (sha256 before and after) and nothing left behind.

Guards issue 13 §2 and §4: outputs written onto the command's own inputs (a model turned
into an npz or JSON, a golden file overwritten, two outputs on one path), tracebacks for
missing output folders and impossible tolerances, and the usual broken model files, for
every command that takes them.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from svsurgery.cli.main import main


def _matmul(path: Path) -> Path:
    weight = numpy_helper.from_array(np.eye(4, dtype=np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["logits"], name="mm")],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", 4])],
        [weight],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
    return path


def _escaping(path: Path) -> Path:
    """A model whose external data points outside its folder."""
    model = onnx.load(str(_matmul(path)))
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="../outside.bin")
    onnx.save(model, str(path))
    return path


@pytest.fixture
def folder(tmp_path, legacy_path):
    """A folder with good and broken files; every test checks none of them changes."""
    good = _matmul(tmp_path / "model.onnx")
    _matmul(tmp_path / "other.onnx")
    (tmp_path / "empty.onnx").write_bytes(b"")
    (tmp_path / "random.onnx").write_bytes(bytes(range(256)) * 9)
    (tmp_path / "truncated.onnx").write_bytes(good.read_bytes()[:150])
    (tmp_path / "outside.bin").write_bytes(b"\0" * 64)
    nested = tmp_path / "nested"
    nested.mkdir()
    _escaping(nested / "escaping.onnx")
    np.savez(tmp_path / "in.npz", x=np.ones((2, 4), np.float32))
    assert main(["golden", str(good), "-o", str(tmp_path / "golden.npz")]) == 0
    shutil.copy(legacy_path, tmp_path / "encoder.onnx")
    return tmp_path


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(folder.rglob("*"))
    }


def _run(capsys, argv: list[str]) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exit_info:  # usage errors: argparse exits
        code = exit_info.code
    return code, capsys.readouterr().err


def _assert_refused(capsys, folder: Path, argv: list[str], message: str) -> None:
    before = _snapshot(folder)
    code, err = _run(capsys, argv)
    lines = err.strip().splitlines()
    assert code == 2, (argv, code, err)
    assert len(lines) == 1 and "Traceback" not in err, (argv, err)
    assert message in lines[0], (argv, lines[0])
    assert _snapshot(folder) == before, argv  # nothing changed, nothing left behind


BAD_MODELS = {
    "missing": ("nope.onnx", "no such file"),
    "folder": ("nested", "is a folder"),
    "empty": ("empty.onnx", "empty file"),
    "random bytes": ("random.onnx", "do not parse as an ONNX model"),
    "truncated": ("truncated.onnx", "truncated"),
    "escaping external data": ("nested/escaping.onnx", "outside the model's folder"),
}


def _commands(folder: Path, model: str) -> dict[str, list[str]]:
    out = str(folder / "out")
    return {
        "inspect": ["inspect", model],
        "fix": ["fix", model, "-o", out + ".onnx"],
        "fp16": ["fp16", model, "-o", out + ".onnx"],
        "golden": ["golden", model, "-o", out + ".npz"],
        "check": ["check", model, str(folder / "golden.npz")],
        "diff": ["diff", model, str(folder / "other.onnx")],
        "extract": ["extract", model, "--node", "mm", "-o", out + ".onnx"],
        "fuse-preproc": ["fuse-preproc", model, "-o", out + ".onnx"],
    }


@pytest.mark.parametrize("case", sorted(BAD_MODELS))
def test_every_command_refuses_every_broken_model_in_one_line(capsys, folder, case):
    name, message = BAD_MODELS[case]
    for _verb, argv in _commands(folder, str(folder / name)).items():
        _assert_refused(capsys, folder, argv, message)


def test_no_command_writes_onto_a_file_it_reads(capsys, folder):
    model, golden, encoder = (str(folder / n) for n in ("model.onnx", "golden.npz", "encoder.onnx"))
    attempts = {
        "golden -o the model": (["golden", model, "-o", model], "refusing to overwrite the input model"),
        "extract -o the model": (
            ["extract", model, "--node", "mm", "-o", model],
            "refusing to overwrite the input model",
        ),
        "check --report the model": (
            ["check", model, golden, "--report", model],
            "refusing to overwrite the input model",
        ),
        "check --report the golden file": (
            ["check", model, golden, "--report", golden],
            "refusing to overwrite the golden file",
        ),
        "fix --report the model": (
            ["fix", model, "-o", str(folder / "f.onnx"), "--report", model],
            "refusing to overwrite the input model",
        ),
        "fix -o the model": (["fix", model, "-o", model], "refusing to overwrite the input model"),
        "fp16 --report the model": (["fp16", model, "--report", model], "refusing to overwrite the input model"),
        "diff --report the reference": (
            ["diff", model, str(folder / "other.onnx"), "--report", str(folder / "other.onnx")],
            "refusing to overwrite the reference model",
        ),
        "diff --plot the model": (
            ["diff", model, str(folder / "other.onnx"), "--plot", model],
            "refusing to overwrite the input model",
        ),
        "fuse-preproc --report the encoder": (
            ["fuse-preproc", encoder, "--report", encoder],
            "refusing to overwrite the input model",
        ),
        "extract's npz onto --inputs": (
            ["extract", model, "--node", "mm", "--inputs", str(folder / "in.npz"), "-o", str(folder / "in.onnx")],
            "refusing to overwrite the --inputs file",
        ),
        "extract's model and npz on one path": (
            ["extract", model, "--node", "mm", "-o", str(folder / "rep.npz")],
            "written there too",
        ),
        "inspect --report the model": (["inspect", model, "--report", model], "refusing to overwrite the input model"),
        "golden -o a missing folder": (["golden", model, "-o", str(folder / "missing" / "g.npz")], "does not exist"),
        "fix --report a missing folder": (
            ["fix", model, "-o", str(folder / "f.onnx"), "--report", str(folder / "missing" / "r.json")],
            "does not exist",
        ),
    }
    for _case, (argv, message) in attempts.items():
        _assert_refused(capsys, folder, argv, message)


def test_impossible_numbers_are_usage_errors_before_any_work(capsys, folder):
    model, golden = str(folder / "model.onnx"), str(folder / "golden.npz")
    attempts = {
        "--max-abs -1": ["fix", model, "--max-abs", "-1"],
        "--max-rel -0.5": ["fix", model, "--max-rel", "-0.5"],
        "--min-cosine 5": ["check", model, golden, "--min-cosine", "5"],
        "--max-abs nan": ["fp16", model, "--max-abs", "nan"],
        "--min-argmax -3": ["fix", model, "--min-argmax", "-3"],
        "--depth -1": ["extract", model, "--node", "mm", "--depth", "-1", "-o", str(folder / "r.onnx")],
        "--chunk 0": ["diff", model, str(folder / "other.onnx"), "--chunk", "0"],
        "--opset 3": ["frontend", "-o", str(folder / "f.onnx"), "--opset", "3"],
    }
    for _case, argv in attempts.items():
        _assert_refused(capsys, folder, argv, "expected")


def test_inputs_that_do_not_fit_are_named_before_running(capsys, folder):
    """--inputs arrays with a wrong fixed dimension or mismatched batch: one line naming the array."""
    model = str(folder / "model.onnx")
    np.savez(folder / "wide.npz", x=np.ones((2, 5), np.float32))
    _assert_refused(capsys, folder, ["fix", model, "--inputs", str(folder / "wide.npz")], "'x' has 5 along axis 1")
    _assert_refused(
        capsys,
        folder,
        ["golden", model, "--inputs", str(folder / "nope.npz"), "-o", str(folder / "g2.npz")],
        "no such inputs file",
    )


def test_a_model_that_cannot_run_on_generated_inputs_is_one_line(capsys, folder):
    """Generated inputs the model rejects at run time (a Pad wider than the generated signal):
    one line naming the inputs and --inputs, no traceback, for every command that runs it."""
    pad = helper.make_graph(
        [helper.make_node("Pad", ["x", "pads"], ["logits"], mode="reflect")],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", "m"])],
        [numpy_helper.from_array(np.array([0, 10**6, 0, 10**6], np.int64), "pads")],
    )
    path = folder / "pad.onnx"
    onnx.save(helper.make_model(pad, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
    for argv in (
        ["fix", str(path), "-o", str(folder / "p.onnx")],
        ["golden", str(path), "-o", str(folder / "p.npz")],
        ["fp16", str(path), "-o", str(folder / "p.onnx")],
    ):
        _assert_refused(capsys, folder, argv, "--inputs")
