"""The fbank graph vs kaldi-native-fbank and vs the float64 statement of Kaldi's algorithm."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from frontend_support import graph_features, knf_fbank

from svsurgery import frontend
from svsurgery.errors import BadInputError
from svsurgery.frontend import fbank as fbank_module
from svsurgery.frontend import numpy_statement
from svsurgery.runtime import inference_session
from svsurgery.testing import audio

MAX_ABS_VS_KNF = 2e-3  # two good float32 implementations differ by up to ~1.5e-3
MEAN_ABS_VS_KNF = 1e-5
MAX_ABS_VS_FLOAT64 = 5e-4  # kaldi-native-fbank itself is ~1.4e-3 from float64 on 60 s of speech

SENSEVOICE = frontend.FbankOptions.sensevoice()


@pytest.fixture(scope="module")
def speech_10s():
    return audio.speech(10.0, seed=1)


@pytest.fixture(scope="module")
def speech_60s():
    return audio.speech(60.0, seed=2)


def _signals(speech_10s, speech_60s):
    rng = np.random.default_rng(3)
    offset = np.float32(328 / 32768)  # a DC offset as a 16-bit recording carries it: whole int16 steps
    silence_then_speech = np.concatenate([np.full(16000, offset, np.float32), speech_10s[:32000] + offset])
    signals = {
        "speech 10 s": speech_10s,
        "speech 60 s": speech_60s,
        "white noise": audio.white_noise(5.0, seed=4),
        "digital silence": np.zeros(16000, np.float32),
        "DC offset silence then speech": silence_then_speech.astype(np.float32),
    }
    for length in (0, 1, 399, 400, 401, 560):
        signals[f"{length} samples"] = (rng.standard_normal(length) * 0.1).astype(np.float32)
    return signals


def test_matches_kaldi_native_fbank(speech_10s, speech_60s):
    for name, signal in _signals(speech_10s, speech_60s).items():
        expected = knf_fbank(signal, SENSEVOICE)
        (ours,), _, _ = graph_features(signal, SENSEVOICE)
        assert ours.shape == expected.shape, name
        if expected.size == 0:
            continue
        error = np.abs(ours.astype(np.float64) - expected)
        assert error.max() <= MAX_ABS_VS_KNF, f"{name}: max abs {error.max():.2e}"
        assert error.mean() <= MEAN_ABS_VS_KNF, f"{name}: mean abs {error.mean():.2e}"


def test_closer_to_float64_than_kaldi_native_fbank(speech_60s):
    exact = numpy_statement.fbank(speech_60s, SENSEVOICE)
    (ours,), _, _ = graph_features(speech_60s, SENSEVOICE)
    ours_error = np.abs(ours - exact).max()
    knf_error = np.abs(knf_fbank(speech_60s, SENSEVOICE) - exact).max()
    assert ours_error <= MAX_ABS_VS_FLOAT64, f"graph vs float64: {ours_error:.2e}"
    assert ours_error < knf_error, f"graph {ours_error:.2e} vs kaldi-native-fbank {knf_error:.2e}"


def test_unquantized_dc_offset_removed_exactly_where_knf_leaves_residue():
    # 0.01 * 32768 is not a float32 integer: knf's float accumulation of the frame mean leaves
    # a residue that log turns into -14.35 instead of log(FLT_EPSILON) in the DC bin; the graph
    # removes the offset exactly, as the float64 statement does.
    signal = np.full(16000, 0.01, np.float32)
    exact = numpy_statement.fbank(signal, SENSEVOICE)
    (ours,), _, _ = graph_features(signal, SENSEVOICE)
    assert np.abs(ours - exact).max() <= MAX_ABS_VS_FLOAT64
    assert np.abs(knf_fbank(signal, SENSEVOICE) - exact).max() > 1.0


def test_constant_frames_at_any_level_give_exactly_the_floor():
    # Kaldi removes each frame's mean: a frame of equal samples has a zero spectrum whatever the
    # level (the float64 statement gives log(FLT_EPSILON)). Levels change mid-signal here, some
    # not on the 16-bit grid; kaldi-native-fbank leaves float32 residue of up to ~11 there.
    levels = [0.0, 0.3, -0.2, 0.01, 328 / 32768, -1.0]
    signal = np.concatenate([np.full(4000, level, np.float32) for level in levels])
    (ours,), _, _ = graph_features(signal, SENSEVOICE)
    exact = numpy_statement.fbank(signal, SENSEVOICE)
    floor = np.log(np.float32(np.finfo(np.float32).eps))
    flat = np.array([np.ptp(signal[160 * t : 160 * t + 400]) == 0 for t in range(ours.shape[0])])
    assert flat.sum() >= 100
    assert np.all(ours[flat] == floor)
    assert np.abs(ours - exact).max() <= MAX_ABS_VS_FLOAT64  # the frames across a level change too
    assert np.abs(knf_fbank(signal, SENSEVOICE) - exact).max() > 1.0


@pytest.mark.parametrize("offset", [328, 2000])
def test_recording_offsets_stay_closer_to_float64_than_knf(speech_10s, offset):
    """A DC offset on speech and on a 1-LSB noise floor: no offset meets a large coefficient."""
    noise = np.round(np.random.default_rng(offset).standard_normal(48000)).astype(np.float32)
    for name, signal in {"speech": speech_10s, "noise floor": noise / 32768}.items():
        signal = (signal + np.float32(offset / 32768)).astype(np.float32)
        exact = numpy_statement.fbank(signal, SENSEVOICE)
        (ours,), _, _ = graph_features(signal, SENSEVOICE)
        ours_error = np.abs(ours - exact).max()
        assert ours_error <= MAX_ABS_VS_FLOAT64, f"{name} + {offset}: {ours_error:.2e}"
        assert ours_error < np.abs(knf_fbank(signal, SENSEVOICE) - exact).max(), name


def test_features_do_not_depend_on_the_block_size(speech_60s, monkeypatch):
    """Frames go through the Loop in blocks; a block size of 7 gives the bits of one block."""
    rows = [speech_60s, speech_60s[:30000], speech_60s[7000:7401]]
    width = max(r.size for r in rows)
    feeds = {
        "waveform": np.stack([np.pad(r, (0, width - r.size)) for r in rows]),
        "waveform_lengths": np.array([r.size for r in rows], np.int64),
    }
    outputs = []
    for block in (fbank_module._BLOCK_FRAMES, 7):
        monkeypatch.setattr(fbank_module, "_BLOCK_FRAMES", block)
        session = inference_session(frontend.build(SENSEVOICE), intra_op_threads=1)
        outputs.append(session.run(["features", "feature_lengths"], feeds))
    np.testing.assert_array_equal(outputs[0][1], outputs[1][1])
    for count, default, small in zip(outputs[0][1], outputs[0][0], outputs[1][0]):
        np.testing.assert_array_equal(default[:count], small[:count])


def test_all_zero_input_gives_exactly_log_flt_epsilon():
    (ours,), _, _ = graph_features(np.zeros(8000, np.float32), SENSEVOICE)
    assert ours.shape == (48, 80)
    assert np.all(ours == np.log(np.float32(np.finfo(np.float32).eps))), np.unique(ours)
    assert np.allclose(ours, -15.9424, atol=1e-4)


def _variant(**changes) -> frontend.FbankOptions:
    frame_changes = {
        k: v for k, v in changes.items() if k in {f.name for f in dataclasses.fields(frontend.FrameExtractionOptions)}
    }
    mel_changes = {
        k: v for k, v in changes.items() if k in {f.name for f in dataclasses.fields(frontend.MelBanksOptions)}
    }
    top = {k: v for k, v in changes.items() if k not in frame_changes and k not in mel_changes}
    return dataclasses.replace(
        SENSEVOICE,
        frame_opts=dataclasses.replace(SENSEVOICE.frame_opts, **frame_changes),
        mel_opts=dataclasses.replace(SENSEVOICE.mel_opts, **mel_changes),
        **top,
    )


VARIANTS = {
    **{f"window={w}": _variant(window_type=w) for w in frontend.options.WINDOW_TYPES if w != "sine"},
    **{f"window={w}, snip_edges=False": _variant(window_type=w, snip_edges=False) for w in ("povey", "hamming")},
    "use_energy raw": _variant(use_energy=True),
    "use_energy windowed, htk_compat": _variant(use_energy=True, raw_energy=False, htk_compat=True),
    "use_energy with energy_floor": _variant(use_energy=True, energy_floor=1e6),
    "no log": _variant(use_log_fbank=False),
    "magnitude": _variant(use_power=False),
    "high_freq offset from Nyquist, 40 bins": _variant(high_freq=-400.0, low_freq=60.0, num_bins=40),
    "no preemphasis, no DC removal": _variant(preemph_coeff=0.0, remove_dc_offset=False),
    "8 kHz": _variant(samp_freq=8000.0, num_bins=40),
    "no power-of-two padding": _variant(round_to_power_of_two=False),
    "htk_mode": _variant(htk_mode=True),
    "povey, no input scale": _variant(window_type="povey", input_scale=1.0),
    # 22.05 kHz: 551-sample frames, 1024-point FFT in 256 x 4 (stage-1 and mel products over 128 terms split)
    "22.05 kHz": _variant(samp_freq=22050.0),
    "magnitude, windowed energy": _variant(use_power=False, use_energy=True, raw_energy=False),
    "no DC removal, raw energy": _variant(remove_dc_offset=False, use_energy=True),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_options_match_kaldi_native_fbank(name, speech_10s):
    opts = VARIANTS[name]
    signals = [speech_10s[:24000], speech_10s[:8001], np.zeros(0, np.float32), speech_10s[:150]]
    for signal in signals:
        expected = knf_fbank(signal, opts)
        (ours,), _, _ = graph_features(signal, opts)
        assert ours.shape == expected.shape, (name, signal.size)
        if expected.size == 0:
            continue
        if opts.use_log_fbank:
            error = np.abs(ours - expected)
        else:  # linear energies span many decades: compare relatively
            error = np.abs(ours - expected) / np.maximum(np.abs(expected), 1e-3 * np.abs(expected).max())
        assert error.max() <= MAX_ABS_VS_KNF, f"{name}, {signal.size} samples: {error.max():.2e}"
        exact = numpy_statement.fbank(signal, opts)
        assert exact.shape == expected.shape
        if opts.use_log_fbank:  # and as close to the float64 statement as kaldi-native-fbank, or within 5e-4
            ours_error, knf_error = np.abs(ours - exact).max(), np.abs(expected - exact).max()
            assert ours_error <= max(knf_error, MAX_ABS_VS_FLOAT64), f"{name}: {ours_error:.2e} vs knf {knf_error:.2e}"


def test_dither_is_refused_with_the_reason():
    with pytest.raises(BadInputError, match="deterministic"):
        frontend.build(_variant(dither=1.0))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"window_type": "kaiser"}, "window_type"),
        ({"high_freq": 9000.0}, "Nyquist"),
        ({"num_bins": 2}, "at least 3"),
        ({"input_scale": 0.0}, "input_scale"),
    ],
)
def test_invalid_options_are_refused(changes, message):
    with pytest.raises(BadInputError, match=message):
        frontend.build(_variant(**changes))


@pytest.mark.parametrize("variant", ["snip_edges", "snip_edges=False", "22.05 kHz"])
def test_batch_rows_equal_each_row_alone(speech_10s, variant):
    opts = {
        "snip_edges": SENSEVOICE,
        "snip_edges=False": _variant(snip_edges=False),
        "22.05 kHz": VARIANTS["22.05 kHz"],
    }[variant]
    rows = [speech_10s[:16000], speech_10s[5000:5401], speech_10s[:37], speech_10s[1000:40000]]
    batched, padded, counts = graph_features(rows, opts)
    for row, features in zip(rows, batched):
        (alone,), _, _ = graph_features(row, opts)
        np.testing.assert_array_equal(features, alone)
    for i, count in enumerate(counts):
        assert np.all(padded[i, count:] == 0)


def test_every_supported_opset_gives_the_same_features(speech_10s):
    signal = speech_10s[:20000]
    (base,), _, _ = graph_features(signal, SENSEVOICE, opset=17)
    for opset in (13, 14, 15, 18, 21):
        (ours,), _, _ = graph_features(signal, SENSEVOICE, opset=opset)
        np.testing.assert_array_equal(ours, base)
