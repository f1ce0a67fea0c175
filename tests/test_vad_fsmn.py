"""--vad fsmn:DIR: the in-graph E2EVadModel against funasr-onnx's, driven as FunASR 1.4.16's
generate() (dynamic end silence) and with the static config behaviour, on synthetic
probability sequences and end to end on a random-weight FSMN over the vad-dev corpus."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir
import pytest
from vad_support import probe_session

from svsurgery.runtime import inference_session
from svsurgery.testing import vad_corpus
from svsurgery.vad.fsmn import decide_segments, frame_decibels, fsmn_segments, load_fsmn_vad
from svsurgery.vad.options import FsmnVadOptions

pytest.importorskip("torch", reason="the random-weight FSMN is built with torch")
funasr_reference = pytest.importorskip("svsurgery.vad.funasr_reference")
try:
    funasr_reference.e2e_vad_module()
except Exception as error:  # noqa: BLE001
    pytest.skip(f"funasr-onnx's E2EVadModel is the reference (pip install --no-deps funasr-onnx): {error}", allow_module_level=True)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from svsurgery.testing.fsmn import write_fsmn_vad_folder

    return write_fsmn_vad_folder(tmp_path_factory.mktemp("fsmn_vad"))


def _decisions_session(vad):
    silence = ir.val("p", ir.DataType.DOUBLE, ["frames"])
    waveform = ir.val("w", ir.DataType.FLOAT, ["n"])

    def build(g, p, w):
        decibels = frame_decibels(g, w, g.dim(p, 0), vad.machine)
        return (decide_segments(g, p, decibels, g.dim(w, 0), vad),)

    return probe_session(build, [silence, waveform])


def _variant(folder, **changes):
    """The folder's FsmnVad with options or state-machine settings changed."""
    option_fields = {f.name for f in dataclasses.fields(FsmnVadOptions)}
    vad = load_fsmn_vad(FsmnVadOptions(str(folder), **{k: v for k, v in changes.items() if k in option_fields}))
    machine = dataclasses.replace(vad.machine, **{k: v for k, v in changes.items() if k not in option_fields})
    return dataclasses.replace(vad, machine=machine)


VARIANTS = {
    "dynamic (FunASR 1.4.16 default)": {},
    "static config": {"dynamic_silence": False},
    "static 300 ms, 5 s max segment": {"max_end_silence_time": 300, "max_single_segment_time": 5000},
    "dynamic, 30 s max segment": {"max_single_segment_time": 30000},
    "single utterance": {"detect_mode": 0, "dynamic_silence": False},
    "no extend, snr gate": {"do_extend": 0, "snr_thres": 3.0, "dynamic_silence": False},
}


def _sequences(rng: np.random.Generator) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, silence probability per frame as float32, waveform) with T = (N - 400) // 160 + 1."""

    def waveform_for(frames: int, quiet: np.ndarray | None = None) -> np.ndarray:
        samples = (frames - 1) * 160 + 400 + int(rng.integers(0, 160))
        envelope = np.repeat(rng.uniform(0.001, 0.5, frames + 3), 160)[:samples]
        wave = rng.standard_normal(samples) * envelope
        if quiet is not None:  # digital silence where the network says silence: the SNR gate sees it
            for frame in np.flatnonzero(quiet):
                wave[frame * 160 : frame * 160 + 160] *= 1e-4
        return wave.astype(np.float32)

    cases = []
    flicker = rng.random(3000).astype(np.float32)
    cases.append(("flicker", flicker, waveform_for(flicker.size)))
    blocks = np.repeat(rng.random(120) > 0.5, rng.integers(5, 160, 120))
    bursts = np.where(blocks, rng.uniform(0.01, 0.15, blocks.size), rng.uniform(0.5, 0.99, blocks.size)).astype(np.float32)
    cases.append(("bursts", bursts, waveform_for(bursts.size, quiet=~blocks)))
    long_speech = rng.uniform(0.01, 0.1, 13000).astype(np.float32)  # 130 s: over 60 s segments and chunks
    for start in rng.integers(0, 12800, 12):
        long_speech[start : start + int(rng.integers(10, 150))] = 0.9
    cases.append(("long speech with pauses", long_speech, waveform_for(long_speech.size)))
    cases.append(("all silence", np.full(2500, 0.9, np.float32), waveform_for(2500)))
    cases.append(("all speech 70 s", np.full(7000, 0.05, np.float32), waveform_for(7000)))
    for frames in (1, 3, 25):
        cases.append((f"{frames} frames", rng.random(frames).astype(np.float32), waveform_for(frames)))
    around = rng.random(6000).astype(np.float32)  # about 60 s: the first chunk boundary or none
    for samples in (959_999, 960_000, 960_321):
        frames = (samples - 400) // 160 + 1
        cases.append((f"{samples} samples", np.resize(around, frames), (rng.standard_normal(samples) * 0.1).astype(np.float32)))
    return cases


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_state_machine_equals_funasr_on_synthetic_probabilities(folder, variant):
    vad = _variant(folder, **VARIANTS[variant])
    session = _decisions_session(vad)
    compared = 0
    for name, silence, waveform in _sequences(np.random.default_rng(sorted(VARIANTS).index(variant))):
        (found,) = session.run(None, {"p": silence.astype(np.float64), "w": waveform})
        expected = funasr_reference.funasr_segments(silence[None, :, None], waveform, vad)
        assert found.tolist() == expected.tolist(), f"{variant}: {name}"
        compared += len(expected)
    assert compared >= (2 if vad.machine.detect_mode == 0 else 20)  # single-utterance mode stops after one


