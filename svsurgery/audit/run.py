"""The audit, end to end: decide what is compared, shard the corpus, compute the shards not yet
done (local pool or Ray), gather the rows, summarise, harvest the worst, localise the worst,
the runtime matrix, the baseline verdict, and write everything into the output folder:

    OUT/rows.parquet, OUT/rows.jsonl    one row per utterance (svsurgery.audit.metrics.COLUMNS)
    OUT/summary.json                    corpus figures, buckets, worst, diff, matrix, baseline, versions
    OUT/report.html                     the same for a person, with plots
    OUT/worst/NN-ID.npz                 the worst utterances as golden files
    OUT/worst/diff.json                 the diff reports of the worst utterance
    OUT/shards/shard-NNNNN.jsonl        finished shards (what a rerun reuses)
"""

from __future__ import annotations

import dataclasses
import json
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from rich import box
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from svsurgery.audit import aggregate, store
from svsurgery.audit.baseline import DEFAULT_THRESHOLDS, compare_with_baseline, load_baseline
from svsurgery.audit.corpus import list_corpus, read_audio
from svsurgery.audit.engines import import_ray, run_shards
from svsurgery.audit.harvest import harvest, worst_span
from svsurgery.audit.html import render_html
from svsurgery.audit.localize import localize
from svsurgery.audit.matrix import runtime_matrix
from svsurgery.audit.prepare import prepare
from svsurgery.audit.reference import ReferencePipeline
from svsurgery.errors import BadInputError
from svsurgery.files import FilePlan, write_text_atomically
from svsurgery.report import Report, dumps

__all__ = ["AuditReport", "audit", "versions"]

SUMMARY_KIND = "svsurgery-audit-summary"


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for package in (
        "svsurgery",
        "onnxruntime",
        "onnx",
        "numpy",
        "torch",
        "kaldi-native-fbank",
        "silero-vad",
        "ray",
        "pyarrow",
    ):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


