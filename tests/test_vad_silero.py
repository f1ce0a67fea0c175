"""--vad silero: the grafted sequence model against silero's own Python chunk loop, and the
in-graph get_speech_timestamps against silero's function, on synthetic probabilities and
on the vad-dev corpus clean and in white/pink/babble noise at 20/10/5 dB."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import onnx_ir as ir
import pytest
from vad_support import probe_session

from svsurgery.testing import vad_corpus
from svsurgery.vad.silero import FRAME, SileroVadOptions, silero_python_timestamps, silero_segments, speech_timestamps

silero_vad = pytest.importorskip(
    "silero_vad", reason="the silero reference is a test dependency (pip install silero-vad)"
)
torch = pytest.importorskip("torch")

PROBABILITY_TOLERANCE = 1e-5  # the bar against silero's Python chunk loop


def _timestamps_session(options: SileroVadOptions):
    probabilities = ir.val("p", ir.DataType.FLOAT, ["frames"])
    count = ir.val("n", ir.DataType.INT64, [1])
    return probe_session(lambda g, p, n: (speech_timestamps(g, p, n, options),), [probabilities, count])


def _sequences(rng: np.random.Generator) -> list[np.ndarray]:
    """Random flicker, bursts and long speech with short dips, all silence, all speech, tiny."""
    flicker = rng.random(400).astype(np.float32)
    bursts = np.repeat(rng.random(60) > 0.5, rng.integers(1, 30, 60)).astype(np.float32) * 0.9 + 0.05
    long_speech = np.full(900, 0.9, np.float32)
    long_speech[rng.integers(0, 900, 25)] = 0.1  # one-frame dips: cut candidates of various lengths
    dips = rng.integers(0, 880, 6)
    for start, length in zip(dips, rng.integers(2, 20, 6)):
        long_speech[start : start + length] = 0.2
    near = np.full(300, 0.5, np.float32)  # exactly at the threshold
    near[::7] = np.nextafter(np.float32(0.35), np.float32(0))
    return [
        flicker,
        bursts,
        long_speech,
        near,
        np.zeros(50, np.float32),
        np.ones(120, np.float32),
        np.array([0.9], np.float32),
        np.zeros(0, np.float32),
    ]


OPTION_SETS = {
    "defaults": SileroVadOptions(),
    "unbounded-odd": SileroVadOptions(
        threshold=0.3, neg_threshold=0.25, speech_pad_ms=45.5, min_silence_duration_ms=33, min_speech_duration_ms=97.3
    ),
    "unbounded-no-min-silence": SileroVadOptions(min_silence_duration_ms=0, min_speech_duration_ms=0),
    "unbounded-equal-thresholds": SileroVadOptions(
        threshold=0.5, neg_threshold=0.5, min_silence_duration_ms=64, use_max_poss_sil_at_max_speech=False
    ),
    "max-speech-longest-silence": SileroVadOptions(max_speech_duration_s=3.0),
    "max-speech-legacy-cut": SileroVadOptions(max_speech_duration_s=2.5, use_max_poss_sil_at_max_speech=False),
    "no-min-silence": SileroVadOptions(min_silence_duration_ms=0, min_speech_duration_ms=0, max_speech_duration_s=1.5),
    "odd-durations": SileroVadOptions(
        threshold=0.3,
        neg_threshold=0.25,
        speech_pad_ms=45.5,
        min_silence_duration_ms=33,
        min_speech_duration_ms=97.3,
        max_speech_duration_s=4.2,
    ),
}


@pytest.mark.parametrize("name", sorted(OPTION_SETS))
def test_timestamps_equal_silero_on_synthetic_probabilities(name):
    options = OPTION_SETS[name]
    session = _timestamps_session(options)
    rng = np.random.default_rng(sorted(OPTION_SETS).index(name))
    compared = 0
    for probabilities in _sequences(rng):
        for samples in {probabilities.size * FRAME, max(probabilities.size * FRAME - 300, 0)}:
            (found,) = session.run(None, {"p": probabilities, "n": np.array([samples], np.int64)})
            expected = silero_python_timestamps(probabilities, samples, options).tolist()
            assert found.tolist() == expected, f"{name}: {probabilities.size} frames, {samples} samples"
            compared += len(expected)
    assert compared > 10  # the sequences do produce speech to compare


def test_loop_free_timestamps_equal_the_loop_and_silero_on_random_sequences():
    """The loop-free formulation (no maximum speech length) against the Loop over frames and
    silero's own function: random flicker, bursts, values at and beside both thresholds."""
    from svsurgery.vad.silero import loop_free

    rng = np.random.default_rng(42)
    for name in ("defaults", "unbounded-odd", "unbounded-no-min-silence", "unbounded-equal-thresholds"):
        options = OPTION_SETS[name]
        assert loop_free(options)
        probabilities = ir.val("p", ir.DataType.FLOAT, ["frames"])
        count = ir.val("n", ir.DataType.INT64, [1])
        session = probe_session(
            lambda g, p, n, options=options: (
                speech_timestamps(g, p, n, options, loop=False),
                speech_timestamps(g, p, n, options, loop=True),
            ),
            [probabilities, count],
        )
        levels = np.array(
            [
                0.05,
                options.resolved_neg_threshold,
                np.nextafter(np.float32(options.resolved_neg_threshold), 0),
                options.threshold,
                np.nextafter(np.float32(options.threshold), 0),
                0.95,
            ],
            np.float32,
        )
        segments = 0
        for trial in range(150):
            size = int(rng.integers(0, 300))
            kind = trial % 3
            if kind == 0:
                sequence = rng.random(size)
            elif kind == 1:
                sequence = np.repeat(rng.random(40) > 0.5, rng.integers(1, 25, 40))[:size] * 0.9 + 0.05
            else:
                sequence = rng.choice(levels, size)
            sequence = sequence.astype(np.float32)
            samples = max(sequence.size * FRAME - int(rng.integers(0, FRAME)), 0)
            loop_free_found, loop_found = session.run(None, {"p": sequence, "n": np.array([samples], np.int64)})
            expected = silero_python_timestamps(sequence, samples, options).tolist()
            assert loop_free_found.tolist() == expected == loop_found.tolist(), f"{name}, trial {trial}"
            segments += len(expected)
        assert segments > 100


