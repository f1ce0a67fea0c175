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
from svsurgery.vad.options import SileroVadOptions
from svsurgery.vad.silero import FRAME, silero_python_timestamps, silero_segments, speech_timestamps

silero_vad = pytest.importorskip("silero_vad", reason="the silero reference is a test dependency (pip install silero-vad)")
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
    return [flicker, bursts, long_speech, near, np.zeros(50, np.float32), np.ones(120, np.float32),
            np.array([0.9], np.float32), np.zeros(0, np.float32)]  # fmt: skip


OPTION_SETS = {
    "defaults": SileroVadOptions(),
    "unbounded-odd": SileroVadOptions(threshold=0.3, neg_threshold=0.25, speech_pad_ms=45.5, min_silence_duration_ms=33,
                                      min_speech_duration_ms=97.3),
    "unbounded-no-min-silence": SileroVadOptions(min_silence_duration_ms=0, min_speech_duration_ms=0),
    "unbounded-equal-thresholds": SileroVadOptions(threshold=0.5, neg_threshold=0.5, min_silence_duration_ms=64,
                                                   use_max_poss_sil_at_max_speech=False),
    "max-speech-longest-silence": SileroVadOptions(max_speech_duration_s=3.0),
    "max-speech-legacy-cut": SileroVadOptions(max_speech_duration_s=2.5, use_max_poss_sil_at_max_speech=False),
    "no-min-silence": SileroVadOptions(min_silence_duration_ms=0, min_speech_duration_ms=0, max_speech_duration_s=1.5),
    "odd-durations": SileroVadOptions(threshold=0.3, neg_threshold=0.25, speech_pad_ms=45.5, min_silence_duration_ms=33,
                                      min_speech_duration_ms=97.3, max_speech_duration_s=4.2),
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
        session = probe_session(lambda g, p, n, options=options: (speech_timestamps(g, p, n, options, loop=False),
                                                                  speech_timestamps(g, p, n, options, loop=True)),
                                [probabilities, count])  # fmt: skip
        levels = np.array([0.05, options.resolved_neg_threshold, np.nextafter(np.float32(options.resolved_neg_threshold), 0),
                           options.threshold, np.nextafter(np.float32(options.threshold), 0), 0.95], np.float32)  # fmt: skip
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
    from svsurgery.vad.detect import vad_model

    def loops(options):
        return sum(n.op_type == "Loop" for n in vad_model(options).graph)

    assert loops(SileroVadOptions()) == 0
    assert loops(SileroVadOptions(max_speech_duration_s=20)) == 1


@pytest.fixture(scope="module")
def silero_session():
    waveform = ir.val("w", ir.DataType.FLOAT, ["n"])
    return probe_session(lambda g, w: silero_segments(g, w, SileroVadOptions()), [waveform])


def _python_loop_probabilities(waveform: np.ndarray) -> np.ndarray:
    """silero's get_speech_timestamps loop: the stock ONNX model, 512 samples per call."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = silero_vad.load_silero_vad(onnx=True)
    audio = torch.from_numpy(waveform)
    probabilities = []
    for start in range(0, audio.numel(), FRAME):
        chunk = audio[start : start + FRAME]
        if chunk.numel() < FRAME:
            chunk = torch.nn.functional.pad(chunk, (0, FRAME - chunk.numel()))
        probabilities.append(model(chunk, 16000).item())
    return np.array(probabilities, dtype=np.float64)


RECORDINGS = vad_corpus.recordings()


@pytest.mark.skipif(not RECORDINGS, reason="the vad-dev corpus (shared/data/vad-dev) is not on this machine")
@pytest.mark.parametrize("kind,snr", vad_corpus.CONDITIONS, ids=[f"{k}-{s}" for k, s in vad_corpus.CONDITIONS])
def test_silero_mode_matches_python_pipeline_on_corpus(silero_session, kind, snr):
    for recording in RECORDINGS:
        waveform = vad_corpus.mix(recording, kind, snr)
        probabilities, timestamps, segments = silero_session.run(None, {"w": waveform})
        reference = _python_loop_probabilities(waveform)
        assert probabilities.shape == reference.shape
        assert np.max(np.abs(probabilities - reference)) <= PROBABILITY_TOLERANCE, recording.name
        expected = silero_python_timestamps(reference, waveform.size, SileroVadOptions()).tolist()
        assert timestamps.tolist() == expected, f"{recording.name} {kind} {snr}"
        assert len(expected) > 0
        assert np.array_equal(segments[:, 0], timestamps[:, 0] // 16) and np.array_equal(segments[:, 1], -(-timestamps[:, 1] // 16))


def test_silero_edge_waveforms(silero_session):
    for waveform in (np.zeros(0, np.float32), np.zeros(100, np.float32), np.zeros(16000, np.float32)):
        probabilities, timestamps, segments = silero_session.run(None, {"w": waveform})
        assert probabilities.shape == (-(-waveform.size // FRAME),)
        assert timestamps.shape == (0, 2) and segments.shape == (0, 2)


def test_silero_options_are_checked():
    from svsurgery.errors import BadInputError

    with pytest.raises(BadInputError, match="16000"):
        SileroVadOptions(samp_freq=8000).validate()
    with pytest.raises(BadInputError, match="does not exist"):
        from svsurgery.vad.silero import silero_model

        silero_model(dataclasses.replace(SileroVadOptions(), model="/nonexistent/silero.onnx"))
