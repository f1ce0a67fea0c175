"""fuse-preproc on the FunASR-style, dynamo and sherpa-onnx-style exports of the reference encoder."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import svsurgery
from svsurgery.cli.main import main
from svsurgery.errors import BadInputError
from svsurgery.frontend import LfrOptions, numpy_statement
from svsurgery.frontend import knf as knf_reference
from svsurgery.frontend.config import discover
from svsurgery.fuse import fuse_preprocessing
from svsurgery.parity import PROFILES, Tolerance, compare
from svsurgery.runtime import inference_session, run
from svsurgery.testing import audio

MAX_ABS_FUSED_VS_TWO_STEP = 1e-5
MIN_COSINE_VS_KNF = 0.99999
MAX_ABS_BATCH_VS_ALONE = 1e-5  # the encoder's GEMMs sum over padded time steps in another order
EXTRA = {"funasr": ("language", "textnorm"), "dynamo": ("language", "textnorm"), "sherpa": ("language", "text_norm")}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from svsurgery.testing.export import write_model_folders

    return write_model_folders(tmp_path_factory.mktemp("shipped"))


@pytest.fixture(scope="module")
def fused(folders, tmp_path_factory):
    out = tmp_path_factory.mktemp("fused")
    results = {}
    for kind, path in folders.items():
        model, report = fuse_preprocessing(path, keep_features=(kind == "funasr"))
        assert report.passed and not report.written
        results[kind] = (svsurgery.save(model, out / f"{kind}.onnx"), report)
    return results


@pytest.fixture(scope="module")
def speech():
    return audio.speech(8.0, seed=11)


def _feeds(kind, waveforms, language=4, textnorm=15):
    batch = np.zeros((len(waveforms), max(max(w.size for w in waveforms), 1)), np.float32)
    for i, w in enumerate(waveforms):
        batch[i, : w.size] = w
    names = EXTRA[kind]
    return {
        "waveform": batch,
        "waveform_lengths": np.array([w.size for w in waveforms], np.int64),
        names[0]: np.full(len(waveforms), language, np.int32),
        names[1]: np.full(len(waveforms), textnorm, np.int32),
    }


@pytest.mark.parametrize("kind", ["funasr", "dynamo", "sherpa"])
def test_fused_model_signature_metadata_and_report(fused, folders, kind):
    path, report = fused[kind]
    assert report.passed
    model = svsurgery.load(path)
    assert [v.name for v in model.graph.inputs] == ["waveform", "waveform_lengths", *EXTRA[kind]]
    outputs = [v.name for v in model.graph.outputs]
    assert outputs[:2] == ["ctc_logits", "encoder_out_lens"]
    entry = ["waveform_nonfinite", "waveform_clipped", "waveform_lengths_used"]
    assert outputs[2:] == (["features", "feature_lengths"] if kind == "funasr" else []) + entry
    assert "svsurgery.frontend" in model.metadata_props and "svsurgery.fuse" in model.metadata_props
    fuse_record = json.loads(model.metadata_props["svsurgery.fuse"])
    assert fuse_record["parity"]["fused_vs_reference"][0]["passed"] is True
    source = svsurgery.load(folders[kind])
    for key, value in source.metadata_props.items():
        assert model.metadata_props[key] == value  # the encoder's metadata is kept
    assert model.opset_imports[""] == source.opset_imports[""]
    if kind == "dynamo":
        assert svsurgery.model_io.external_tensors(model), "a model with external data keeps it"
    if kind == "sherpa":
        assert report.sources["cmvn"].endswith("neg_mean/inv_stddev")
        assert "normalize_samples" in report.sources["input_scale"]
    else:
        assert "config.yaml" in report.sources["fbank"] and "am.mvn" in report.sources["cmvn"]
    assert all(n.name.startswith("svs/frontend/") for n in model.graph if n.op_type in ("Log", "GatherND"))


@pytest.mark.parametrize("kind", ["funasr", "dynamo", "sherpa"])
def test_fused_matches_two_step_and_kaldi_native_fbank_pipeline(fused, folders, kind, speech):
    path, _ = fused[kind]
    source = svsurgery.load(folders[kind])
    config = discover(source, folders[kind])
    feeds = _feeds(kind, [speech])
    fused_out = run(path, feeds)
    feature_name, length_name = ("x", "x_length") if kind == "sherpa" else ("speech", "speech_lengths")
    extra = {k: v for k, v in feeds.items() if not k.startswith("waveform")}

    from svsurgery import frontend

    graph = frontend.build(config.fbank, config.lfr, config.cmvn, opset=source.opset_imports[""])
    graph_outputs = run(graph, {"waveform": feeds["waveform"], "waveform_lengths": feeds["waveform_lengths"]})
    features, lengths = graph_outputs["features"], graph_outputs["feature_lengths"]
    two_step = run(folders[kind], {feature_name: features, length_name: lengths, **extra})
    parity = compare("ctc_logits", fused_out["ctc_logits"], two_step["ctc_logits"])
    assert parity.max_abs <= MAX_ABS_FUSED_VS_TWO_STEP, parity

    stacked = numpy_statement.apply_cmvn(
        numpy_statement.apply_lfr(knf_reference.fbank(speech, config.fbank), config.lfr),
        config.cmvn.shift,
        config.cmvn.scale,
    ).astype(np.float32)
    pipeline = run(
        folders[kind], {feature_name: stacked[None], length_name: np.array([stacked.shape[0]], np.int32), **extra}
    )
    parity = compare("ctc_logits", fused_out["ctc_logits"], pipeline["ctc_logits"])
    assert parity.argmax_agreement == 1.0 and parity.cosine >= MIN_COSINE_VS_KNF, parity
    np.testing.assert_array_equal(fused_out["encoder_out_lens"], pipeline["encoder_out_lens"])


def test_batch_rows_equal_each_row_alone(fused, speech):
    path, _ = fused["funasr"]
    rows = [speech, speech[:30000], speech[50000:52000], speech[:401]]
    # one thread: onnxruntime's multi-threaded GEMM splits work by batch shape and can move the last bit
    session = inference_session(path, intra_op_threads=1)
    batched = dict(zip([o.name for o in session.get_outputs()], session.run(None, _feeds("funasr", rows))))
    for i, row in enumerate(rows):
        alone = dict(zip([o.name for o in session.get_outputs()], session.run(None, _feeds("funasr", [row]))))
        valid = int(alone["encoder_out_lens"][0])
        assert batched["encoder_out_lens"][i] == valid
        error = np.abs(batched["ctc_logits"][i, :valid] - alone["ctc_logits"][0, :valid]).max()
        assert error <= MAX_ABS_BATCH_VS_ALONE, (i, error)
        count = int(alone["feature_lengths"][0])
        np.testing.assert_array_equal(batched["features"][i, :count], alone["features"][0, :count])


def test_zero_sample_waveform_gives_the_query_frames_only(fused):
    path, _ = fused["funasr"]
    outputs = run(path, _feeds("funasr", [np.zeros(0, np.float32)]))
    assert outputs["feature_lengths"].tolist() == [0] and outputs["features"].shape[1] == 0
    assert outputs["encoder_out_lens"].tolist() == [4]  # SenseVoice's four query embeddings
    assert outputs["ctc_logits"].shape[1] == 4 and np.isfinite(outputs["ctc_logits"]).all()


def test_fusing_a_model_object_leaves_it_as_it_was_and_writes_nothing(folders, tmp_path, monkeypatch):
    """fuse_preprocessing on a loaded model: the caller's model is not changed, settings are
    found beside the file it came from, nothing is written anywhere, and the provenance is
    strict JSON (no NaN/Infinity literals)."""
    monkeypatch.chdir(tmp_path)
    source = svsurgery.load(folders["funasr"])
    before = [(v.name, v.dtype) for v in source.graph.inputs], len(list(source.graph))
    fused, report = fuse_preprocessing(source)
    assert report.passed and not report.written and report.output is None
    assert report.encoder == str(folders["funasr"].resolve()) and "am.mvn" in report.sources["cmvn"]
    assert ([(v.name, v.dtype) for v in source.graph.inputs], len(list(source.graph))) == before
    assert [v.name for v in fused.graph.inputs][:2] == ["waveform", "waveform_lengths"]
    assert not list(tmp_path.iterdir()) and not list(folders["funasr"].parent.glob("*fused*"))

    def strict(constant):
        raise AssertionError(f"non-strict JSON constant {constant} in metadata")

    for key in ("svsurgery.fuse", "svsurgery.frontend"):
        json.loads(fused.metadata_props[key], parse_constant=strict)


def test_d_mismatch_names_both_numbers(folders):
    with pytest.raises(BadInputError, match=r"D=560 .* makes 400 \(80 fbank x LFR m=5"):
        fuse_preprocessing(folders["funasr"], lfr=LfrOptions(5, 1))


def test_encoder_without_feature_input_is_refused(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Identity", ["ids"], ["out"])],
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", "T"])],
        [helper.make_tensor_value_info("out", TensorProto.INT64, ["B", "T"])],
    )
    path = tmp_path / "text_model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(BadInputError, match=r"no float \[B, T, D\] input .*ids INT64"):
        fuse_preprocessing(path, use_cmvn=False)


def test_unreadable_am_mvn_and_missing_cmvn(folders, tmp_path):
    bad = tmp_path / "am.mvn"
    bad.write_text("<AddShift> 560 560\n[ 1 2 three ]\n")
    with pytest.raises(BadInputError, match=r"am.mvn:2: <AddShift> value 'three'"):
        fuse_preprocessing(folders["funasr"], cmvn=bad)
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    shutil.copy(folders["funasr"], lonely / "model.onnx")
    with pytest.raises(BadInputError, match=r"no CMVN found .* --no-cmvn"):
        fuse_preprocessing(lonely / "model.onnx")
    _, report = fuse_preprocessing(lonely / "model.onnx", use_cmvn=False)
    assert report.passed and report.sources["cmvn"] == "none (--no-cmvn)"


def test_generic_names_and_old_opset_encoder(tmp_path):
    """An opset-11 encoder with other input names: found by type and name, converted up to 13."""
    weight = np.random.default_rng(0).normal(size=(80, 8)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["feats", "w"], ["logits"]),
            helper.make_node("Identity", ["feats_lengths"], ["lens"]),
        ],
        "tiny_encoder",
        [
            helper.make_tensor_value_info("feats", TensorProto.FLOAT, ["B", "T", 80]),
            helper.make_tensor_value_info("feats_lengths", TensorProto.INT64, ["B"]),
        ],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", "T", 8]),
            helper.make_tensor_value_info("lens", TensorProto.INT64, ["B"]),
        ],
        initializer=[onnx.numpy_helper.from_array(weight, "w")],
    )
    path = tmp_path / "encoder.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], ir_version=6), path)
    fused, report = fuse_preprocessing(path, lfr=LfrOptions(1, 1), use_cmvn=False)
    assert report.passed, report
    assert any("converted from ai.onnx opset 11" in n for n in report.notices)
    model = svsurgery.load(svsurgery.save(fused, tmp_path / "fused.onnx"))
    assert model.opset_imports[""] == 13 and [v.name for v in model.graph.inputs] == ["waveform", "waveform_lengths"]


def test_cli_writes_model_and_report_or_nothing_with_exit_1(folders, tmp_path, capsys, monkeypatch):
    out, report_path = tmp_path / "fused.onnx", tmp_path / "report.json"
    assert main(["fuse-preproc", str(folders["funasr"]), "-o", str(out), "--report", str(report_path)]) == 0
    assert out.is_file()
    report = json.loads(report_path.read_text())
    assert report["passed"] and report["fused_vs_reference"][0]["name"] == "ctc_logits"
    assert report["written"] is True and report["output"] == str(out)  # the command line wrote it and says so
    assert "fused vs" not in capsys.readouterr().err
    monkeypatch.setitem(PROFILES, "frontend", Tolerance("impossible", max_abs=0.0))
    strict_out = tmp_path / "strict.onnx"
    assert main(["fuse-preproc", str(folders["funasr"]), "-o", str(strict_out)]) == 1
    assert not strict_out.exists()
    assert "nothing written" in capsys.readouterr().out
    assert main(["fuse-preproc", str(folders["funasr"]), "-o", str(tmp_path / "x.onnx"), "--lfr", "5,1"]) == 2
    assert "D=560" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the encoder per segment row


def _rows_model(encoder_path):
    """The encoder behind a stand-in front end that passes features through and declares one
    segment per row: the per-row Loop of a VAD fusion, without the VAD."""
    import onnx_ir as ir

    from svsurgery.compose import find_encoder_inputs, prepend_frontend
    from svsurgery.frontend._ops import GraphOps

    encoder = svsurgery.load(encoder_path)
    binding = find_encoder_inputs(encoder)
    opset = encoder.opset_imports[""]
    rows = ir.val("waveform", ir.DataType.FLOAT, ["rows", "frames", 560])
    lengths = ir.val("waveform_lengths", ir.DataType.INT64, ["rows"])
    graph = ir.Graph([rows, lengths], [], nodes=[], opset_imports={"": opset}, name="pass_through")
    g = GraphOps(graph, opset)
    features, counts = g.op.Identity(rows), g.op.Cast(lengths, to=ir.DataType.INT32)
    segments = g.op.Expand(g.i64(0), g.op.Concat(g.dim(rows, 0), g.i64(2), axis=0))
    features.name, counts.name, segments.name = "features", "feature_lengths", "segments"
    graph.outputs.extend([features, counts, segments])
    return prepend_frontend(encoder, ir.Model(graph, ir_version=8), binding)


def test_encoder_runs_each_row_alone_inside_one_loop(folders):
    """Rows of any length order (ties, an empty row, the longest in the middle) each get exactly
    the encoder's output for that row alone; zeros past its own extent; no rows gives no rows."""
    model = _rows_model(folders["funasr"])
    loops = [n for n in model.graph if n.op_type == "Loop"]
    assert len(loops) == 1
    body = loops[0].attributes["body"].value
    assert sum(n.op_type == "MatMul" for n in body) == sum(
        n.op_type == "MatMul" for n in svsurgery.load(folders["funasr"]).graph
    )
    assert not any(len(g.initializers) for g in model.graphs() if g is not model.graph), (
        "weights stay in the outer graph"
    )
    assert [v.name for v in model.graph.outputs[:2]] == ["ctc_logits", "encoder_out_lens"]

    session = inference_session(model, intra_op_threads=1)
    encoder = inference_session(folders["funasr"], intra_op_threads=1)
    rng = np.random.default_rng(7)
    frames = [23, 57, 0, 57, 11, 40]
    batch = (rng.standard_normal((len(frames), max(frames), 560)) * 1e3).astype(np.float32)  # padding holds garbage
    for row, count in enumerate(frames):
        batch[row, :count] = rng.standard_normal((count, 560))
    ids = {"language": np.array([3], np.int32), "textnorm": np.array([14], np.int32)}
    logits, lengths = session.run(
        ["ctc_logits", "encoder_out_lens"], {"waveform": batch, "waveform_lengths": np.array(frames), **ids}
    )
    assert logits.shape[:2] == (len(frames), max(frames) + 4)
    for row, count in enumerate(frames):
        own_logits, own_lengths = encoder.run(
            None, {"speech": batch[row : row + 1, :count], "speech_lengths": np.array([count], np.int32), **ids}
        )
        assert lengths[row] == own_lengths[0] == count + 4
        np.testing.assert_array_equal(
            logits[row, : own_logits.shape[1]], own_logits[0]
        )  # the same computation, bit for bit
        assert not logits[row, own_logits.shape[1] :].any()

    empty = session.run(
        ["ctc_logits", "encoder_out_lens"],
        {"waveform": np.zeros((0, 5, 560), np.float32), "waveform_lengths": np.zeros(0, np.int64), **ids},
    )
    assert empty[0].shape == (0, 4, logits.shape[2]) and empty[1].shape == (0,)