@pytest.fixture(scope="module")
def fsmn_sessions(folder):
    sessions = {}
    for dynamic in (True, False):
        vad = load_fsmn_vad(FsmnVadOptions(str(folder), dynamic_silence=dynamic))
        waveform = ir.val("w", ir.DataType.FLOAT, ["n"])
        sessions[dynamic] = (vad, probe_session(lambda g, w, vad=vad: fsmn_segments(g, w, vad), [waveform]))
    return sessions


RECORDINGS = vad_corpus.recordings()


@pytest.mark.skipif(not RECORDINGS, reason="the vad-dev corpus (shared/data/vad-dev) is not on this machine")
@pytest.mark.parametrize("dynamic", [True, False], ids=["dynamic", "static"])
def test_fsmn_mode_end_to_end_on_corpus(fsmn_sessions, dynamic):
    """Graph segments == funasr-onnx's E2EVadModel on the graph's frame scores, clean and in noise."""
    vad, session = fsmn_sessions[dynamic]
    segments_seen = 0
    for recording in RECORDINGS:
        for kind, snr in (("clean", None), ("babble", 10.0)):
            waveform = vad_corpus.mix(recording, kind, snr)
            silence, segments = session.run(None, {"w": waveform})
            assert silence.shape == ((waveform.size - 400) // 160 + 1,)
            expected = funasr_reference.funasr_segments(silence.astype(np.float32)[None, :, None], waveform, vad)
            assert segments.tolist() == expected.tolist(), f"{recording.name} {kind} {snr}"
            segments_seen += len(expected)
    assert segments_seen >= 12


def test_fsmn_scores_follow_funasr_onnx_front_end(fsmn_sessions, folder):
    """The graph's frame scores against funasr-onnx's own WavFrontend (kaldi-native-fbank) +
    the same network: the front ends differ by float rounding only."""
    from svsurgery.parity.waveforms import speech_like

    module = funasr_reference.funasr_onnx_module("utils.frontend")
    _, session = fsmn_sessions[True]
    import yaml

    conf = yaml.safe_load((folder / "config.yaml").read_text())["frontend_conf"]
    frontend = module.WavFrontend(cmvn_file=str(folder / "am.mvn"), **conf)
    waveform = speech_like(12.0, seed=2)
    fbank, _ = frontend.fbank(waveform)
    features, _ = frontend.lfr_cmvn(fbank)
    network = inference_session(folder / "model.onnx")
    caches = {f"in_cache{i}": np.zeros((1, 128, 19, 1), np.float32) for i in range(4)}
    scores = network.run(["logits"], {"speech": features[None].astype(np.float32), **caches})[0][0, :, 0]
    silence, _ = session.run(None, {"w": waveform})
    assert silence.shape == scores.shape
    assert np.max(np.abs(silence - scores)) <= 2e-3


def test_fsmn_edge_waveforms(fsmn_sessions):
    vad, session = fsmn_sessions[True]
    for waveform in (np.zeros(0, np.float32), np.zeros(399, np.float32), np.zeros(16000, np.float32)):
        silence, segments = session.run(None, {"w": waveform})
        assert silence.shape == (max((waveform.size - 400) // 160 + 1, 0),) and segments.shape[1] == 2
        expected = funasr_reference.funasr_segments(silence.astype(np.float32)[None, :, None], waveform, vad)
        assert segments.tolist() == expected.tolist()


def test_fsmn_folder_errors(tmp_path):
    from svsurgery.errors import BadInputError

    with pytest.raises(BadInputError, match="no such folder"):
        load_fsmn_vad(FsmnVadOptions(str(tmp_path / "missing")))
    with pytest.raises(BadInputError, match="model.onnx"):
        load_fsmn_vad(FsmnVadOptions(str(tmp_path)))
