"""The in-graph VAD and segmentation against their numpy statement, FunASR's merge_vad and the labels."""

from __future__ import annotations

import dataclasses
import itertools
from typing import ClassVar

import numpy as np
import onnx_ir as ir
import pytest
from vad_support import probe_session

from svsurgery import frontend, vad
from svsurgery.errors import BadInputError
from svsurgery.runtime import inference_session
from svsurgery.testing import vad_corpus
from svsurgery.testing.audio import read_wav
from svsurgery.vad import numpy_statement as vad_statement
from svsurgery.vad.energy import energy_flags
from svsurgery.vad.mode import VadGraph, VadMode, VadReference
from svsurgery.vad.segment import flags_to_segments, merge_spans, split_long

FEATURE_OUTPUTS = ["features", "feature_lengths"]
VAD_OUTPUTS = [*FEATURE_OUTPUTS, "segments"]
CORPUS = vad_corpus.corpus_dir()  # $SVSURGERY_VAD_DEV or ../shared/data/vad-dev beside the checkout
RECORDINGS = sorted(CORPUS.glob("rec*.wav")) if CORPUS else []
MIN_F1_CLEAN = 0.98  # the bar for the energy mode on clean speech


@pytest.fixture(scope="module")
def energy_session():
    options = vad.EnergyVadOptions()
    wave = ir.val("w", ir.DataType.FLOAT, ["n"])
    return probe_session(
        lambda g, w: (flags := energy_flags(g, w, options), flags_to_segments(g, flags, options.frame_ms)), [wave]
    )


@pytest.fixture(scope="module")
def spans_session():
    found = ir.val("s", ir.DataType.INT64, ["k", 2])
    return probe_session(lambda g, s: (merge_spans(g, s, 15000), split_long(g, s, 30000)), [found])


def _f1(flags: np.ndarray, labels: np.ndarray) -> float:
    n = min(len(flags), len(labels))
    flags, labels = flags[:n], labels[:n]
    tp, fp, fn = (flags & labels).sum(), (flags & ~labels).sum(), (~flags & labels).sum()
    return 2 * tp / (2 * tp + fp + fn)


def test_energy_vad_graph_matches_its_numpy_statement_and_the_labels(energy_session):
    vad_corpus.require_corpus()
    options = vad.EnergyVadOptions()
    scores = []
    for path in RECORDINGS:
        waveform = read_wav(path)
        flags, found = energy_session.run(None, {"w": waveform})
        expected = vad_statement.energy_vad(waveform, options)
        np.testing.assert_array_equal(flags, expected)
        np.testing.assert_array_equal(found, vad_statement.segments(expected, options.frame_ms))
        scores.append(_f1(flags, np.load(path.with_name(path.stem + ".labels.npz"))["env"]))
    assert min(scores) >= MIN_F1_CLEAN, scores


@pytest.mark.parametrize(
    "waveform",
    [
        np.zeros(0, np.float32),  # nothing
        np.zeros(150, np.float32),  # less than a frame
        np.zeros(16000, np.float32),  # digital silence
        (np.random.default_rng(0).standard_normal(16000) * 0.1).astype(np.float32),  # all "speech"
        np.concatenate([np.zeros(8000), np.sin(np.arange(8000) * 0.05) * 0.3]).astype(np.float32),  # speech to the end
        np.concatenate([np.sin(np.arange(3000) * 0.05) * 0.3, np.zeros(12000), np.sin(np.arange(200) * 0.05)]).astype(
            np.float32
        ),
    ],
    ids=["empty", "short", "silence", "noise", "to-the-end", "island"],
)
def test_energy_vad_edge_cases(energy_session, waveform):
    flags, found = energy_session.run(None, {"w": waveform})
    expected = vad_statement.energy_vad(waveform, vad.EnergyVadOptions())
    np.testing.assert_array_equal(flags, expected)
    assert found.shape == (len(vad_statement.segments(expected, 10)), 2)


