"""svsurgery audit throughput: the local engine with 1 and 2 workers and the Ray engine with 2
actors, on the same machine, the same corpus and the same fused model.

Setup (kept in ``--work`` between runs): the reference encoder at SenseVoice-Small depth (50 +
20 blocks, width 128; ``--size tiny`` for a quick look) exported as FunASR does, fused with
silero's VAD (``fuse-preproc --vad silero``); a corpus of ``--utterances`` espeak-ng utterances
of 2-12 s (multilingual speech with pauses) plus the six vad-dev recordings. Each engine audits
the whole corpus into a fresh folder (no shard reused), worst 0, no diff: only the per-utterance
work and the engine. The local engine's processes and Ray's actors each run one onnxruntime
session and one reference pipeline, one thread each.

Timings per engine (best of ``--repeats``, runs of the engines interleaved so that the drift of
a shared machine hits all alike):
- ``engine s``: from handing the shards to the engine to the last shard back, start-up of its
  processes / actors included (what a user waits for, once a Ray cluster is up);
- ``utt/s`` and ``audio s/s``: utterances and audio-seconds per second over ``engine s``;
- ``start-up s``: until the first shard came back (processes or actors started, models loaded);
  ``then utt/s``: utterances per second after it (Ray Data hands results back in bursts, so its
  first shard comes back late and this figure reads high for Ray: informative only);
- Ray's overhead: its engine time / the local engine's with as many workers - 1, end to end
  (actors' start-up included; it is paid once per audit, so it fades on a larger corpus).
  ``ray.init`` (starting the local cluster) is timed once, apart: a cluster is started once
  for many audits.

Also printed: one core's work per audio-second (the deployed model and the reference pipeline,
as timed inside the worker with one thread each) and what a 10 000-hour audit costs on paper
(core-hours = 10 000 h x that figure; start-up, once per worker, aside).

Bar (issue 15): Ray's overhead vs local on one machine <= 25 %.

    python bench/audit.py [--size small-depth|tiny|sensevoice] [--utterances 48] [--repeats 2]
                          [--engines local1,local2,ray2] [--work DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import wave
from pathlib import Path

import numpy as np

RAY_OVERHEAD_BAR = 0.25
HOURS = 10_000


def _write(path: Path, samples: np.ndarray) -> None:
    data = np.clip(np.round(samples * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(16000)
        handle.writeframes(data.tobytes())


def setup(work: Path, size: str, utterances: int) -> tuple[Path, Path, Path]:
    """(fused model, original encoder, manifest), made once per --work folder."""
    from svsurgery.testing import audio, vad_corpus
    from svsurgery.testing.encoder import EncoderConfig, build_encoder
    from svsurgery.testing.export import FUNASR_CONFIG, cmvn_statistics, export_legacy, write_am_mvn

    models = work / f"models-{size}"
    original, fused = models / "original" / "model.onnx", models / "fused.onnx"
    if not fused.is_file():
        original.parent.mkdir(parents=True, exist_ok=True)
        config = {"tiny": EncoderConfig.tiny, "small-depth": EncoderConfig.small_depth, "sensevoice": EncoderConfig}[
            size
        ]()
        export_legacy(build_encoder(config), original)
        (original.parent / "config.yaml").write_text(FUNASR_CONFIG, encoding="utf-8")
        write_am_mvn(original.parent / "am.mvn", *cmvn_statistics())
        from svsurgery.fuse import fuse_preprocessing
        from svsurgery.model_io import save
        from svsurgery.vad import SileroVadOptions

        fused_model, report = fuse_preprocessing(original, vad=SileroVadOptions())
        assert report.passed
        save(fused_model, fused)
    corpus = work / f"corpus-{utterances}"
    manifest = corpus / "manifest.jsonl"
    if not manifest.is_file():
        corpus.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(15)
        lines = []
        for i in range(utterances):
            seconds = float(rng.uniform(2.0, 12.0))
            _write(corpus / f"utt{i:04d}.wav", audio.speech(seconds, seed=1000 + i))
            lines.append({"audio": f"utt{i:04d}.wav", "id": f"utt{i:04d}", "language": "mixed"})
        for recording in vad_corpus.recordings():
            _write(corpus / f"{recording.name}.wav", recording.waveform)
            lines.append({"audio": f"{recording.name}.wav", "id": recording.name, "language": "vad-dev"})
        manifest.write_text("\n".join(json.dumps(line) for line in lines), encoding="utf-8")
    return fused, original, manifest


def run_once(
    fused: Path, original: Path, manifest: Path, engine: str, workers: int, shard_size: int, ray_address
) -> dict:
    from svsurgery.audit import audit

    out = Path(tempfile.mkdtemp(prefix=f"svs-audit-{engine}{workers}-"))
    try:
        report = audit(
            str(fused),
            audio=str(manifest),
            reference_model=str(original),
            output_dir=out / "out",
            engine=engine,
            workers=workers,
            shard_size=shard_size,
            worst=0,
            localize_worst=False,
            ray_address=ray_address,
        )
    finally:
        shutil.rmtree(out, ignore_errors=True)
    summary = report.summary
    timing, totals = summary["timing"], summary["totals"]
    return {
        "engine_s": timing["engine_s"],
        "utterances": totals["utterances"],
        "audio_s": totals["audio_s"],
        "first_shard_s": timing["first_shard_s"],
        "steady_utterances_per_s": timing["steady_utterances_per_s"],
        "rows_sha256": summary["audit"]["rows_sha256"],
        "model_ms_per_audio_s": timing["model_ms_per_audio_s"],
        "reference_ms_per_audio_s": timing["reference_ms_per_audio_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size",
        choices=("small-depth", "tiny", "sensevoice"),
        default="small-depth",
        help="sensevoice: SenseVoiceSmall's own sizes (width 512, 50 + 20 blocks, 25055 tokens; random weights)",
    )
    parser.add_argument("--engines", default="local1,local2,ray2", help="which runs, of local1, local2, ray2")
    parser.add_argument("--utterances", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--shard-size", type=int, default=4)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "svsurgery-bench-audit")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    fused, original, manifest = setup(args.work, args.size, args.utterances)

    chosen = set(args.engines.split(","))
    runs = {
        label: run
        for key, label, run in (
            ("local1", "local x1", ("local", 1)),
            ("local2", "local x2", ("local", 2)),
            ("ray2", "ray x2", ("ray", 2)),
        )
        if key in chosen
    }
    ray_init_s, address = None, None
    if "ray x2" in runs:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a private instance on the loopback
        import ray

        started = time.perf_counter()
        ray.init(
            num_cpus=2,
            _node_ip_address="127.0.0.1",
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
        ray_init_s = time.perf_counter() - started
        address = ray.get_runtime_context().gcs_address
    best: dict[str, dict] = {}
    digests = set()
    try:
        for _ in range(args.repeats):
            for label, (engine, workers) in runs.items():
                result = run_once(
                    fused, original, manifest, engine, workers, args.shard_size, address if engine == "ray" else None
                )
                digests.add(result["rows_sha256"])
                if label not in best or result["engine_s"] < best[label]["engine_s"]:
                    best[label] = result
    finally:
        if address is not None:
            ray.shutdown()

    local = best.get("local x1") or next(iter(best.values()))
    # one core's work per audio-second: both sides as timed inside the worker (start-up, paid once per
    # worker, and reading/comparing, a few per cent, left out)
    core_ms = local["model_ms_per_audio_s"] + local["reference_ms_per_audio_s"]
    overhead = (
        best["ray x2"]["engine_s"] / best["local x2"]["engine_s"] - 1 if {"ray x2", "local x2"} <= set(best) else None
    )
    print(
        f"svsurgery audit: {local['utterances']} utterances, {local['audio_s']:.0f} s of audio, encoder {args.size}, "
        f"silero VAD, shard size {args.shard_size}, best of {args.repeats}"
    )
    print(
        f"{'engine':<10}{'engine s':>10}{'utt/s':>8}{'audio s/s':>11}{'vs first':>10}"
        f"{'start-up s':>12}{'then utt/s':>12}"
    )
    for label, result in best.items():
        print(
            f"{label:<10}{result['engine_s']:>10.1f}{result['utterances'] / result['engine_s']:>8.2f}"
            f"{result['audio_s'] / result['engine_s']:>11.1f}{local['engine_s'] / result['engine_s']:>9.2f}x"
            f"{result['first_shard_s']:>12.1f}{result['steady_utterances_per_s']:>12.2f}"
        )
    if "ray x2" in best:
        print(f"ray.init (once per cluster, not in the figures above): {ray_init_s:.1f} s")
    if overhead is not None:
        print(
            f"Ray's overhead vs local with 2 workers, end to end (actors' start-up included): {overhead:+.1%} "
            f"(bar: <= {RAY_OVERHEAD_BAR:.0%}) -> {'met' if overhead <= RAY_OVERHEAD_BAR else 'NOT met'}"
        )
    print(f"rows identical across engines and repeats: {len(digests) == 1}")
    print(
        f"one core per audio-second: model {local['model_ms_per_audio_s']:.1f} ms + reference pipeline "
        f"{local['reference_ms_per_audio_s']:.1f} ms = {core_ms:.1f} ms (one thread each; start-up once per worker)"
    )
    core_hours = HOURS * core_ms / 1000
    print(
        f"a {HOURS:,} h audit on paper: {HOURS:,} h x {core_ms / 1000:.3f} = {core_hours:,.0f} core-hours "
        f"(e.g. {core_hours / 64:,.1f} h on 64 cores, {core_hours / 512:,.1f} h on 512)"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "size": args.size,
                    "runs": best,
                    "ray_init_s": ray_init_s,
                    "ray_overhead_end_to_end": overhead,
                    "rows_identical": len(digests) == 1,
                    "core_ms_per_audio_s": core_ms,
                    "core_hours_10000h": core_hours,
                },
                indent=2,
            ),
            encoding="utf-8",
        )


if __name__ == "__main__":
    main()