def test_default_options_build_no_loop_and_a_maximum_speech_length_does():
    from svsurgery.vad.mode import vad_model

    def loops(options):
        return sum(n.op_type == "Loop" for n in vad_model(options).graph)

    assert loops(SileroVadOptions()) == 0
    assert loops(SileroVadOptions(max_speech_duration_s=20)) == 1


@pytest.fixture(scope="module")
def silero_session():
    waveform = ir.val("w", ir.DataType.FLOAT, ["n"])
    return probe_session(lambda g, w: _outputs(silero_segments(g, w, SileroVadOptions())), [waveform])


def _outputs(found):
    """The silero mode's named graph values as a probe model's outputs."""
    return found.scores, found.timestamps, found.segments


def _python_loop_probabilities(waveform: np.ndarray, path=None) -> np.ndarray:
    """silero's get_speech_timestamps loop: a stock ONNX model (default silero_vad.onnx) in
    silero's OnnxWrapper, 512 samples per call."""
    from silero_vad.utils_vad import OnnxWrapper

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = silero_vad.load_silero_vad(onnx=True) if path is None else OnnxWrapper(str(path), force_onnx_cpu=True)
    audio = torch.from_numpy(waveform)
    probabilities = []
    for start in range(0, audio.numel(), FRAME):
        chunk = audio[start : start + FRAME]
        if chunk.numel() < FRAME:
            chunk = torch.nn.functional.pad(chunk, (0, FRAME - chunk.numel()))
        probabilities.append(model(chunk, 16000).item())
    return np.array(probabilities, dtype=np.float64)


RECORDINGS = vad_corpus.recordings()


