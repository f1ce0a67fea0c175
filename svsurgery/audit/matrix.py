"""The runtime matrix: the same corpus slice under every onnxruntime setting that can change
results -- intra-op threads 1 / 2 / all, graph optimisation disabled / basic / extended / all,
and every execution provider present -- each compared with the audit's own setting (one
thread, all optimisations, CPU), so "it changes with the thread count" is measured.

Per setting: the largest max abs error and the smallest cosine against the reference setting,
the share of utterances whose segments or tokens differ, the corpus token error rate, and the
time per audio-second.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import onnxruntime as ort

from svsurgery.audit.aggregate import group_figures
from svsurgery.audit.deployed import DeployedModel
from svsurgery.audit.engines import available_cpus
from svsurgery.audit.metrics import compare_sides
from svsurgery.audit.reference import ReferencePipeline, SideRun
from svsurgery.audit.spec import OPTIMIZATION_LEVELS, AuditSpec, RuntimeSetting

__all__ = ["matrix_settings", "runtime_matrix"]

SKIPPED_PROVIDERS = ("AzureExecutionProvider",)  # a remote-call provider: nothing to run locally


def matrix_settings(cpus: int) -> list[RuntimeSetting]:
    threads = [1, 2, 0] if cpus > 2 else [1, 0]  # 0: onnxruntime's default, every core
    settings = [RuntimeSetting(t, level) for t in threads for level in OPTIMIZATION_LEVELS]
    for provider in ort.get_available_providers():
        if provider not in ("CPUExecutionProvider", *SKIPPED_PROVIDERS):
            settings.append(RuntimeSetting(0, "all", provider))
    return settings


def runtime_matrix(spec: AuditSpec, entries, waveforms, *, progress=None) -> dict:
    """Every setting against ``spec.setting`` on ``waveforms`` (the slice's audio, by entry)."""
    cpus = available_cpus()
    reference_runs: list[SideRun] | None = None
    if spec.model_kind == "encoder":  # both settings get the same features: the reference front end's
        pipeline = ReferencePipeline(spec)
        reference_runs = [pipeline.run(w) for w in waveforms]
    base = DeployedModel(spec, spec.setting)
    no_runs: list[SideRun | None] = [None] * len(waveforms)
    base_runs = [base.run(w, r) for w, r in zip(waveforms, reference_runs or no_runs)]
    audio = sum(w.size for w in waveforms) / spec.sample_rate
    results: list[dict[str, Any]] = []
    settings = matrix_settings(cpus)
    for setting in settings:
        try:
            model = DeployedModel(spec, setting)
            start = time.perf_counter()
            runs = [model.run(w, r) for w, r in zip(waveforms, reference_runs or no_runs)]
            seconds = time.perf_counter() - start
        except Exception as error:
            results.append(
                {
                    "setting": dataclasses.asdict(setting),
                    "label": setting.label,
                    "error": str(error).splitlines()[0][:200],
                }
            )
            continue
        rows = [
            compare_sides(e, run, b, spec.outputs, duration_s=w.size / spec.sample_rate, snr_db=None)
            for e, run, b, w in zip(entries, runs, base_runs, waveforms)
        ]
        figures = group_figures(rows)
        results.append(
            {
                "setting": dataclasses.asdict(setting),
                "label": setting.label,
                "reference_setting": setting == spec.setting,
                "utterances": len(rows),
                "max_abs": figures["max_abs_max"],
                "cosine_min": figures["cosine_min"],
                "segments_identical_share": figures["segments_identical_share"],
                "tokens_differ": figures["tokens_differ"],
                "token_error_rate_corpus": figures["token_error_rate_corpus"],
                "bit_identical": all(
                    (r["max_abs"] == 0.0 and r["segments_identical"] and r["integers_equal"]) for r in rows
                ),
                "ms_per_audio_s": 1000 * seconds / audio if audio else None,
            }
        )
        if progress is not None:
            progress()
    return {
        "reference_setting": spec.setting.label,
        "cpus": cpus,
        "utterances": [e.id for e in entries],
        "audio_s": audio,
        "settings": results,
    }