def test_merge_vad_reproduces_funasr_quirks():
    assert vad_statement.merge_vad(np.zeros((0, 2)), 15000).shape == (0, 2)
    np.testing.assert_array_equal(vad_statement.merge_vad([[2000, 3000]], 15000), [[2000, 3000]])  # one: unchanged
    spans = vad_statement.merge_vad([[500, 4000], [6000, 14000], [15500, 20000], [21000, 23000]], 15000)
    assert spans[0, 0] == 0  # the first span starts at 0 ms
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))  # contiguous: silence between is decoded
    np.testing.assert_array_equal(spans, [[0, 14000], [14000, 23000]])


def test_merge_and_split_graphs_match_numpy_on_random_segments(spans_session):
    rng = np.random.default_rng(0)
    for trial in range(400):
        count = int(rng.integers(0, 14))
        found = np.sort(rng.choice(np.arange(0, 200_000, 10), size=2 * count, replace=False)).reshape(-1, 2)
        if trial % 7 == 0 and count:
            found[-1, 1] = found[-1, 0] + 75_000  # one long segment: cut into pieces
        merged, pieces = spans_session.run(None, {"s": found.astype(np.int64)})
        np.testing.assert_array_equal(merged, vad_statement.merge_vad(found, 15000), err_msg=str(found.tolist()))
        np.testing.assert_array_equal(pieces, vad_statement.split_long(found, 30000), err_msg=str(found.tolist()))


def test_rows_are_cut_as_funasr_slices_them():
    """Block-wise gathering against numpy slicing: signals of any length, spans past the end,
    empty spans, none at all."""
    from svsurgery.vad.segment import cut_rows

    samples, spans = ir.val("w", ir.DataType.FLOAT, ["n"]), ir.val("s", ir.DataType.INT64, ["k", 2])
    session = probe_session(lambda g, w, s: cut_rows(g, w, s, 16000.0), [samples, spans])
    rng = np.random.default_rng(3)
    for trial in range(60):
        waveform = rng.standard_normal(int(rng.integers(0, 40000))).astype(np.float32)
        starts = np.sort(rng.integers(0, 3000, int(rng.integers(0, 6))))
        found = np.stack([starts, starts + rng.integers(0, 900, starts.size)], axis=1).astype(np.int64).reshape(-1, 2)
        rows, lengths = session.run(None, {"w": waveform, "s": found})
        expected = vad_statement.cut_rows(waveform, found)
        assert rows.shape == (len(expected), max([e.size for e in expected], default=0)), trial
        assert lengths.tolist() == [e.size for e in expected], trial
        for row, piece in zip(rows, expected):
            np.testing.assert_array_equal(row[: piece.size], piece)
            assert not row[piece.size :].any()


@pytest.mark.parametrize("merge", [True, False], ids=["merged", "unmerged"])
def test_vad_frontend_cuts_rows_and_gives_each_its_own_features(merge):
    options, segmentation = vad.EnergyVadOptions(), vad.SegmentOptions(merge=merge)
    fbank, lfr = frontend.FbankOptions.sensevoice(), frontend.LfrOptions(7, 6)
    session = inference_session(vad.build_vad_frontend(options, segmentation, fbank, lfr))
    alone = inference_session(frontend.build(fbank, lfr), intra_op_threads=1)
    waveform = read_wav(RECORDINGS[0]) if RECORDINGS else _synthetic_speech()
    features, lengths, spans = session.run(
        VAD_OUTPUTS, {"waveform": waveform[None], "waveform_lengths": np.array([waveform.size])}
    )
    expected_spans = vad_statement.segment(
        vad_statement.segments(vad_statement.energy_vad(waveform, options), 10), segmentation
    )
    np.testing.assert_array_equal(spans, expected_spans)
    assert len(spans) >= 2 and features.shape[0] == lengths.shape[0] == len(spans)
    for row, piece in enumerate(vad_statement.cut_rows(waveform, spans)):
        own, own_length = alone.run(
            FEATURE_OUTPUTS, {"waveform": piece[None], "waveform_lengths": np.array([piece.size])}
        )
        assert lengths[row] == own_length[0]
        np.testing.assert_allclose(features[row, : lengths[row]], own[0, : own_length[0]], atol=1e-5, rtol=0)
        assert not features[row, lengths[row] :].any()