@pytest.mark.parametrize("kind,snr", vad_corpus.CONDITIONS, ids=[f"{k}-{s}" for k, s in vad_corpus.CONDITIONS])
def test_silero_mode_matches_python_pipeline_on_corpus(silero_session, kind, snr):
    vad_corpus.require_corpus()
    for recording in RECORDINGS:
        waveform = vad_corpus.mix(recording, kind, snr)
        probabilities, timestamps, segments = silero_session.run(None, {"w": waveform})
        reference = _python_loop_probabilities(waveform)
        assert probabilities.shape == reference.shape
        assert np.max(np.abs(probabilities - reference)) <= PROBABILITY_TOLERANCE, recording.name
        expected = silero_python_timestamps(reference, waveform.size, SileroVadOptions()).tolist()
        assert timestamps.tolist() == expected, f"{recording.name} {kind} {snr}"
        assert len(expected) > 0
        assert np.array_equal(segments[:, 0], timestamps[:, 0] // 16) and np.array_equal(
            segments[:, 1], -(-timestamps[:, 1] // 16)
        )


def test_silero_edge_waveforms(silero_session):
    for waveform in (np.zeros(0, np.float32), np.zeros(100, np.float32), np.zeros(16000, np.float32)):
        probabilities, timestamps, segments = silero_session.run(None, {"w": waveform})
        assert probabilities.shape == (-(-waveform.size // FRAME),)
        assert timestamps.shape == (0, 2) and segments.shape == (0, 2)


def test_silero_options_are_checked():
    from svsurgery.errors import BadInputError

    with pytest.raises(BadInputError, match="16000"):
        SileroVadOptions(samp_freq=8000).validate()
    with pytest.raises(BadInputError, match="no such file"):
        dataclasses.replace(SileroVadOptions(), model="/nonexistent/silero.onnx").validate()


# ----------------------------------------------------------------------------- the stock streaming models

STREAMING = ("silero_vad.onnx", "silero_vad_16k_op15.onnx", "silero_vad_op18_ifless.onnx")
STREAMING_TOLERANCE = 1e-6  # the bar; measured: 0, bit for bit


@pytest.mark.parametrize("filename", STREAMING)
def test_stock_streaming_model_runs_as_one_loop_equal_to_silero_onnx_wrapper(filename):
    """A streaming model given as --silero-model runs as the body of one Loop over 512-sample
    chunks (its state carried, its weights in the outer graph) and gives, on vad-dev, the
    probabilities silero's OnnxWrapper gives running that same file chunk by chunk, and the
    timestamps of get_speech_timestamps on it (the mode's reference: OnnxWrapper +
    get_speech_timestamps). silero_vad.onnx under every condition, the others clean and in
    babble at 10 dB."""
    from svsurgery.runtime import inference_session
    from svsurgery.testing.third_party import silero_model
    from svsurgery.vad.mode import vad_model

    vad_corpus.require_corpus()
    path = silero_model(filename)
    options = SileroVadOptions(model=str(path))
    model = vad_model(options)
    loops = [n for n in model.graph if n.op_type == "Loop"]
    assert len(loops) == 1, "one Loop over the chunks (the timestamps are loop-free with the default options)"
    assert sum(n.op_type == "Conv" for n in loops[0].attributes["body"].value) == 6, "the network is the Loop's body"
    assert not any(len(g.initializers) for g in model.graphs() if g is not model.graph), (
        "weights stay in the outer graph"
    )
    assert options.metadata()["network"] == "streaming"
    session = inference_session(model, intra_op_threads=1)
    reference = options.reference()
    assert reference.description == f"silero-vad's Python (OnnxWrapper on {filename} + get_speech_timestamps)"
    conditions = vad_corpus.CONDITIONS if filename == "silero_vad.onnx" else (("clean", None), ("babble", 10.0))
    for kind, snr in conditions:
        for recording in vad_corpus.recordings():
            waveform = vad_corpus.mix(recording, kind, snr)
            scores, segments = session.run(["scores", "segments"], {"samples": waveform})
            expected = _python_loop_probabilities(waveform, path)
            assert scores.shape == expected.shape
            assert np.max(np.abs(scores - expected)) <= STREAMING_TOLERANCE, f"{filename} {recording.name} {kind} {snr}"
            if kind == "clean":  # silero's whole get_speech_timestamps once per recording ...
                expected_segments = reference.segments(waveform)
            else:  # ... elsewhere its state machine on the probabilities just computed (what it runs inside)
                samples = silero_python_timestamps(expected, waveform.size, options)
                expected_segments = np.stack([samples[:, 0] // 16, -(-samples[:, 1] // 16)], axis=1).reshape(-1, 2)
            np.testing.assert_array_equal(
                segments, expected_segments, err_msg=f"{filename} {recording.name} {kind} {snr}"
            )
            assert len(segments) > 0


@pytest.mark.parametrize("filename", STREAMING)
def test_streaming_model_edge_waveforms(filename):
    from svsurgery.runtime import inference_session
    from svsurgery.testing.third_party import silero_model
    from svsurgery.vad.mode import vad_model

    session = inference_session(vad_model(SileroVadOptions(model=str(silero_model(filename)))))
    for waveform in (np.zeros(0, np.float32), np.zeros(100, np.float32), np.zeros(16000, np.float32)):
        scores, segments = session.run(["scores", "segments"], {"samples": waveform})
        assert scores.shape == (-(-waveform.size // FRAME),) and segments.shape == (0, 2)


@pytest.mark.parametrize("filename", ["silero_vad_half.onnx", "silero_vad_openvino_16k.onnx"])
def test_stock_models_silero_cannot_run_itself_are_refused_in_one_line(filename):
    """The files without an sr input: silero's own OnnxWrapper feeds sr, so nothing of silero's
    runs them; refused naming what is supported."""
    from svsurgery.errors import BadInputError
    from svsurgery.testing.third_party import silero_model

    with pytest.raises(BadInputError) as refused:
        SileroVadOptions(model=str(silero_model(filename))).validate()
    message = str(refused.value)
    assert "\n" not in message and filename in message and "without an sr input" in message
    assert "silero_vad_16k_sequence.onnx" in message and "silero_vad_16k_op15.onnx" in message


# ----------------------------------------------------------------------------- --silero-model: checked first


def _escaping(path):
    """A model whose external data points outside its folder."""
    import onnx
    from onnx import helper, numpy_helper

    weight = numpy_helper.from_array(np.eye(4, dtype=np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="../outside.bin")
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def bad_silero_models(tmp_path_factory):
    """--silero-model files that are not a silero model, and what the line about each says."""
    root = tmp_path_factory.mktemp("bad_silero")
    (root / "random.onnx").write_bytes(bytes(range(256)) * 9)
    (root / "empty.onnx").write_bytes(b"")
    (root / "outside.bin").write_bytes(b"\0" * 64)
    (root / "nested").mkdir()
    return {
        "random": (root / "random.onnx", "do not parse as an ONNX model"),
        "empty": (root / "empty.onnx", "empty file"),
        "another model": (_tiny_encoder(root / "encoder.onnx"), "not a silero VAD model this mode runs"),
        "escaping external data": (_escaping(root / "nested" / "escaping.onnx"), "outside the model's folder"),
        "missing": (root / "missing.onnx", "no such file"),
    }


def test_bad_silero_model_is_one_line_before_onnxruntime_sees_it(bad_silero_models, tmp_path, capsys, monkeypatch):
    """Random bytes, an empty file, a model of another kind and external data escaping its
    folder, given as --silero-model: svsurgery's loader and the mode's signature check refuse
    it in one line naming the file (exit 2), before onnxruntime (silero's reference, the
    graph's session) reads it, and nothing is written."""
    import onnxruntime

    from svsurgery.cli.main import main

    encoder = _tiny_encoder(tmp_path / "encoder.onnx")

    def refuse(*args, **kwargs):
        raise AssertionError(f"onnxruntime reached with {args[:1]}")

    monkeypatch.setattr(onnxruntime, "InferenceSession", refuse)
    for case, (path, message) in bad_silero_models.items():
        out = tmp_path / "fused.onnx"
        code = main(["fuse-preproc", str(encoder), "-o", str(out), "--vad", "silero", "--silero-model", str(path)])
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "Traceback" not in err, (case, err)
        assert path.name in lines[0] and message in lines[0], (case, lines[0])
        assert not out.exists()


def _tiny_encoder(path):
    import onnx
    from onnx import helper, numpy_helper

    weight = numpy_helper.from_array(np.zeros((560, 8), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["speech", "w"], ["logits"])],
        "tiny_encoder",
        [helper.make_tensor_value_info("speech", onnx.TensorProto.FLOAT, ["B", "T", 560])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["B", "T", 8])],
        [weight],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path
