"""The engine's promise: a pass that hurts parity or validity is rolled back, and says why.

Also user rules (callables, RewriteRules, modules given by path), references (torch, golden,
float64, another model), and the fix / rules / golden / check commands with their exit codes.
"""

from __future__ import annotations

import json
import textwrap

import numpy as np
import onnx_ir as ir
import pytest
from onnxscript.rewriter import pattern

import svsurgery
from svsurgery import golden, patch
from svsurgery.cli.main import main
from svsurgery.parity.inputs import generate_inputs
from svsurgery.parity.references import GoldenReference
from svsurgery.rules import CATALOG
from svsurgery.rules.base import from_patch, load_rules_module
from svsurgery.runtime import run


@pytest.fixture(scope="module")
def fixed_legacy(tmp_path_factory, legacy_path, torch_encoder, feeds):
    """The FunASR-style export after the catalog (has LayerNormalization)."""
    fixed, _ = svsurgery.fix(svsurgery.load(legacy_path), torch_module=torch_encoder, example_inputs=feeds)
    path = tmp_path_factory.mktemp("fixed") / "model.onnx"
    svsurgery.save(fixed, path)
    return path


class WrongEpsilon(pattern.RewriteRuleClassBase):
    """A harmful rule: LayerNormalization's epsilon set to 0.5."""

    def pattern(self, op, x, scale, bias):
        return op.LayerNormalization(x, scale, bias, _allow_other_attributes=True, _outputs=["y"])

    def check(self, context, y, **_):
        if y.producer().attributes.get_float("epsilon", 1e-5) == 0.5:
            return pattern.MatchResult().fail("already harmed")  # without this it would rewrite its own output forever
        return pattern.MatchResult()

    def rewrite(self, op, x, scale, bias, **_):
        return op.LayerNormalization(x, scale, bias, axis=-1, epsilon=0.5)


def test_harmful_rewrite_rule_is_rolled_back_with_the_reason(fixed_legacy, torch_encoder, feeds):
    model = svsurgery.load(fixed_legacy)
    result, report = svsurgery.fix(model, [WrongEpsilon.rule()], torch_module=torch_encoder, example_inputs=feeds)
    (step,) = report.steps
    assert step.matches > 0 and step.status == "rolled back"
    assert "parity got worse" in step.reason and "ctc_logits" in step.reason
    assert all(n.attributes["epsilon"].value != 0.5 for n in result.graph if n.op_type == "LayerNormalization")
    assert report.passed


def test_patch_that_drops_a_needed_cast_is_rolled_back_as_invalid(legacy_path, torch_encoder, feeds):
    def drop_mask_cast(model: ir.Model) -> None:
        """Bypass the Cast(bool -> float) that turns the padding mask into numbers."""
        patch.bypass(model, patch.find_node(model, "Cast", name="/encoder/Cast_2"))

    result, report = svsurgery.fix(
        svsurgery.load(legacy_path), [drop_mask_cast], torch_module=torch_encoder, example_inputs=feeds
    )
    (step,) = report.steps
    assert step.family == "user.0" and step.matches is None
    assert step.status == "rolled back" and step.reason.startswith("breaks validity")
    assert patch.find_node(result, "Cast", name="/encoder/Cast_2") is not None


def test_rule_that_raises_is_rolled_back(legacy_path):
    def broken(model):
        patch.remove_node(model, next(iter(model.graph)))  # its output is read: refused midway

    model = svsurgery.load(legacy_path)
    result, report = svsurgery.fix(model, [from_patch("broken", broken)])
    (step,) = report.steps
    assert step.status == "rolled back" and "cannot be removed" in step.reason
    assert len(list(result.graph)) == len(list(model.graph))


def test_a_harmless_user_patch_is_accepted_and_recorded(legacy_path):
    def rename_logits_producer(model):
        """Give the CTC projection a readable name."""
        node = patch.producer(model, "ctc_logits")
        node.name = "ctc_projection"

    result, report = svsurgery.fix(svsurgery.load(legacy_path), [from_patch("readable-names", rename_logits_producer)])
    assert report.steps[0].status == "accepted"
    assert json.loads(result.metadata_props["svsurgery.rules_applied"])[0]["id"] == "readable-names"


def test_golden_reference_brings_its_own_inputs(tmp_path, legacy_path, torch_encoder, feeds):
    path = golden.save(
        tmp_path / "golden.npz", feeds, module=torch_encoder, output_names=["ctc_logits", "encoder_out_lens"]
    )
    recorded = golden.load(path)
    assert recorded.meta["source"].startswith("torch module") and recorded.meta["versions"]["torch"]
    _, report = svsurgery.fix(svsurgery.load(legacy_path), reference=GoldenReference(recorded), tolerance="fp32-strict")
    assert report.reference_kind == "golden" and set(report.inputs.values()) == {"from the golden file"}
    assert report.passed


