"""LFR and CMVN vs FunASR's apply_lfr/apply_cmvn; am.mvn and metadata parsing; the frontend command."""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
import pytest
from frontend_support import graph_features

import svsurgery
from svsurgery import frontend
from svsurgery.cli.main import main
from svsurgery.errors import BadInputError
from svsurgery.frontend import numpy_statement
from svsurgery.frontend._ops import GraphOps
from svsurgery.frontend.build import mask_frames
from svsurgery.frontend.cmvn import cmvn_graph
from svsurgery.frontend.lfr import lfr_graph
from svsurgery.runtime import inference_session
from svsurgery.testing import audio

MAX_ABS_LFR_CMVN = 1e-4


def _funasr_apply_lfr(inputs: np.ndarray, lfr_m: int, lfr_n: int) -> np.ndarray:
    """FunASR's apply_lfr (funasr_onnx WavFrontend), restated line by line as the oracle."""
    LFR_inputs = []
    T = inputs.shape[0]
    T_lfr = int(np.ceil(T / lfr_n))
    left_padding = np.tile(inputs[0], ((lfr_m - 1) // 2, 1))
    inputs = np.vstack((left_padding, inputs))
    T = T + (lfr_m - 1) // 2
    for i in range(T_lfr):
        if lfr_m <= T - i * lfr_n:
            LFR_inputs.append((inputs[i * lfr_n : i * lfr_n + lfr_m]).reshape(1, -1))
        else:
            num_padding = lfr_m - (T - i * lfr_n)
            frame = (inputs[i * lfr_n :]).reshape(-1)
            for _ in range(num_padding):
                frame = np.hstack((frame, inputs[-1]))
            LFR_inputs.append(frame)
    return np.vstack(LFR_inputs).astype(np.float32)


def _lfr_cmvn_model(lfr, cmvn, dim=80):
    """LFR + CMVN over a features input, as the front end wires them."""
    features = ir.val("fbank", ir.DataType.FLOAT, ["batch", "frames", dim])
    counts = ir.val("counts", ir.DataType.INT64, ["batch"])
    graph = ir.Graph([features, counts], [], nodes=[], opset_imports={"": 17})
    g = GraphOps(graph, 17)
    stacked, stacked_counts = lfr_graph(g, features, counts, lfr)
    stacked_counts = g.op.Identity(stacked_counts)  # m = n = 1 returns the input itself
    out = mask_frames(g, cmvn_graph(g, stacked, cmvn), stacked_counts)
    out.name, stacked_counts.name = "out", "out_counts"
    out.dtype, stacked_counts.dtype = ir.DataType.FLOAT, ir.DataType.INT64
    out.shape, stacked_counts.shape = ir.Shape(["batch", "out_frames", dim * lfr.m]), ir.Shape(["batch"])
    graph.outputs.extend([out, stacked_counts])
    return ir.Model(graph, ir_version=8)


@pytest.mark.parametrize("m,n", [(7, 6), (5, 1), (1, 1), (4, 3), (3, 5)])
def test_lfr_cmvn_matches_funasr_on_every_length(m, n):
    rng = np.random.default_rng(m * 10 + n)
    lfr = frontend.LfrOptions(m, n)
    cmvn = frontend.Cmvn(rng.normal(-8, 2, 80 * m), rng.uniform(0.1, 0.3, 80 * m))
    session = inference_session(_lfr_cmvn_model(lfr, cmvn))
    lengths = [*list(range(1, 101)), 317, 1000, 3001]
    for start in range(0, len(lengths), 8):  # batches of rows of different lengths
        group = lengths[start : start + 8]
        batch = np.zeros((len(group), max(group), 80), np.float32)
        rows = [rng.normal(0, 5, (t, 80)).astype(np.float32) for t in group]
        for i, row in enumerate(rows):
            batch[i, : row.shape[0]] = row
        out, counts = session.run(None, {"fbank": batch, "counts": np.array(group, np.int64)})
        for i, row in enumerate(rows):
            expected = (_funasr_apply_lfr(row, m, n) + cmvn.shift) * cmvn.scale
            np.testing.assert_array_equal(numpy_statement.apply_lfr(row, lfr), _funasr_apply_lfr(row, m, n))
            assert counts[i] == expected.shape[0] == -(-group[i] // n)
            error = np.abs(out[i, : counts[i]] - expected).max()
            assert error <= MAX_ABS_LFR_CMVN, (m, n, group[i], error)
            assert np.all(out[i, counts[i] :] == 0)


def _am_mvn(dim: int, shift=None, scale=None) -> str:
    shift = np.linspace(-9, -7, dim) if shift is None else shift
    scale = np.linspace(0.1, 0.3, dim) if scale is None else scale
    return (
        f"<Nnet>\n<Splice> {dim} {dim}\n[ 0 ]\n<AddShift> {dim} {dim}\n"
        f"<LearnRateCoef> 0 [ {' '.join(f'{v:.6f}' for v in shift)} ]\n<Rescale> {dim} {dim}\n"
        f"<LearnRateCoef> 0 [ {' '.join(f'{v:.6f}' for v in scale)} ]\n</Nnet>\n"
    )


def test_full_front_end_matches_the_python_pipeline(tmp_path):
    path = tmp_path / "am.mvn"
    path.write_text(_am_mvn(560))
    cmvn = frontend.Cmvn.from_am_mvn(path)
    assert cmvn.dim == 560 and np.isclose(cmvn.shift[0], -9) and np.isclose(cmvn.scale[-1], 0.3)
    opts, lfr = frontend.FbankOptions.sensevoice(), frontend.LfrOptions.sensevoice()
    speech = audio.speech(6.0, seed=5)
    rows = [speech, speech[:7000], speech[20000:20400], speech[:100]]
    ours, _padded, _counts = graph_features(rows, opts, lfr, cmvn)
    for row, features in zip(rows, ours):
        fbank = numpy_statement.fbank(row, opts)
        expected = (
            numpy_statement.apply_cmvn(numpy_statement.apply_lfr(fbank, lfr), cmvn.shift, cmvn.scale)
            if fbank.size
            else np.zeros((0, 560))
        )
        assert features.shape == expected.shape
        if expected.size:
            assert np.abs(features - expected).max() <= 1e-3  # fbank error (<= 5e-4) times CMVN scale
        (alone,), _, _ = graph_features(row, opts, lfr, cmvn)
        np.testing.assert_array_equal(features, alone)  # rows in a batch = each row alone, bit for bit


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<Nnet>\n<Rescale> 3 3\n<LearnRateCoef> 0 [ 1 2 3 ]\n</Nnet>\n", "no <AddShift> component"),
        ("<Nnet>\n<AddShift> 3 3\n<LearnRateCoef> 0 [ 1 2 3 ]\n</Nnet>\n", "no <Rescale> component"),
        (
            "<AddShift> 3 3\n<LearnRateCoef> 0 [ 1 x2 3 ]\n<Rescale> 3 3\n<LearnRateCoef> 0 [ 1 2 3 ]\n",
            ":2: <AddShift> value 'x2'",
        ),
        (
            "<AddShift> 3 3\n<LearnRateCoef> 0 [ 1 2 3 ]\n<Rescale> 3 3\n<LearnRateCoef> 0 [ 1 2\n",
            ":4: the <Rescale> vector opened here is never closed",
        ),
        (
            "<AddShift> 4 4\n<LearnRateCoef> 0 [ 1 2 3 ]\n<Rescale> 3 3\n<LearnRateCoef> 0 [ 1 2 3 ]\n",
            ":2: <AddShift> declares 4 values but lists 3",
        ),
        ("<AddShift> three\n", ":1: <AddShift> should be followed by its dimensions"),
        ("", "no <AddShift> component"),
    ],
)
def test_malformed_am_mvn_names_the_line(tmp_path, text, message):
    path = tmp_path / "am.mvn"
    path.write_text(text)
    with pytest.raises(BadInputError, match=message.replace("[", r"\[")):
        frontend.Cmvn.from_am_mvn(path)


def test_unreadable_am_mvn(tmp_path):
    with pytest.raises(BadInputError, match="no such file"):
        frontend.Cmvn.from_am_mvn(tmp_path / "missing.mvn")
    binary = tmp_path / "binary.mvn"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 10)
    with pytest.raises(BadInputError, match="cannot be read as text"):
        frontend.Cmvn.from_am_mvn(binary)