def test_no_speech_gives_well_formed_empty_outputs():
    session = inference_session(vad.build_vad_frontend(vad.EnergyVadOptions(), lfr=frontend.LfrOptions(7, 6)))
    for waveform in (np.zeros(16000, np.float32), np.zeros(0, np.float32)):
        features, lengths, spans = session.run(
            VAD_OUTPUTS, {"waveform": waveform[None], "waveform_lengths": np.array([waveform.size])}
        )
        assert features.shape == (0, 0, 560) and lengths.shape == (0,) and spans.shape == (0, 2)


def _synthetic_speech() -> np.ndarray:
    from svsurgery.parity.waveforms import speech_like

    return speech_like(40.0, seed=5)


# ----------------------------------------------------------------------------- fused with the encoder


@pytest.fixture(scope="module")
def funasr_folder(tmp_path_factory):
    from svsurgery.testing.export import write_model_folders

    return write_model_folders(tmp_path_factory.mktemp("vad_folders"))["funasr"]


def _vad_modes() -> list[str]:
    import importlib.util

    modes = ["energy"]
    if importlib.util.find_spec("silero_vad"):  # the reference pipeline for the silero mode
        modes += ["silero", "silero-streaming"]
    if importlib.util.find_spec("funasr_onnx"):  # the reference state machine for the fsmn mode
        modes.append("fsmn")
    return modes


@pytest.fixture(scope="module")
def fsmn_folder(tmp_path_factory):
    from svsurgery.testing.fsmn import write_fsmn_vad_folder

    return write_fsmn_vad_folder(tmp_path_factory.mktemp("fsmn_vad"))


@pytest.mark.parametrize("merge", [True, False], ids=["merged", "unmerged"])
@pytest.mark.parametrize("name", _vad_modes())
def test_fused_vad_model_equals_the_pipeline_run_step_by_step(funasr_folder, tmp_path, merge, name, request):
    """The fused graph vs the same pipeline in Python: the mode's own VAD (numpy for energy,
    silero's Python for silero, funasr-onnx's E2EVadModel for fsmn) and FunASR's segmentation,
    then each span through the front end and the encoder alone: same segments, per-span
    logits within 1e-4."""
    from svsurgery.testing.third_party import silero_model

    options = {
        "energy": vad.EnergyVadOptions,
        "silero": vad.SileroVadOptions,
        "silero-streaming": lambda: vad.SileroVadOptions(model=str(silero_model("silero_vad.onnx"))),
        "fsmn": lambda: vad.FsmnVadOptions(str(request.getfixturevalue("fsmn_folder"))),
    }[name]()
    import svsurgery
    from svsurgery.frontend.config import discover
    from svsurgery.fuse import fuse_preprocessing

    segmentation = vad.SegmentOptions(merge=merge, max_segment_s=5.0)
    model, report = fuse_preprocessing(funasr_folder, vad=options, segmentation=segmentation)
    assert report.passed and not report.written  # nothing written: the caller saves
    assert not list(tmp_path.iterdir())
    fused = inference_session(model)
    assert [i.name for i in fused.get_inputs()] == ["waveform", "waveform_lengths", "language", "textnorm"]
    found = discover(svsurgery.load(funasr_folder), funasr_folder)
    frontend_alone = inference_session(frontend.build(found.fbank, found.lfr, found.cmvn, opset=16))
    encoder = inference_session(funasr_folder)
    waveform = read_wav(RECORDINGS[1]) if RECORDINGS else _synthetic_speech()
    ids = {"language": np.array([4], np.int32), "textnorm": np.array([15], np.int32)}
    logits, lengths, spans = fused.run(
        ["ctc_logits", "encoder_out_lens", "segments"],
        {"waveform": waveform[None], "waveform_lengths": np.array([waveform.size]), **ids},
    )
    expected = vad_statement.segment(options.reference().segments(waveform), segmentation)
    np.testing.assert_array_equal(spans, expected)
    assert len(spans) >= 3 and (merge or (spans[:, 1] - spans[:, 0]).max() <= 5000)
    for row, piece in enumerate(vad_statement.cut_rows(waveform, spans)):
        features, feature_lengths = frontend_alone.run(
            FEATURE_OUTPUTS, {"waveform": piece[None], "waveform_lengths": np.array([piece.size])}
        )
        own_logits, own_lengths = encoder.run(
            None, {"speech": features[:, : feature_lengths[0]], "speech_lengths": feature_lengths, **ids}
        )
        assert lengths[row] == own_lengths[0]
        assert np.abs(logits[row, : own_logits.shape[1]] - own_logits[0]).max() <= 1e-4


