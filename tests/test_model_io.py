"""Model I/O: lazy external data, atomic saves, refusing to overwrite the input, the validity gate."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

import svsurgery
import svsurgery.runtime as runtime
from svsurgery import model_io as svs_io
from svsurgery.errors import BadInputError, CheckFailedError
from svsurgery.runtime import run


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _folder_state(folder) -> dict[str, str]:
    return {p.name: _digest(p) for p in sorted(folder.iterdir()) if p.is_file()} | {
        p.name: "dir" for p in folder.iterdir() if p.is_dir()
    }


@pytest.fixture()
def dynamo_copy(tmp_path, dynamo_path):
    for path in dynamo_path.parent.glob(dynamo_path.name + "*"):
        shutil.copy(path, tmp_path / path.name)
    return tmp_path / dynamo_path.name


def test_external_data_is_mapped_lazily(dynamo_path):
    model = svsurgery.load(dynamo_path)
    tensors = svs_io.external_tensors(model)
    assert tensors and all(isinstance(t, ir.ExternalTensor) for t in tensors)
    assert all(t._array is None for t in tensors), "load() must not read external data"
    assert tensors[0].numpy().size == tensors[0].size
    assert tensors[0]._array is not None


def test_save_round_trip_is_bit_identical(tmp_path, legacy_path, dynamo_copy, feeds):
    for source in (legacy_path, dynamo_copy):
        model = svsurgery.load(source)
        written = svsurgery.save(model, tmp_path / f"copy_{source.name}")
        before, after = run(source, feeds), run(written, feeds)
        for name in before:
            np.testing.assert_array_equal(before[name], after[name])
    # external data is kept as external data, beside the new file
    assert (tmp_path / f"copy_{dynamo_copy.name}.data").is_file()


def test_save_switches_to_external_data_above_the_protobuf_limit(tmp_path, legacy_path, monkeypatch):
    """The legacy export has no external data; over the limit its weights go to ``big.onnx.data``
    beside the model, and the model read back maps them from there."""
    small = svsurgery.save(svsurgery.load(legacy_path), tmp_path / "small.onnx")
    assert [p.name for p in tmp_path.iterdir()] == ["small.onnx"]  # below the limit: one self-contained file
    assert not svs_io.external_tensors(svsurgery.load(small))

    monkeypatch.setattr(svs_io, "EXTERNAL_DATA_THRESHOLD", 1024)  # stand-in for 2 GB
    written = svsurgery.save(svsurgery.load(legacy_path), tmp_path / "big.onnx")
    data = tmp_path / "big.onnx.data"
    assert data.is_file()
    reloaded = svsurgery.load(written)
    weights = [v.const_value for v in reloaded.graph.initializers.values() if v.const_value.nbytes >= 1024]
    assert weights and all(isinstance(t, ir.ExternalTensor) for t in weights)  # big ones all outside
    assert {Path(t.path).resolve() for t in weights} == {data.resolve()}
    assert data.stat().st_size >= sum(t.nbytes for t in weights)
    assert written.stat().st_size < sum(t.nbytes for t in weights)  # the .onnx holds no weight bytes
    proto = onnx.load(str(written), load_external_data=False)
    assert {t.name for t in proto.graph.initializer if t.data_location == TensorProto.EXTERNAL} >= {
        v.name for v in reloaded.graph.initializers.values() if v.const_value.nbytes >= 1024
    }
    svsurgery.validate_file(written)


def test_save_refuses_to_overwrite_the_input(dynamo_copy, legacy_path, tmp_path):
    shutil.copy(legacy_path, tmp_path / "legacy.onnx")
    for source in (tmp_path / "legacy.onnx", dynamo_copy):
        state = _folder_state(tmp_path)
        with pytest.raises(BadInputError, match="refusing to overwrite the input"):
            svsurgery.save(svsurgery.load(source), source)
        assert _folder_state(tmp_path) == state


def test_in_place_save_of_external_data_model_keeps_a_valid_model(dynamo_copy, feeds):
    expected = run(dynamo_copy, feeds)
    model = svsurgery.load(dynamo_copy)
    model.metadata_props["note"] = "patched in place"
    svsurgery.save(model, dynamo_copy, overwrite_input=True)
    reloaded = svsurgery.load(dynamo_copy)
    assert reloaded.metadata_props["note"] == "patched in place"
    for name, value in run(dynamo_copy, feeds).items():
        np.testing.assert_array_equal(value, expected[name])
    # the in-memory model still holds its weights after its data file was replaced
    for name, value in run(model, feeds).items():
        np.testing.assert_array_equal(value, expected[name])


@pytest.mark.parametrize("failure_point", ["serialize", "validate", "rename"])
def test_exception_during_save_leaves_no_output_and_input_untouched(tmp_path, dynamo_copy, monkeypatch, failure_point):
    model = svsurgery.load(dynamo_copy)
    state = _folder_state(tmp_path)
    target = tmp_path / "out.onnx"

    def explode(*args, **kwargs):
        if failure_point == "serialize":  # leave a partial file behind first, as a crash mid-write would
            path = args[1]
            path.write_bytes(b"partial")
        raise RuntimeError("injected failure")

    if failure_point == "serialize":
        monkeypatch.setattr(svs_io.ir, "save", explode)
    elif failure_point == "validate":
        monkeypatch.setattr(svs_io, "validate_file", explode)
    else:
        real_replace = svs_io.os.replace

        def replace(src, dst):
            if str(dst).endswith("out.onnx"):
                raise OSError("injected failure")
            return real_replace(src, dst)

        monkeypatch.setattr(svs_io.os, "replace", replace)
    with pytest.raises((RuntimeError, OSError), match="injected failure"):
        svsurgery.save(model, target)
    assert not target.exists()
    new_files = set(_folder_state(tmp_path)) - set(state)
    if failure_point == "rename":
        # the data file is renamed first; the model file never appears, so nothing loads half-written
        assert new_files <= {"out.onnx.data"}
    else:
        assert new_files == set()
    assert {k: v for k, v in _folder_state(tmp_path).items() if k in state} == state


def _model_with(nodes, inputs, outputs, initializers=(), opset=17, domains=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)


def test_validity_gate_names_the_node_for_checker_failures(tmp_path):
    proto = _model_with(
        [helper.make_node("Add", ["x", "k"], ["y"], name="bad_add")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [helper.make_tensor("k", TensorProto.INT64, [2], [1, 2])],
    )
    model = ir.from_proto(proto)
    with pytest.raises(CheckFailedError, match="node 'bad_add' \\(Add\\)"):
        svsurgery.validate(model)
    with pytest.raises(CheckFailedError, match="bad_add"):
        svsurgery.save(model, tmp_path / "bad.onnx")
    assert list(tmp_path.iterdir()) == []


def test_validity_gate_catches_what_only_onnxruntime_refuses(tmp_path):
    proto = _model_with(
        [helper.make_node("Frobnicate", ["x"], ["y"], name="custom_op", domain="com.example")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        domains=["com.example"],
    )
    with pytest.raises(CheckFailedError, match=r"onnxruntime cannot load it.*custom_op"):
        svsurgery.save(ir.from_proto(proto), tmp_path / "custom.onnx")
    assert list(tmp_path.iterdir()) == []


def _external_data_model(tmp_path, location: str, offset: int = 0):
    weight = np.arange(16, dtype=np.float32)
    tensor = onnx.numpy_helper.from_array(weight, "w")
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(weight.nbytes))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    proto = _model_with(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [16])],
        [tensor],
    )
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "w.bin").write_bytes(weight.tobytes())
    (tmp_path / "secret.bin").write_bytes(weight.tobytes())
    path = model_dir / "m.onnx"
    path.write_bytes(proto.SerializeToString())
    return path


def test_external_data_inside_the_folder_loads(tmp_path):
    model = svsurgery.load(_external_data_model(tmp_path, "w.bin"))
    out = run(model, {"x": np.zeros(16, np.float32)})["y"]
    np.testing.assert_array_equal(out, np.arange(16, dtype=np.float32))


@pytest.mark.parametrize(
    ("location", "offset", "message"),
    [
        ("../secret.bin", 0, "outside the model's folder"),
        ("/etc/passwd", 0, "absolute path"),
        ("w.bin", 8, "truncated external data"),
        ("nope.bin", 0, "does not exist"),
    ],
)
def test_untrusted_external_data_is_refused(tmp_path, location, offset, message):
    with pytest.raises(BadInputError, match=message):
        svsurgery.load(_external_data_model(tmp_path, location, offset))


def test_symlink_escaping_the_folder_is_refused(tmp_path):
    path = _external_data_model(tmp_path, "link.bin")
    (path.parent / "link.bin").symlink_to(tmp_path / "secret.bin")
    with pytest.raises(BadInputError, match="outside the model's folder"):
        svsurgery.load(path)


def test_models_over_the_protobuf_limit_still_validate_and_run(legacy_path, feeds, monkeypatch):
    """Over the limit the validity gate and sessions go through files (a ModelProto that big cannot
    be serialized): the in-memory path must not be taken at all."""
    expected = run(legacy_path, feeds)
    monkeypatch.setattr(svs_io, "EXTERNAL_DATA_THRESHOLD", 1024)  # stand-in for 2 GB: go through files
    monkeypatch.setattr(runtime, "EXTERNAL_DATA_THRESHOLD", 1024)

    def in_memory(*args, **kwargs):
        raise AssertionError("a model over the protobuf limit was serialized in memory")

    monkeypatch.setattr(svs_io, "to_proto", in_memory)
    monkeypatch.setattr(runtime, "to_proto", in_memory)
    model = svsurgery.load(legacy_path)
    session, proto = svs_io.validate_with_proto(model)
    assert proto is None and session is not None  # checked from files
    for name, value in run(model, feeds).items():
        np.testing.assert_array_equal(value, expected[name])