# ----------------------------------------------------------------------------- command line


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_fix_command_writes_a_valid_model_with_provenance(tmp_path, capsys, legacy_path):
    out, report_path = tmp_path / "fixed.onnx", tmp_path / "report.json"
    code, stdout, _ = _cli(capsys, "fix", legacy_path, "-o", out, "--report", report_path)
    assert code == 0
    for rule in (f.id for f in CATALOG):
        assert rule in stdout
    report = json.loads(report_path.read_text())
    assert report["passed"] and report["written"] and report["reference_kind"] == "fp64"
    assert [s["family"] for s in report["steps"]] == [f.id for f in CATALOG]
    assert "speech" in report["inputs"] and "fbank" in report["inputs"]["speech"]
    written = svsurgery.load(out)
    svsurgery.validate(written)
    assert json.loads(written.metadata_props["svsurgery.parity"])["passed"] is True
    assert "onnxruntime" in json.loads(written.metadata_props["svsurgery.versions"])


def test_fix_refuses_to_overwrite_its_input(tmp_path, capsys, legacy_path):
    code, _, err = _cli(capsys, "fix", legacy_path, "-o", legacy_path)
    assert code == 2 and "refusing to overwrite the input model" in err


def test_fix_beyond_tolerance_writes_nothing(tmp_path, capsys, legacy_path):
    """Against a different model's outputs, parity is beyond tolerance: exit 1, no file."""
    other = svsurgery.load(legacy_path)
    weight = next(v for v in other.graph.initializers.values() if v.name.startswith("onnx::MatMul"))
    weight.const_value = ir.tensor(weight.const_value.numpy() * 1.5)
    other_path = tmp_path / "other.onnx"
    svsurgery.save(other, other_path)
    out = tmp_path / "out.onnx"
    code, stdout, _ = _cli(capsys, "fix", legacy_path, "-o", out, "--reference-model", other_path)
    assert code == 1 and not out.exists() and "nothing written" in stdout


def test_rules_module_from_a_file(tmp_path, capsys, legacy_path):
    module = tmp_path / "my_rules.py"
    module.write_text(
        textwrap.dedent(
            '''
        from svsurgery import patch

        def scale_logits(model):
            """A harmful patch: doubles the logits."""
            patch.insert_after(model, "ctc_logits", "Mul", [2.0])

        def unused_helper():
            pass

        SVSURGERY_RULES = [scale_logits]
        '''
        )
    )
    report_path = tmp_path / "r.json"
    code, stdout, _ = _cli(
        capsys, "fix", legacy_path, "-o", tmp_path / "o.onnx", "--rules-module", module, "--report", report_path
    )
    assert code == 0
    (step,) = json.loads(report_path.read_text())["steps"]
    assert step["family"] == "my_rules.scale_logits" and step["status"] == "rolled back"
    code, stdout, _ = _cli(capsys, "rules", "--rules-module", module, "--json")
    assert code == 0 and "my_rules.scale_logits" in stdout


def test_rules_module_errors_are_one_line(tmp_path, capsys, legacy_path):
    empty = tmp_path / "empty.py"
    empty.write_text("X = 1\n")
    code, _, err = _cli(capsys, "fix", legacy_path, "--rules-module", empty)
    assert code == 2 and "defines no rules" in err and len(err.strip().splitlines()) == 1
    code, _, err = _cli(capsys, "fix", legacy_path, "--rules", "no-such-rule")
    assert code == 2 and "unknown rule 'no-such-rule'" in err


def test_rules_command_lists_the_catalog(capsys):
    code, stdout, _ = _cli(capsys, "rules", "--json")
    catalog = json.loads(stdout)
    assert code == 0 and [r["id"] for r in catalog] == [
        "layer-norm",
        "rms-norm",
        "casts",
        "mask-fill",
        "softmax-fp32",
        "positional-fp32",
        "spectral-fp32",
        "instance-norm",
        "gelu",
        "lossy-casts",
    ]
    assert all(r["title"] and r["fixes"] and r["safe_when"] for r in catalog)