@dataclasses.dataclass
class AuditReport(Report):
    summary: dict
    output_dir: str

    @property
    def passed(self) -> bool:
        baseline = self.summary.get("baseline")
        return baseline is None or not baseline["drift"]

    def to_dict(self) -> dict:
        return self.summary

    def render(self, console) -> None:
        s = self.summary
        audit, totals = s["audit"], s["totals"]
        console.print(
            f"[bold]audit[/bold] {escape(audit['model'])} ({audit['model_kind']}) against {escape(audit['reference'])}"
        )
        console.print(
            f"  corpus {escape(audit['corpus'])}: {totals['utterances']} utterances, {totals['bad']} bad, "
            f"{totals['audio_s']:.1f} s of audio; {audit['shards']} shards ({audit['shards_reused']} reused), "
            f"engine {audit['engine']} x {audit['workers']}"
        )
        table = Table(
            box=box.SIMPLE_HEAD,
            pad_edge=False,
            title=(
                "per group (segs =: share with identical segments; tokens ≠: share whose tokens differ;"
                " TER: token error rate)"
            ),
        )
        table.add_column("group", no_wrap=True)
        for column in ("n", "segs =", "tokens ≠", "TER", "TER max", "cos worst", "max abs"):
            table.add_column(column, justify="right", no_wrap=True)
        table.add_row("all", *_cells(totals))
        for group, label in (("duration", "dur"), ("snr", "SNR"), ("language", "lang")):
            for bucket in s["buckets"][group]:
                table.add_row(f"{label} {escape(str(bucket['bucket']))}", *_cells(bucket))
        console.print(table)
        timing = s["timing"]
        console.print(
            f"  time per audio-second: model {_fmt(timing['model_ms_per_audio_s'])} ms, reference "
            f"{_fmt(timing['reference_ms_per_audio_s'])} ms; {_fmt(timing.get('utterances_per_s'))} utterances/s"
        )
        for worst in s.get("worst", []):
            console.print(
                f"  worst {worst['rank']}: {escape(worst['id'])} TER {_fmt(worst['token_error_rate'])}, cosine "
                f"{_cosine(worst['cosine_min'])}, segments identical {worst['segments_identical']}"
                f" -> {escape(worst['path'])}"
            )
        culprit = (s.get("diff") or {}).get("culprit")
        if culprit:
            console.print(
                f"  [red]first divergence[/red] ({culprit['step']}):"
                f" {escape(str(culprit.get('module') or culprit['value']))} "
                f"(node {escape(culprit['node'])}, {culprit['op_type']}): {escape('; '.join(culprit['failures']))}"
            )
        for entry in s["bad_entries"][:20]:
            console.print(f"  [yellow]bad[/yellow] {escape(entry['id'])}: {escape(entry['reason'])}")
        if len(s["bad_entries"]) > 20:
            console.print(f"  ... and {len(s['bad_entries']) - 20} more bad entries (summary.json lists them all)")
        matrix = s.get("runtime_matrix")
        if matrix:
            table = Table(box=box.SIMPLE_HEAD, pad_edge=False, title=f"runtime matrix vs {matrix['reference_setting']}")
            table.add_column("setting", overflow="fold", ratio=1)
            for column in ("bit-equal", "max abs", "cos worst", "tokens ≠", "ms/audio-s"):
                table.add_column(column, justify="right", no_wrap=True)
            for row in matrix["settings"]:
                if "error" in row:
                    table.add_row(escape(row["label"]), escape(row["error"][:60]), "", "", "", "")
                else:
                    table.add_row(
                        escape(row["label"]),
                        str(row["bit_identical"]),
                        _fmt(row["max_abs"]),
                        _cosine(row["cosine_min"]),
                        str(row["tokens_differ"]),
                        _fmt(row["ms_per_audio_s"]),
                    )
            console.print(table)
        baseline = s.get("baseline")
        if baseline is not None:
            for check in baseline["checks"]:
                mark = "[red]DRIFT[/red]" if check["drift"] else "ok"
                console.print(
                    f"  baseline {check['figure']}: {_fmt(check['baseline'])} -> {_fmt(check['current'])} "
                    f"(change {_fmt(check['change'])}, threshold {check['threshold']:g}) {mark}"
                )
            for note in baseline["notes"]:
                console.print(f"  [yellow]note[/yellow]: {escape(note)}")
            console.print(
                "[red]drift beyond the thresholds[/red]"
                if baseline["drift"]
                else "[green]no drift against the baseline[/green]"
            )
        for note in s.get("notes", []):
            console.print(f"  [yellow]note[/yellow]: {escape(note)}")
        console.print(
            f"[green]wrote[/green] {escape(self.output_dir)}/ (summary.json, rows.parquet, rows.jsonl, report.html)"
        )


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if value == 0 or 1e-3 <= abs(value) < 1e4 else f"{value:.2e}"
    return str(value)


def _cosine(value) -> str:
    return "-" if value is None else f"{value:.6f}"


def _cells(group: dict) -> list[str]:
    return [
        str(group["ok"]),
        _fmt(group["segments_identical_share"]),
        _fmt(group["tokens_differ_share"]),
        _fmt(group["token_error_rate_corpus"]),
        _fmt(group["token_error_rate_max"]),
        _cosine(group["cosine_min"]),
        _fmt(group["max_abs_max"]),
    ]


