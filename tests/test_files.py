"""Every file a command writes: checked before any work, written atomically, a model and its
external data switched together, and nothing left behind by a run killed halfway."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import svsurgery
from svsurgery.cli.main import main
from svsurgery.errors import BadInputError
from svsurgery.files import FilePlan, staging_name, write_text_atomically
from svsurgery.runtime import run


def _matmul_model(path: Path, scale: float, bias: float | None = None) -> Path:
    """y = x @ (scale * ones[64, 64]) (+ bias, stored before the weight): outputs tell which
    weights a file holds, and a graph read with another model's data file reads garbage."""
    weight = numpy_helper.from_array(np.full((64, 64), scale, np.float32), "W")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y" if bias is None else "xw"])]
    initializers = [weight]
    if bias is not None:
        nodes.append(helper.make_node("Add", ["xw", "B"], ["y"]))
        initializers.insert(0, numpy_helper.from_array(np.full((1, 64), bias, np.float32), "B"))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 64])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.save(model, str(path))
    return path


def _y(path: Path) -> float:
    return float(run(path, {"x": np.ones((1, 64), np.float32)})["y"][0, 0])


def test_plan_refuses_an_output_onto_an_input_by_identity(tmp_path):
    """Outputs are compared with inputs by file identity: a hard link or a symlink to the
    input is the input."""
    source = tmp_path / "golden.npz"
    source.write_bytes(b"x")
    (tmp_path / "hard.npz").hardlink_to(source)
    (tmp_path / "soft.npz").symlink_to(source)
    plan = FilePlan("check")
    plan.read(source, "golden file")
    for alias in ("golden.npz", "hard.npz", "soft.npz"):
        with pytest.raises(BadInputError, match="refusing to overwrite the golden file"):
            plan.write(tmp_path / alias, "--report")


def test_plan_refuses_two_outputs_on_one_path_and_missing_folders(tmp_path):
    plan = FilePlan("extract")
    plan.write(tmp_path / "rep.npz", "repro model (-o)")
    with pytest.raises(BadInputError, match="written there too"):
        plan.write(tmp_path / "rep.npz", "repro tensors")
    with pytest.raises(BadInputError, match="does not exist"):
        plan.write(tmp_path / "missing" / "r.json", "--report")
    with pytest.raises(BadInputError, match="is a folder"):
        plan.write(tmp_path, "--report")


def test_stale_staging_of_a_dead_writer_is_removed_and_a_live_ones_kept(tmp_path):
    """A staging file carries its writer's pid: the next write removes those whose writer is
    gone (SIGKILL, power loss) and leaves a running writer's alone."""
    target = tmp_path / "r.json"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".r.json.tmp-{int(dead.stdout)}-0123abcd"
    stale.write_text("half")
    stale_folder = tmp_path / f".r.json.tmp-{int(dead.stdout)}-89abcdef"
    stale_folder.mkdir()
    live = staging_name(target)
    live.write_text("in progress")
    write_text_atomically(target, "{}")
    assert target.read_text() == "{}\n"
    assert not stale.exists() and not stale_folder.exists() and live.exists()


_KILL_AT_RENAME = textwrap.dedent(
    """
    import os, signal, sys
    import svsurgery

    calls = 0
    real_replace = os.replace

    def replace(source, target):
        global calls
        calls += 1
        if calls == int(sys.argv[3]):
            os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(source, target)

    os.replace = replace
    svsurgery.save(svsurgery.load(sys.argv[1]), sys.argv[2], external_data=True)
    """
)


@pytest.mark.parametrize("kill_at", [1, 2])
def test_a_save_killed_between_its_renames_never_pairs_a_model_with_other_data(tmp_path, kill_at):
    """Guards issue 13 §3: the data file used to be renamed over the old one before the model
    was renamed; killed between the two, out.onnx was the old graph with the new weights.
    Now the new data gets a fresh name and the model is renamed last: killed at either
    rename, out.onnx is the old pair or the new pair, whole; the next save cleans up."""
    old = _matmul_model(tmp_path / "old.onnx", 1.0)
    new = _matmul_model(tmp_path / "new.onnx", 2.0, bias=1000.0)
    out = tmp_path / "out.onnx"
    svsurgery.save(svsurgery.load(old), out, external_data=True)
    assert _y(out) == 64.0
    script = tmp_path / "kill.py"
    script.write_text(_KILL_AT_RENAME)
    done = subprocess.run(
        [sys.executable, str(script), str(new), str(out), str(kill_at)], capture_output=True, text=True
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert _y(out) in (64.0, 1128.0)  # loads, and its weights are its own: the old pair or the new pair
    svsurgery.validate_file(out)
    svsurgery.save(svsurgery.load(new), out, external_data=True)
    assert _y(out) == 1128.0
    referenced = {t.location for t in svsurgery.model_io.external_tensors(svsurgery.load(out))}
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["kill.py", "new.onnx", "old.onnx", "out.onnx", *referenced]), left


def test_resaving_keeps_one_data_file_and_never_touches_an_unrelated_one(tmp_path):
    """A save over an earlier one removes the data file the earlier model used; a data file
    named like ours that no model of ours references (another tool's) is never touched."""
    source = _matmul_model(tmp_path / "m.onnx", 3.0)
    out = tmp_path / "out.onnx"
    (tmp_path / "out.onnx.data").write_bytes(b"someone else's")
    for _ in range(3):
        svsurgery.save(svsurgery.load(source), out, external_data=True)
        assert _y(out) == 192.0
    datas = sorted(p.name for p in tmp_path.glob("out.onnx*.data"))
    assert len(datas) == 2 and (tmp_path / "out.onnx.data").read_bytes() == b"someone else's", datas


def test_interrupt_during_the_work_writes_nothing_and_after_the_writes_reports_success(tmp_path, capsys, monkeypatch):
    """SIGTERM is handled like Ctrl-C; an interrupt before the output is complete leaves
    nothing (exit 2), one that arrives once every output is written reports success (exit 0)."""
    source = _matmul_model(tmp_path / "m.onnx", 1.0)
    out = tmp_path / "front.onnx"
    from svsurgery.cli import arguments

    real_emit = arguments.ReportArgs.emit

    def interrupt_after_writing(args, report, console):
        real_emit(args, report, console)
        raise KeyboardInterrupt

    monkeypatch.setattr(arguments.ReportArgs, "emit", staticmethod(interrupt_after_writing))
    report = tmp_path / "r.json"
    code = main(["fix", str(source), "-o", str(out), "--report", str(report)])
    err = capsys.readouterr().err
    assert code == 0 and "they are complete" in err and out.is_file() and report.is_file(), err

    def interrupt_before_writing(model, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr("svsurgery.engine.fix", interrupt_before_writing)
    out.unlink()
    report.unlink()
    code = main(["fix", str(source), "-o", str(out), "--report", str(report)])
    err = capsys.readouterr().err
    assert code == 2 and "interrupted" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
