"""Exports made by other people's exporters: fix, fp16, golden, check and diff run on every
one without --inputs, on inputs generated from the signature the way the model is fed.

Hugging Face's Whisper encoder, wav2vec2 and BERT (small random-weight configurations)
through torch.onnx's TorchScript and dynamo exporters, silero-vad's shipped models and
FunASR's official fsmn-vad model. Each model is exported once per session.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import svsurgery
from svsurgery.cli.main import main
from svsurgery.parity.metrics import PROFILES

HF = [f"{name}/{exporter}" for name in ("whisper-encoder", "wav2vec2", "bert") for exporter in ("legacy", "dynamo")]
SHIPPED = ["silero_vad.onnx", "silero_vad_16k_op15.onnx", "fsmn-vad"]


@pytest.fixture(scope="session")
def third_party(tmp_path_factory) -> dict[str, Path]:
    """Every export of this file, by id: written once per session."""
    from svsurgery.testing.third_party import export_hf, fsmn_vad_folder, silero_model

    root = tmp_path_factory.mktemp("third_party")
    models = {}
    for model_id in HF:
        name, exporter = model_id.split("/")
        folder = root / name / exporter
        folder.mkdir(parents=True)
        models[model_id] = export_hf(name, exporter, folder / "model.onnx")
    for filename in ("silero_vad.onnx", "silero_vad_16k_op15.onnx"):
        models[filename] = Path(shutil.copy(silero_model(filename), root / filename))
    fsmn = root / "fsmn-vad"
    fsmn.mkdir()
    for filename in ("model.onnx", "am.mvn", "config.yaml"):  # the folder as FunASR ships it (model.pt left out)
        shutil.copy(fsmn_vad_folder() / filename, fsmn / filename)
    models["fsmn-vad"] = fsmn / "model.onnx"
    return models


def _cli(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.err


def _within(report: dict, profile: str) -> None:
    """Every output of an engine report passed, and its figures are inside ``profile``'s bounds."""
    tolerance = PROFILES[profile]
    assert report["final"]["tolerance"] == profile
    for output in report["final"]["outputs"]:
        assert output["passed"] and output["nan_count"] == 0 and output["inf_count"] == 0, output
        if not output["exact"]:
            assert output["max_rel"] <= tolerance.max_rel and output["cosine"] >= tolerance.min_cosine, output


# what each export's generated inputs must be, as the fix report says (how) and as the golden file holds them
EXPECTED_HOW = {
    "whisper-encoder": {"input_features": ("Whisper's log-mel (80 Slaney mel bins",)},
    "wav2vec2": {"input_values": ("speech-like waveform at 16000 Hz", "2 rows of 1 s", "a Conv reads it as a signal")},
    "bert": {
        "input_ids": ("random ids in [0, 100)", "0 after each row's valid length [8, 5]"),
        "attention_mask": ("ones over the valid length of each row [8, 5], zeros after",),
        "token_type_ids": ("random ids in [0, 2)",),
    },
    "silero_vad.onnx": {
        "input": ("speech-like waveform at 16000 Hz ('sr' is compared with 16000)", "2 rows of 36 ms"),
        "state": ("zeros (recurrent state: returned as output 'stateN'", "batch 2 as the other inputs"),
        "sr": ("16000 (a sample rate: compared with 16000",),
    },
    "silero_vad_16k_op15.onnx": {
        "input": ("speech-like waveform at 16000 Hz", "2 rows of 36 ms"),
        "state": ("zeros (recurrent state",),
        "sr": ("16000 (a sample rate: its name 'sr'",),
    },
    "fsmn-vad": {
        "speech": ("LFR 5,1", "CMVN from am.mvn", "one row of 4.0 s"),
        **{
            f"in_cache{i}": (f"zeros (recurrent state: returned as output 'out_cache{i}'; its fixed dimensions kept)",)
            for i in range(4)
        },
    },
}