def test_cmvn_from_sherpa_onnx_metadata():
    metadata = {"neg_mean": "-1.5,-2.5,-3.5", "inv_stddev": "0.5,0.25,0.125"}
    cmvn = frontend.Cmvn.from_metadata(metadata, source="model.onnx")
    np.testing.assert_array_equal(cmvn.shift, [-1.5, -2.5, -3.5])
    np.testing.assert_array_equal(cmvn.scale, [0.5, 0.25, 0.125])
    with pytest.raises(BadInputError, match="no inv_stddev"):
        frontend.Cmvn.from_metadata({"neg_mean": "1"})
    with pytest.raises(BadInputError, match="3 values but scale has 2"):
        frontend.Cmvn.from_metadata({"neg_mean": "1,2,3", "inv_stddev": "1,2"})


def test_cmvn_dimension_must_match_the_features():
    with pytest.raises(BadInputError, match=r"has 80 values, but the features have 560 \(80 fbank x LFR m=7\)"):
        frontend.build(
            frontend.FbankOptions.sensevoice(), frontend.LfrOptions(7, 6), frontend.Cmvn(np.zeros(80), np.ones(80))
        )


def test_zero_length_rows_give_empty_features():
    opts, lfr = frontend.FbankOptions.sensevoice(), frontend.LfrOptions.sensevoice()
    _, padded, counts = graph_features([np.zeros(0, np.float32), np.zeros(0, np.float32)], opts, lfr)
    assert padded.shape == (2, 0, 560) and counts.tolist() == [0, 0]
    _, padded, counts = graph_features([np.zeros(0, np.float32), audio.white_noise(0.1)], opts, lfr)
    assert counts.tolist() == [0, 2] and np.all(padded[0] == 0)