def test_golden_and_check_pass_a_faithful_model_and_fail_a_planted_divergence(
    tmp_path, capsys, legacy_path, fixed_legacy
):
    golden_path = tmp_path / "golden.npz"
    code, _, _ = _cli(capsys, "golden", legacy_path, "-o", golden_path, "--fp64")
    assert code == 0
    code, stdout, _ = _cli(capsys, "check", fixed_legacy, golden_path)
    assert code == 0 and "within tolerance" in stdout

    planted = svsurgery.load(fixed_legacy)
    weight = next(v for v in planted.graph.initializers.values() if v.name.startswith("onnx::MatMul"))
    array = weight.const_value.numpy().copy()
    array[0, :] += 0.05
    weight.const_value = ir.tensor(array)
    planted_path = tmp_path / "planted.onnx"
    svsurgery.save(planted, planted_path)
    report_path = tmp_path / "check.json"
    code, stdout, _ = _cli(capsys, "check", planted_path, golden_path, "--report", report_path)
    assert code == 1 and "beyond tolerance" in stdout
    assert json.loads(report_path.read_text())["passed"] is False


def test_golden_from_a_torch_module_spec(tmp_path, capsys, legacy_path):
    spec = tmp_path / "factory.py"
    spec.write_text(
        textwrap.dedent(
            """
        from svsurgery.testing.encoder import EncoderConfig, build_encoder

        def make():
            return build_encoder(EncoderConfig.tiny())
        """
        )
    )
    golden_path = tmp_path / "golden.npz"
    code, stdout, _ = _cli(capsys, "golden", legacy_path, "-o", golden_path, "--torch", f"{spec}:make")
    assert code == 0 and "torch module SenseVoiceEncoder" in stdout
    code, _, _ = _cli(capsys, "check", legacy_path, golden_path, "--tolerance", "fp32-strict")
    assert code == 0
    code, _, err = _cli(capsys, "golden", legacy_path, "-o", golden_path, "--torch", f"{spec}:nothing")
    assert code == 2 and "has no attribute 'nothing'" in err


def test_check_rejects_files_that_are_not_golden(tmp_path, capsys, legacy_path):
    plain = tmp_path / "plain.npz"
    np.savez(plain, speech=np.zeros(3))
    code, _, err = _cli(capsys, "check", legacy_path, plain)
    assert code == 2 and "not a golden file" in err
    code, _, err = _cli(capsys, "check", legacy_path, tmp_path / "missing.npz")
    assert code == 2 and "no such golden file" in err


def test_inputs_file_with_wrong_names_is_a_clear_error(tmp_path, capsys, legacy_path):
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, speech=np.zeros((1, 5, 560), np.float32))
    code, _, err = _cli(capsys, "fix", legacy_path, "--inputs", inputs)
    assert code == 2 and "no array for model input 'speech_lengths'" in err


def test_generated_inputs_are_realistic(legacy_path):
    model = svsurgery.load(legacy_path)
    made = generate_inputs(model, legacy_path)
    speech, lengths = made.feeds["speech"], made.feeds["speech_lengths"]
    assert speech.dtype == np.float32 and lengths.dtype == np.int32
    assert lengths.tolist() == [speech.shape[1], lengths[1]] and lengths[1] < lengths[0]
    assert np.all(speech[1, lengths[1] :] == 0)
    # standardised on speech frames, as a corpus CMVN is: speech near 0, digital silence far below
    audible = speech[0][speech[0].min(axis=1) > -5]  # frames without a silent stretch in them
    assert len(audible) > 10 and np.abs(audible.mean(axis=0)).mean() < 0.5 and speech[0].min() < -10
    table_rows = model.graph.initializers["embed.weight"].shape[0]
    for name in ("language", "textnorm"):
        assert made.feeds[name].min() >= 0 and made.feeds[name].max() < table_rows
        assert f"[0, {table_rows})" in made.how[name]
    again = generate_inputs(model, legacy_path)
    for name in made.feeds:
        np.testing.assert_array_equal(made.feeds[name], again.feeds[name])
    run(model, made.feeds)


def test_rules_module_without_a_list_takes_what_it_defines(tmp_path, legacy_path):
    module = tmp_path / "defined_rules.py"
    module.write_text(
        textwrap.dedent(
            '''
        from onnxscript.rewriter import pattern
        from svsurgery.rules.layer_norm import LayerNormFusion  # imported: not one of this module's rules

        class ReluOfRelu(pattern.RewriteRuleClassBase):
            """Relu(Relu(x)) is Relu(x)."""

            def pattern(self, op, x):
                return op.Relu(op.Relu(x))

            def rewrite(self, op, x):
                return op.Relu(x)
        '''
        )
    )
    (family,) = load_rules_module(str(module))
    assert family.id == "defined_rules.ReluOfRelu" and family.title == "Relu(Relu(x)) is Relu(x)."
    _, report = svsurgery.fix(svsurgery.load(legacy_path), [family])
    assert report.steps[0].status == "no match"
