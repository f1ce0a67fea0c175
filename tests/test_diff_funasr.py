"""diff on FunASR's own SenseVoiceSmall code (in-place ops in its SANM/FSMN blocks) and FunASR's export of it."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import onnx_ir as ir
import pytest

import svsurgery
from svsurgery.cli.main import main
from svsurgery.divergence import INHERITS, INTRODUCES, OK, diff, module_scopes
from svsurgery.testing.funasr_sensevoice import FunasrConfig, build_funasr_sensevoice, export_funasr, funasr_inputs

INPUT_NAMES = ("speech", "speech_lengths", "language", "textnorm")
PLANTED = "encoder.encoders.0.feed_forward.w_1"


@pytest.fixture(scope="module")
def sensevoice(tmp_path_factory):
    """(FunASR's export module with seeded random weights, the ONNX file FunASR's export makes of it, feeds)."""
    module = build_funasr_sensevoice()
    path = export_funasr(module, tmp_path_factory.mktemp("funasr") / "model.onnx")
    feeds = {name: tensor.numpy() for name, tensor in zip(INPUT_NAMES, funasr_inputs())}
    return module, path, feeds


def _plant(model: ir.Model, module: str = PLANTED, factor: float = 1.05) -> None:
    matmul = next(n for n in model.graph if n.op_type == "MatMul" and module_scopes(n)[-1:] == [module])
    weight = matmul.inputs[1]
    weight.const_value = ir.tensor(weight.const_value.numpy() * factor, name=weight.name)


def test_faithful_funasr_export_shows_no_divergence(sensevoice):
    """Guards the capture: FunASR's SANM does ``x += inputs`` on its FSMN Conv output in place,
    so a hook that kept a view reported fsmn_block at cosine 0.46 while everything after it
    matched. Every module of FunASR's own code must match its faithful export, the FSMN
    blocks included, and the last module (ctc.ctc_lo, scoped by the exporter as ``ctc_lo``)
    must be compared too."""
    module, path, feeds = sensevoice
    report = diff(module, svsurgery.load(path), feeds)
    assert report.passed and report.first is None and report.first_nonfinite is None, report.first
    modules = {row.module for row in report.rows}
    fsmn = [row for row in report.rows if row.module.endswith("self_attn.fsmn_block")]
    assert len(fsmn) == 4 and all(row.parity.cosine > 0.99999 for row in fsmn)  # 1 + 2 + 1 blocks
    assert {"ctc.ctc_lo", "encoder.tp_norm", "embed"} <= modules and report.compared >= 45
    assert all(row.verdict == OK and row.introduced is not None for row in report.rows)


def test_planted_feed_forward_weight_is_named_first_and_what_follows_only_inherits(sensevoice):
    """A MatMul weight ×1.05 in one feed-forward of FunASR's export: that module is the first
    divergence, it introduces the error (and inherits none), and the modules after it that
    are beyond tolerance only inherit it."""
    module, path, feeds = sensevoice
    model = svsurgery.load(path)
    _plant(model)
    report = diff(module, model, feeds)
    first = report.first
    assert first is not None and first.module == PLANTED and first.verdict == INTRODUCES, first
    assert not first.introduced.passed and first.introduced.max_rel > 0.02
    assert first.inherited.passed and first.inherited.max_rel < 1e-3  # its inputs are fine
    assert report.path[-1] is first and all(row.verdict == OK for row in report.path[:-1])
    after = [row for row in report.rows if row.position > first.position]
    beyond = [row for row in after if not row.parity.passed]
    assert beyond and all(row.verdict == INHERITS and row.introduced.passed for row in beyond), beyond[:3]


def test_diff_command_on_funasr_module_with_weights(tmp_path, capsys, sensevoice):
    """The --torch contract end to end on FunASR's classes, as the README shows it: a factory
    called with no arguments that builds SenseVoiceSmall and returns ``.export(...)``, and
    ``--weights model.pt`` loaded on top (the factory's own random weights would diverge).
    Faithful: exit 0 with introduced and inherited error in the JSON; planted: exit 1,
    the planted module first."""
    import torch

    module, path, _ = sensevoice
    config = FunasrConfig()
    torch.save(module.state_dict(), tmp_path / "model.pt")
    (tmp_path / "sv_torch.py").write_text(
        textwrap.dedent(
            f"""
        from funasr.models.sense_voice.model import SenseVoiceSmall

        ENCODER = dict(output_size={config.output_size}, attention_heads={config.attention_heads},
                       linear_units={config.linear_units}, num_blocks={config.num_blocks},
                       tp_blocks={config.tp_blocks}, kernel_size={config.kernel_size}, sanm_shfit=0,
                       normalize_before=True)

        def build():
            model = SenseVoiceSmall(encoder="SenseVoiceEncoderSmall", encoder_conf=ENCODER,
                                    input_size={config.input_size}, vocab_size={config.vocab_size})
            return model.export(max_seq_len=512)
        """
        )
    )
    spec = f"{tmp_path / 'sv_torch.py'}:build"
    report_path = tmp_path / "diff.json"
    code = main(
        ["diff", str(path), "--torch", spec, "--weights", str(tmp_path / "model.pt"), "--report", str(report_path)]
    )
    assert code == 0, capsys.readouterr().out[-3000:]
    data = json.loads(report_path.read_text())
    assert data["passed"] and data["first"] is None and len(data["rows"]) == data["compared"] >= 45
    row = data["rows"][-1]
    assert row["module"] == "ctc.ctc_lo" and row["verdict"] == "ok"
    assert {"max_rel", "cosine", "passed"} <= set(row["introduced"]) and {"max_rel", "passed"} <= set(row["inherited"])
    capsys.readouterr()
    assert main(["diff", str(path), "--torch", spec]) == 1  # the factory's own weights are other random ones

    planted = svsurgery.load(path)
    _plant(planted)
    planted_path = tmp_path / "planted.onnx"
    svsurgery.save(planted, planted_path)
    capsys.readouterr()
    code = main(
        [
            "diff",
            str(planted_path),
            "--torch",
            spec,
            "--weights",
            str(tmp_path / "model.pt"),
            "--report",
            str(report_path),
        ]
    )
    out = capsys.readouterr().out
    assert code == 1 and f"module {PLANTED}" in " ".join(out.split()), out[-2000:]
    data = json.loads(report_path.read_text())
    assert data["first"]["module"] == PLANTED and data["first"]["verdict"] == "introduces"
    assert data["first"]["introduced"]["passed"] is False and data["first"]["inherited"]["passed"] is True
    assert np.isfinite(data["first"]["introduced"]["max_rel"])