def test_provenance_stays_strict_json_when_the_segments_differ(funasr_folder, monkeypatch):
    """A VAD reference that disagrees: the segments' parity is infinite, the fusion fails, and
    the provenance records it as "inf" (strict JSON, as the engine's records), never Infinity."""
    import json

    from svsurgery.fuse import fuse_preprocessing

    def disagreeing(self, *, pipeline=False):
        return VadReference("a reference that finds one millisecond", lambda waveform: np.array([[0, 1]], np.int64))

    monkeypatch.setattr(vad.EnergyVadOptions, "reference", disagreeing)
    fused, report = fuse_preprocessing(funasr_folder, vad=vad.EnergyVadOptions())
    assert not report.passed and not report.written
    text = fused.metadata_props["svsurgery.fuse"]
    recorded = json.loads(text, parse_constant=lambda constant: pytest.fail(f"{constant} in {text[:200]}"))
    assert recorded["parity"]["fused_vs_two_step"][0]["max_abs"] == "inf"


def test_fused_vad_model_without_speech_gives_empty_outputs(funasr_folder, tmp_path, capsys):
    from svsurgery.cli.main import main

    out = tmp_path / "fused.onnx"
    assert main(["fuse-preproc", str(funasr_folder), "-o", str(out), "--vad", "energy", "--no-merge"]) == 0
    assert "segments" in capsys.readouterr().out
    session = inference_session(out)
    feeds = {
        "waveform": np.zeros((1, 32000), np.float32),
        "waveform_lengths": np.array([32000]),
        "language": np.array([0], np.int32),
        "textnorm": np.array([15], np.int32),
    }
    logits, lengths, spans = session.run(["ctc_logits", "encoder_out_lens", "segments"], feeds)
    assert logits.shape[0] == lengths.shape[0] == spans.shape[0] == 0 and spans.shape == (0, 2)


def test_cli_vad_modes_and_bad_mode(funasr_folder, fsmn_folder, tmp_path, capsys):
    import json

    from svsurgery.cli.main import main

    out, report = tmp_path / "fused.onnx", tmp_path / "report.json"
    assert (
        main(
            [
                "fuse-preproc",
                str(funasr_folder),
                "-o",
                str(out),
                "--vad",
                f"fsmn:{fsmn_folder}",
                "--static-silence",
                "--max-single-segment-ms",
                "30000",
                "--report",
                str(report),
            ]
        )
        == 0
    )
    recorded = json.loads(report.read_text())["frontend"]["vad"]
    assert recorded["mode"] == "fsmn" and recorded["dynamic_silence"] is False
    assert recorded["state_machine"]["max_single_segment_time"] == 30000
    assert main(["fuse-preproc", str(funasr_folder), "-o", str(tmp_path / "x.onnx"), "--vad", "webrtc"]) == 2
    assert "expected silero, fsmn:DIR or energy" in capsys.readouterr().err
    assert (
        main(["fuse-preproc", str(funasr_folder), "-o", str(tmp_path / "y.onnx"), "--vad", f"fsmn:{tmp_path / 'nope'}"])
        == 2
    )
    assert "no such folder" in capsys.readouterr().err


# ----------------------------------------------------------------------------- a new mode: one class, one registry line


