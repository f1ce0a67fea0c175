"""`svsurgery inspect --fp16`: a model's float16 headroom and the values that set it."""

from __future__ import annotations

import json

import numpy as np
import pytest

import svsurgery
from svsurgery.cli.main import main
from svsurgery.fp16_outlook import fp16_outlook
from svsurgery.parity.headroom import DEFAULT_MIN_HEADROOM
from svsurgery.parity.inputs import ParityInputs, generate_inputs

FLOAT16_MAX = 65504.0
SCALING_TOLERANCE = 0.02  # float16 rounding of the measured magnitude, relative


@pytest.fixture(scope="module")
def legacy_outlook(legacy_path):
    model = svsurgery.load(legacy_path)
    inputs = generate_inputs(model, legacy_path)
    return model, inputs, fp16_outlook(model, inputs, label=legacy_path.name)


def test_a_decomposed_layer_norm_sets_the_headroom_of_a_plain_conversion(legacy_outlook):
    """The legacy export's LayerNorm is Pow/ReduceMean/Sqrt: its squared deviations are the
    tightest float16 values, far below the default bound, and the figures agree with each other."""
    _, _, outlook = legacy_outlook
    assert outlook.measured_as == "converted to float16 without precision rules"
    assert not outlook.passed and outlook.headroom < DEFAULT_MIN_HEADROOM
    tightest = outlook.lowest[0]
    assert tightest["op_type"] == "Pow" and tightest["degree"] == 2.0
    assert tightest["headroom"] == outlook.headroom
    # the headroom is the input scale at which the value reaches float16's largest finite number
    np.testing.assert_allclose(tightest["headroom"], (FLOAT16_MAX / tightest["magnitude"]) ** 0.5, rtol=1e-6)
    assert [s["headroom"] for s in outlook.lowest] == sorted(s["headroom"] for s in outlook.lowest)


def test_inputs_twice_as_large_halve_a_square_values_headroom(legacy_outlook):
    """The first block's squared deviations grow as the input scale squared: features x2 halve
    their headroom (the extrapolation the report states, checked by measuring)."""
    model, inputs, outlook = legacy_outlook
    doubled = dict(inputs.feeds, speech=inputs.feeds["speech"] * 2)
    larger = fp16_outlook(model, ParityInputs(doubled, dict(inputs.how)), label="x2")
    first = outlook.lowest[0]
    again = next(s for s in larger.lowest if s["value"] == first["value"])
    np.testing.assert_allclose(again["headroom"], first["headroom"] / 2, rtol=SCALING_TOLERANCE)


def test_inspect_fp16_cli_reports_before_and_after_fp16(tmp_path, legacy_path, capsys):
    """`inspect --fp16 --json` on the export and on what `svsurgery fp16` made of it: the plain
    conversion is below the bound; the fp16 result (precision rules applied) is a float16 model
    measured as it is, with at least the default headroom, since fp16 refuses less."""
    assert main(["inspect", str(legacy_path), "--fp16", "--json"]) == 0
    before = json.loads(capsys.readouterr().out)["fp16"]
    assert before["headroom"] < DEFAULT_MIN_HEADROOM and before["passed"] is False

    half = tmp_path / "half.onnx"
    assert main(["fp16", str(legacy_path), "-o", str(half), "--json"]) == 0
    capsys.readouterr()
    assert main(["inspect", str(half), "--fp16", "--json"]) == 0
    after = json.loads(capsys.readouterr().out)["fp16"]
    assert after["measured_as"] == "float16 as it is"
    assert after["headroom"] >= DEFAULT_MIN_HEADROOM and after["passed"] is True
    assert after["headroom"] > before["headroom"]


def test_inspect_without_fp16_measures_nothing(legacy_path, capsys):
    assert main(["inspect", str(legacy_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fp16"] is None


def test_inspect_fp16_with_inputs_that_do_not_fit_is_one_line(tmp_path, legacy_path, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(bad, speech=np.zeros((1, 5, 3), np.float32))
    assert main(["inspect", str(legacy_path), "--fp16", "--inputs", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "speech" in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_inspect_fp16_says_what_it_could_not_measure_in_control_flow_bodies(capsys):
    """silero's stock model computes inside If branches, which the true-float16 evaluation does not
    measure: the report must say so, and not call the headroom enough."""
    from svsurgery.testing.third_party import silero_model

    assert main(["inspect", str(silero_model()), "--fp16", "--json"]) == 0
    outlook = json.loads(capsys.readouterr().out)["fp16"]
    assert outlook["unmeasured_in_bodies"] > 100 and outlook["passed"] is None  # not known
    assert main(["inspect", str(silero_model()), "--fp16"]) == 0
    text = capsys.readouterr().out
    assert "not measured" in text and "not known" in text


def test_inspect_inputs_without_fp16_is_a_usage_error(tmp_path, legacy_path, capsys):
    inputs = tmp_path / "in.npz"
    np.savez(inputs, speech=np.zeros((1, 5, 560), np.float32))
    assert main(["inspect", str(legacy_path), "--inputs", str(inputs)]) == 2
    assert "--fp16" in capsys.readouterr().err