def _check_golden_inputs(model_id: str, inputs: dict[str, np.ndarray]) -> None:
    """The arrays themselves: what the report's sentences claim."""
    kind = model_id.split("/")[0]
    if kind == "whisper-encoder":
        from svsurgery.parity.waveforms import speech_like, whisper_log_mel

        features = inputs["input_features"]
        assert features.shape == (2, 80, 3000) and features.dtype == np.float32
        np.testing.assert_allclose(features[1], whisper_log_mel(speech_like(2.3, seed=1)), atol=1e-6)
    elif kind == "wav2vec2":
        wave = inputs["input_values"]
        assert wave.shape == (2, 16000) and 0.05 < np.abs(wave).max() <= 1.0
    elif kind == "bert":
        mask = inputs["attention_mask"]
        assert mask.tolist() == [[1] * 8, [1] * 5 + [0] * 3]
        assert inputs["input_ids"].max() < 100 and np.all(inputs["input_ids"][1, 5:] == 0)
        assert set(np.unique(inputs["token_type_ids"])) <= {0, 1}
    elif kind.startswith("silero"):
        assert inputs["input"].shape == (2, 576) and np.abs(inputs["input"]).max() > 0.05  # a chunk with speech in it
        assert inputs["state"].shape == (2, 2, 128) and not inputs["state"].any()
        assert inputs["sr"].shape == () and int(inputs["sr"]) == 16000
    else:  # fsmn-vad: FunASR's export fixes batch 1 and the cache shapes
        assert inputs["speech"].shape[0] == 1 and inputs["speech"].shape[2] == 400 and inputs["speech"].shape[1] > 300
        for i in range(4):
            assert inputs[f"in_cache{i}"].shape == (1, 128, 19, 1) and not inputs[f"in_cache{i}"].any()


@pytest.mark.parametrize("model_id", HF + SHIPPED)
def test_engine_commands_run_without_inputs(capsys, tmp_path, third_party, model_id):
    """fix (within fp32 of the float64 reference), fp16 (within the fp16 profile in true float16),
    golden, check and diff exit 0 on inputs generated from the signature; the fix report says
    how each input was made and the golden file holds exactly that."""
    model = third_party[model_id]
    fixed, half, golden = tmp_path / "fixed.onnx", tmp_path / "half.onnx", tmp_path / "golden.npz"

    code, err = _cli(capsys, "fix", model, "-o", fixed, "--report", tmp_path / "fix.json")
    assert code == 0, err
    report = json.loads((tmp_path / "fix.json").read_text())
    assert report["written"] and report["reference_kind"] == "fp64"
    _within(report, "fp32")
    expected = EXPECTED_HOW[model_id.split("/")[0]]
    assert set(report["inputs"]) == set(expected)
    for name, phrases in expected.items():
        for phrase in phrases:
            assert phrase in report["inputs"][name], (name, report["inputs"][name])

    code, err = _cli(capsys, "fp16", model, "-o", half, "--report", tmp_path / "fp16.json")
    fp16 = json.loads((tmp_path / "fp16.json").read_text())
    assert fp16["precision"] == "FLOAT16" and "true float16" in fp16["evaluation"]
    assert code == 0, err
    assert fp16["written"]
    written = svsurgery.load(half).graph
    floats = [v.dtype.name for v in [*written.inputs, *written.outputs] if v.dtype.is_floating_point()]
    assert floats and set(floats) == {"FLOAT16"}  # a float16 model, its interface included (no --keep-io-types)
    _within(fp16, "fp16")
    if model_id.startswith("silero"):
        # its STFT basis rounded to float16 put the recurrent state 'stateN' at max rel 0.117 > 0.05
        spectral = next(step for step in fp16["steps"] if step["family"] == "spectral-fp32")
        assert spectral["status"] == "accepted" and spectral["matches"] >= 1

    code, err = _cli(capsys, "golden", model, "-o", golden)
    assert code == 0, err
    with np.load(golden) as data:
        inputs = {key.removeprefix("input/"): data[key] for key in data.files if key.startswith("input/")}
    _check_golden_inputs(model_id, inputs)

    for checked in (model, fixed):  # the fixed model gives the original's outputs on the original's golden file
        code, err = _cli(capsys, "check", checked, golden, "--report", tmp_path / "check.json")
        assert code == 0, err
        assert json.loads((tmp_path / "check.json").read_text())["passed"]

    code, err = _cli(capsys, "diff", model, fixed, "--report", tmp_path / "diff.json")
    assert code == 0, err
    diff = json.loads((tmp_path / "diff.json").read_text())
    assert diff["passed"] and diff["first"] is None and diff["compared"] > 0


def test_whisper_log_mel_is_hugging_faces():
    """The generated Whisper input is what transformers' WhisperFeatureExtractor computes
    (80 and 128 bins), to within float32 rounding of its STFT."""
    from svsurgery.parity.waveforms import speech_like, whisper_log_mel
    from svsurgery.testing.third_party import transformers_importable

    with transformers_importable():
        from transformers import WhisperFeatureExtractor

    waveform = speech_like(4.0, seed=0)
    for bins in (80, 128):
        theirs = WhisperFeatureExtractor(feature_size=bins)(
            waveform, sampling_rate=16000, return_tensors="np"
        ).input_features[0]
        ours = whisper_log_mel(waveform, bins)
        assert ours.shape == theirs.shape == (bins, 3000)
        assert np.abs(ours - theirs).max() < 1e-4
        np.testing.assert_allclose(
            ours[:, 410:], ours.max() - 2.0
        )  # past 4 s: silence, floored 8 (log10) below the peak