def test_frontend_command(tmp_path, capsys):
    mvn = tmp_path / "am.mvn"
    mvn.write_text(_am_mvn(400))
    out = tmp_path / "fsmn_frontend.onnx"
    assert (
        main(
            [
                "frontend",
                "-o",
                str(out),
                "--preset",
                "fsmn-vad",
                "--cmvn",
                str(mvn),
                "--opset",
                "14",
                "--lengths-dtype",
                "int64",
            ]
        )
        == 0
    )
    model = svsurgery.load(out)
    assert model.opset_imports[""] == 14
    assert model.graph.outputs[0].shape[2] == 400 and model.graph.outputs[1].dtype == ir.DataType.INT64
    recorded = json.loads(model.metadata_props["svsurgery.frontend"])
    assert recorded["lfr"] == {"m": 5, "n": 1} and "am.mvn" in recorded["cmvn"]
    assert all(n.name.startswith("svs/frontend/") for n in model.graph)
    assert main(["frontend", "-o", str(tmp_path / "x.onnx"), "--lfr", "7"]) == 2
    assert "expected M,N" in capsys.readouterr().err
    bad = tmp_path / "bad.mvn"
    bad.write_text("<AddShift> 2 2\n[ 1 oops ]\n<Rescale> 2 2\n[ 1 1 ]\n")
    assert main(["frontend", "-o", str(tmp_path / "y.onnx"), "--cmvn", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.mvn:2:" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "y.onnx").exists()