@dataclasses.dataclass(frozen=True)
class WholeRecordingVad(VadMode):
    """A mode as a user adds one: this class and its line in svsurgery.vad.mode.REGISTERED,
    nothing else. The whole recording is one segment when it is longer than ``min_ms``."""

    name: ClassVar[str] = "whole"
    cli_help: ClassVar[str] = "'whole' (the whole recording as one segment)"

    min_ms: float = 0.0  # ms; shorter recordings have no speech
    samp_freq: float = 16000.0  # Hz

    def validate(self) -> WholeRecordingVad:
        if self.min_ms < 0:
            raise BadInputError(f"--whole-min-ms {self.min_ms}: must be >= 0")
        return self

    def graph(self, g, samples) -> VadGraph:
        op = g.op
        milliseconds = op.Div(op.Add(g.dim(samples, 0), g.i64(15)), g.i64(16))  # [1], end rounded up
        span = op.Unsqueeze(op.Concat(g.i64(0), milliseconds, axis=0), g.i64(0))  # [1, 2]
        return VadGraph(op.Compress(span, op.Greater(milliseconds, g.i64(int(self.min_ms))), axis=0))

    def reference(self, *, pipeline: bool = False) -> VadReference:
        def segments(waveform):
            end = -(-waveform.size // 16)
            return np.array([[0, end]] if end > self.min_ms else [], np.int64).reshape(-1, 2)

        return VadReference("the whole recording, in numpy", segments)

    @classmethod
    def add_arguments(cls, group) -> None:
        group.add_argument("--whole-min-ms", type=float, default=0.0, help="whole: shorter recordings have no speech")

    @classmethod
    def from_arguments(cls, argument, args=None) -> WholeRecordingVad:
        return cls() if args is None else cls(min_ms=args.whole_min_ms)


@pytest.fixture
def whole_registered(monkeypatch):
    from svsurgery.vad import mode as vad_modes

    monkeypatch.setattr(vad_modes, "REGISTERED", (*vad_modes.REGISTERED, f"{__name__}:WholeRecordingVad"))
    vad_modes.modes.cache_clear()
    yield vad_modes
    vad_modes.modes.cache_clear()


def test_a_new_mode_is_one_class_and_a_registry_line(whole_registered, funasr_folder, tmp_path, capsys):
    """Registered, the class above is a --vad mode with its own option, fused and verified
    against its own reference, recorded in the fused model's metadata and read back from it
    by the audit, with no other change anywhere."""
    import json

    import svsurgery
    from svsurgery.audit.prepare import vad_from_metadata
    from svsurgery.audit.reference import PythonVad
    from svsurgery.cli.main import main

    vad_modes = whole_registered
    assert vad_modes.usage() == "silero, fsmn:DIR, energy or whole"
    assert "'whole' (the whole recording as one segment)" in vad_modes.cli_help()
    out, report = tmp_path / "fused.onnx", tmp_path / "report.json"
    assert (
        main(
            [
                "fuse-preproc",
                str(funasr_folder),
                "-o",
                str(out),
                "--vad",
                "whole",
                "--whole-min-ms",
                "250",
                "--report",
                str(report),
            ]
        )
        == 0
    )
    recorded = json.loads(report.read_text())
    assert recorded["passed"] and recorded["frontend"]["vad"] == {
        "mode": "whole",
        "min_ms": 250.0,
        "samp_freq": 16000.0,
    }
    assert "VAD segments checked against the whole recording, in numpy" in recorded["notices"]
    session = inference_session(out)
    ids = {"language": np.array([0], np.int32), "textnorm": np.array([15], np.int32)}
    for samples, expected in ((16000, [[0, 1000]]), (4801, [[0, 301]]), (3201, [])):
        feeds = {"waveform": np.zeros((1, samples), np.float32), "waveform_lengths": np.array([samples]), **ids}
        assert session.run(["segments"], feeds)[0].tolist() == expected
    options, _ = vad_from_metadata(svsurgery.load(out))
    assert options == WholeRecordingVad(min_ms=250.0)
    assert PythonVad(options).segments(np.zeros(16000, np.float32)).tolist() == [[0, 1000]]
    assert main(["fuse-preproc", str(funasr_folder), "-o", str(tmp_path / "x.onnx"), "--vad", "whole:x"]) == 2
    assert "expected silero, fsmn:DIR, energy or whole" in capsys.readouterr().err
    assert (
        main(
            [
                "fuse-preproc",
                str(funasr_folder),
                "-o",
                str(tmp_path / "y.onnx"),
                "--vad",
                "whole",
                "--whole-min-ms",
                "-1",
            ]
        )
        == 2
    )
    assert "--whole-min-ms -1.0: must be >= 0" in capsys.readouterr().err