def audit(
    model: str,
    *,
    audio: str | None = None,
    reference_model: str | None = None,
    torch_spec: str | None = None,
    weights: str | None = None,
    golden_dir: str | None = None,
    vad=None,
    segmentation=None,
    config: str | None = None,
    cmvn: str | None = None,
    output_dir: str | Path,
    engine: str = "local",
    workers: int | None = None,
    ray_address: str | None = None,
    shard_size: int = 16,
    baseline: str | None = None,
    thresholds: dict[str, float] | None = None,
    matrix: bool = False,
    matrix_utterances: int = 8,
    worst: int = 5,
    localize_worst: bool = True,
    progress_console=None,
    plan=None,
) -> AuditReport:
    """Audit ``model`` against its reference over a corpus; see the module docstring."""
    plan = plan or FilePlan("audit")
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise BadInputError(f"-o {output_dir}: exists and is not a folder")
    if not out.parent.absolute().is_dir():
        raise BadInputError(f"-o {output_dir}: the folder {out.parent.absolute()} does not exist")
    if golden_dir is not None and audio is not None:
        raise BadInputError("--golden-dir brings its own inputs (each golden file's); leave out --audio")
    if shard_size < 1:
        raise BadInputError("--shard-size must be >= 1")
    if engine not in ("local", "ray"):
        raise BadInputError(f"--engine {engine}: expected local or ray")
    if engine == "ray":
        import_ray(ray_address)
    baseline_data = load_baseline(baseline) if baseline else None
    spec, notes, digests = prepare(
        model,
        reference_model=reference_model,
        torch_spec=torch_spec,
        weights=weights,
        golden_dir=golden_dir,
        vad=vad,
        segmentation=segmentation,
        config=config,
        cmvn=cmvn,
    )
    corpus = list_corpus(audio, golden_dir)
    out.mkdir(exist_ok=True)
    targets = {
        name: plan.write(out / name, f"audit {name}")
        for name in ("summary.json", "rows.jsonl", "rows.parquet", "report.html")
    }

    fingerprint = spec.fingerprint(digests)
    shards = store.shards_of(corpus.entries, shard_size, fingerprint)
    shard_store = store.ShardStore(out / "shards")
    results: dict[int, list[dict]] = {}
    todo = []
    for shard in shards:
        rows = shard_store.load(shard)
        if rows is None:
            todo.append(shard)
        else:
            results[shard.index] = rows
    total = len(corpus.entries)

    first: dict[str, float] = {}

    def finished(shard, text: str, count: int) -> None:
        if not first:  # when the engine was up and running: its start-up ends with the first shard back
            first.update(seconds=time.perf_counter() - started, utterances=count)
        shard_store.save_text(shard, text, count)
        results[shard.index] = [json.loads(line) for line in text.splitlines()] if count else []
        if bar is not None and task is not None:  # set together
            bar.update(task, advance=count)

    bar = task = None
    started = time.perf_counter()
    ran = {"engine": engine, "workers": 0}
    if todo:
        if progress_console is not None:
            bar = Progress(
                TextColumn("audit"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("utterances"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=progress_console,
            )
            task = bar.add_task("audit", total=total, completed=total - sum(len(s.entries) for s in todo))
            bar.start()
        try:
            ran = run_shards(spec, todo, finished, engine=engine, workers=workers, ray_address=ray_address, notes=notes)
        finally:
            if bar is not None:
                bar.stop()
    engine_seconds = time.perf_counter() - started
    rows = [row for shard in shards for row in results[shard.index]]
    computed = sum(len(s.entries) for s in todo)

    store.write_jsonl(targets["rows.jsonl"], rows)
    plan.written(targets["rows.jsonl"])
    try:
        store.write_parquet(targets["rows.parquet"], rows)
        plan.written(targets["rows.parquet"])
    except ImportError:
        notes.append("pyarrow is not installed: rows.parquet was not written (pip install pyarrow)")

    summary: dict[str, Any] = {"kind": SUMMARY_KIND, "format": 1}
    summary["audit"] = {
        "model": spec.model,
        "model_kind": spec.model_kind,
        "model_sha256": digests["model"],
        "reference": spec.reference.describe(),
        "reference_kind": spec.reference.kind,
        "reference_sha256": digests.get("reference"),
        "digests": digests,
        "frontend": _describe_frontend(spec),
        "vad": _describe_vad(spec),
        "segmentation": dataclasses.asdict(spec.segmentation),
        "outputs": list(spec.outputs),
        "setting": spec.setting.label,
        "corpus": corpus.source,
        "corpus_kind": corpus.kind,
        "engine": ran["engine"],
        "workers": ran["workers"],
        "shard_size": shard_size,
        "shards": len(shards),
        "shards_reused": len(shards) - len(todo),
        "shards_computed": len(todo),
        "fingerprint": fingerprint,
        "rows_sha256": store.rows_digest(rows),
    }
    summary["versions"] = versions()
    summary.update(aggregate.summarize(rows))
    steady = engine_seconds - first.get("seconds", engine_seconds)
    summary["timing"].update(
        {
            "engine_s": engine_seconds,
            "utterances_computed": computed,
            "utterances_per_s": computed / engine_seconds if computed and engine_seconds > 0 else None,
            # after the first shard came back (start-up of processes / actors excluded)
            "first_shard_s": first.get("seconds"),
            "steady_utterances_per_s": (computed - first["utterances"]) / steady if first and steady > 0 else None,
        }
    )

    worst_rows = aggregate.worst_rows(rows, worst)
    entries = {e.index: e for e in corpus.entries}
    if worst_rows:
        summary["worst"] = harvest(spec, worst_rows, entries, out / "worst", plan)
        if localize_worst and aggregate.diverges(worst_rows[0]):
            summary["diff"] = _localize(spec, worst_rows[0], entries[worst_rows[0]["index"]], out, plan)
        elif localize_worst:
            notes.append(
                "no utterance diverges beyond tolerance (tokens, segments, cosine >= 0.99999): no diff of the worst"
            )
    else:
        summary["worst"] = []
    if matrix:
        summary["runtime_matrix"] = _matrix(spec, rows, entries, matrix_utterances, notes)
    if baseline_data is not None:
        summary["baseline"] = compare_with_baseline(summary, baseline_data, thresholds or DEFAULT_THRESHOLDS)
        summary["baseline"]["path"] = str(baseline)
    summary["notes"] = notes

    write_text_atomically(targets["summary.json"], dumps(summary, indent=2))
    plan.written(targets["summary.json"])

    write_text_atomically(targets["report.html"], render_html(json.loads(dumps(summary)), rows))
    plan.written(targets["report.html"])
    return AuditReport(summary, str(out))


def _describe_frontend(spec) -> str:
    if spec.frontend is None:
        return "none (golden outputs)"
    config = spec.frontend
    return "; ".join(f"{k}: {v}" for k, v in config.sources.items())


def _describe_vad(spec) -> str | None:
    if spec.vad is None:
        return None
    values = {k: v for k, v in dataclasses.asdict(spec.vad).items()}
    return f"{spec.vad.name} {json.loads(dumps(values))}"


def _localize(spec, row: dict, entry, out: Path, plan) -> dict:
    if entry.golden or spec.reference.kind == "golden":
        return {
            "utterance": entry.id,
            "culprit": None,
            "notes": ["no value-by-value diff against stored golden outputs"],
        }
    waveform = read_audio(entry, spec.sample_rate)
    pipeline = ReferencePipeline(spec)
    reference = pipeline.run(waveform)
    found = localize(spec, entry.id, waveform, worst_span(row), reference, pipeline)
    target = plan.write(out / "worst" / "diff.json", "diff of the worst utterance")
    full = {
        "utterance": entry.id,
        "span": found.span,
        "culprit": found.culprit,
        "notes": found.notes,
        "encoder": found.encoder.to_dict() if found.encoder is not None else None,
    }
    write_text_atomically(target, dumps(full, indent=1))
    plan.written(target)
    data = found.to_dict()
    data["path"] = str(target)
    return data


def _matrix(spec, rows: list[dict], entries: dict, count: int, notes: list[str]) -> dict | None:
    chosen = [entries[r["index"]] for r in rows if r["status"] == "ok" and not entries[r["index"]].golden][:count]
    if not chosen:
        notes.append("runtime matrix: no audio utterance to run it on")
        return None
    waveforms = [read_audio(e, spec.sample_rate) for e in chosen]
    return runtime_matrix(spec, chosen, waveforms)
