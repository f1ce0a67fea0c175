"""Packaging: the wheel's layout, the console script, and life without torch."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

from svsurgery.cli.main import main
from svsurgery.parity.metrics import PROFILES

REPO = Path(__file__).resolve().parents[1]


def test_wheel_installs_rules_and_cli_under_svsurgery_only(tmp_path):
    # Built from a copy: setuptools leaves build/ and *.egg-info beside the sources it builds.
    source = tmp_path / "source"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__", "tests", "bench", ".venv*"),
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    wheel = next(tmp_path.glob("svsurgery-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert all(t == "svsurgery" or t.endswith(".dist-info") for t in top_level), top_level
    for module in (
        "svsurgery/rules/__init__.py",
        "svsurgery/cli/main.py",
        "svsurgery/cli/inspect.py",
        "svsurgery/py.typed",
    ):
        assert module in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "svsurgery = svsurgery.cli.main:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_no_top_level_rules_or_cli_package_is_importable(tmp_path):
    probe = (
        "import importlib.util as u; "
        "print(u.find_spec('rules'), u.find_spec('cli'), u.find_spec('svsurgery.rules').origin)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    none_rules, none_cli, rules_origin = done.stdout.split()
    assert none_rules == "None" and none_cli == "None"
    assert Path(rules_origin).parent.name == "rules"


_WITHOUT_TORCH = textwrap.dedent(
    """
    import sys
    sys.modules["torch"] = None  # any import of torch now raises ImportError
    from svsurgery.cli.main import main
    import svsurgery
    assert "torch" not in [m for m, v in sys.modules.items() if v is not None]
    sys.exit(main(sys.argv[1:]))
    """
)


def test_inspect_and_fix_work_without_torch_and_torch_features_say_so(tmp_path, legacy_path):
    ok = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TORCH, "inspect", str(legacy_path), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    fixed = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TORCH, "fix", str(legacy_path), "-o", str(tmp_path / "fixed.onnx")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert fixed.returncode == 0, fixed.stderr
    assert (tmp_path / "fixed.onnx").is_file() and "layer-norm" in fixed.stdout
    refused = subprocess.run(
        [
            sys.executable,
            "-c",
            _WITHOUT_TORCH,
            "golden",
            str(legacy_path),
            "-o",
            str(tmp_path / "g.npz"),
            "--torch",
            "m.py:f",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2 and "needs torch" in refused.stderr
    refused = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TORCH, "example", "-o", str(tmp_path / "ex")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs torch" in lines[0] and "pip install" in lines[0]


def test_example_command_writes_the_shipped_model_folders(tmp_path, capsys):
    assert main(["example", "-o", str(tmp_path)]) == 0
    for kind, files in {
        "funasr": ("model.onnx", "config.yaml", "am.mvn"),
        "dynamo": ("model.onnx", "model.onnx.data", "config.yaml", "am.mvn"),
        "sherpa": ("model.onnx",),
    }.items():
        for name in files:
            assert (tmp_path / kind / name).is_file(), (kind, name)
    assert main(["inspect", str(tmp_path / "sherpa" / "model.onnx")]) == 0
    out = capsys.readouterr().out
    assert "x_length" in out and "lfr_window_size" in out


def _fuse_table(out: str) -> list[dict[str, str]]:
    """The rows of fuse-preproc's parity table (vs, output, max abs, max rel, cosine, argmax, ok); a
    row under another keeps its 'vs'. Names the console was too narrow for end in an ellipsis."""
    rows, vs = [], ""
    for line in out.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("│").split("│")]
        if len(cells) != 7 or not re.fullmatch(r"\d\.\d+e[+-]\d+", cells[2]):
            continue  # not a table row (or the header)
        vs = cells[0] or vs
        rows.append(dict(zip(("vs", "output", "max abs", "max rel", "cosine", "argmax", "ok"), [vs, *cells[1:]])))
    return rows


def test_demo_runs_end_to_end_within_the_documented_bounds(capsys):
    """The demo's printed parity figures, held to the bounds the README documents: the fixed encoder
    within its tolerance profile against the torch module; the fused model bit for bit equal to the
    two-step pipeline (fp32-strict) and within ``frontend`` (cosine >= 0.99999, 100 % argmax) of
    kaldi-native-fbank + LFR + CMVN + the encoder."""
    assert main(["demo"]) == 0
    check_demo_output(capsys.readouterr().out)


def check_demo_output(out: str) -> None:
    """Assert the figures ``svsurgery demo`` printed are within the documented bounds."""
    flat = " ".join(out.split())  # the console wraps long lines at spaces

    profile = PROFILES[re.search(r"tolerance: ([\w-]+);", flat).group(1)]
    final = re.search(
        r"final parity: max abs (\S+), max rel (\S+), cosine (\S+), argmax (\S+)% - within tolerance", flat
    )
    assert final, flat
    max_abs, max_rel, cosine, argmax = (float(figure) for figure in final.groups())
    assert max_rel <= profile.max_rel and cosine >= profile.min_cosine and argmax / 100 >= profile.min_argmax_agreement
    assert max_abs <= PROFILES["fp32-strict"].max_abs  # a float32 rewrite vs the module it was exported from

    rows = _fuse_table(out)
    assert [(r["vs"], r["output"][:10]) for r in rows] == [
        ("two-step", "ctc_logits"),
        ("two-step", "encoder_ou"),
        ("reference", "ctc_logits"),
        ("reference", "encoder_ou"),
    ]
    for row in rows:
        strict = row["vs"] == "two-step"
        bounds = PROFILES["fp32-strict" if strict else "frontend"]
        assert row["ok"] == "yes", row
        assert float(row["cosine"]) >= bounds.min_cosine, row
        assert row["argmax"] == "-" or float(row["argmax"].rstrip("%")) / 100 >= bounds.min_argmax_agreement, row
        if strict:  # the same graphs, run together or one after the other: bit for bit
            assert float(row["max abs"]) == float(row["max rel"]) == 0.0, row

    ran = re.search(r"ran model\.fused\.onnx on .*: ctc_logits \[1, (\d+), \d+\], encoder_out_lens \[(\d+)\]", flat)
    assert ran and ran.group(1) == ran.group(2), flat