@pytest.mark.parametrize("vad", [None, "energy"], ids=["whole", "energy-vad"])
def test_a_float16_encoder_is_fused_with_its_features_rounded_once(folders, tmp_path, fused, speech, vad):
    """Guards: fusing an encoder that `svsurgery fp16` made crashed inside onnxruntime with a
    traceback (Concat bound to float16 and float): the front end's float32 features met the
    float16 encoder directly. The features are now cast once where the encoder reads them (as
    the step-by-step pipeline casts them), and the fused float16 model gives the float32 fused
    model's logits."""
    import onnx_ir as ir

    from svsurgery.vad.energy import EnergyVadOptions

    for name in ("config.yaml", "am.mvn"):
        shutil.copy(folders["funasr"].parent / name, tmp_path / name)
    half, fp16_report = svsurgery.fix(svsurgery.load(folders["funasr"]), precision=ir.DataType.FLOAT16)
    assert fp16_report.passed
    half_path = svsurgery.save(half, tmp_path / "model.onnx")
    model, report = fuse_preprocessing(half_path, vad=EnergyVadOptions() if vad else None)
    assert report.passed, report.fused_vs_two_step
    assert any("rounded once" in notice for notice in report.notices)
    casts = [n for n in svsurgery.patch.all_graphs(model)[0] if n.name == "svs/frontend/Cast_features"]
    assert len(casts) == 1 and casts[0].attributes["to"].value == ir.DataType.FLOAT16
    if vad is None:
        feeds = _feeds("funasr", [speech])
        ours = run(model, feeds)["ctc_logits"].astype(np.float32)
        full = run(svsurgery.load(fused["funasr"][0]), feeds)["ctc_logits"]
        parity = compare("ctc_logits", ours, full)  # a float16 encoder against the float32 one
        assert parity.cosine > 0.9999 and parity.argmax_agreement == 1.0, parity
