"""One worker: one deployed session and one reference pipeline, turning entries into rows.

The local engine builds one per process, the Ray engine one per actor; both call
:meth:`Worker.shard` on the same shards, so their rows are the same. Everything that can go
wrong with one utterance (its audio, a run of either side) becomes that utterance's bad row.
"""

from __future__ import annotations

import time

import numpy as np

from svsurgery import golden
from svsurgery.audit.corpus import AudioProblem, Entry, estimate_snr_db, read_audio
from svsurgery.audit.deployed import DeployedModel
from svsurgery.audit.metrics import bad_row, compare_sides
from svsurgery.audit.reference import ReferencePipeline, SideRun, whole_span
from svsurgery.audit.spec import ENCODER, AuditSpec
from svsurgery.errors import SvsError

__all__ = ["Worker"]


class Worker:
    def __init__(self, spec: AuditSpec) -> None:
        self.spec = spec
        self.deployed = DeployedModel(spec)
        self.reference = ReferencePipeline(spec) if spec.reference.kind != "golden" else None

    def shard(self, entries: list[Entry]) -> list[dict]:
        return [self.row(entry) for entry in entries]

    def row(self, entry: Entry) -> dict:
        if entry.golden:
            return self._golden_row(entry)
        try:
            waveform = read_audio(entry, self.spec.sample_rate)
        except AudioProblem as problem:
            return bad_row(entry, str(problem))
        duration = waveform.size / self.spec.sample_rate
        snr = estimate_snr_db(waveform, self.spec.sample_rate)
        figures = {"duration_s": duration, "snr_db": snr}
        assert self.reference is not None, "a golden reference's corpus is golden files (audit refuses --audio with it)"
        try:
            reference = self.reference.run(waveform)
        except Exception as error:
            return bad_row(entry, f"the reference pipeline failed: {_one_line(error)}", **figures)
        try:
            deployed = self.deployed.run(waveform, reference)
        except Exception as error:
            return bad_row(entry, f"the deployed model failed: {_one_line(error)}", **figures)
        return compare_sides(entry, deployed, reference, self.spec.outputs, duration_s=duration, snr_db=snr)

    def _golden_row(self, entry: Entry) -> dict:
        assert entry.path is not None, "golden entries are listed from their files"
        try:
            stored = golden.load(entry.path)
        except SvsError as error:
            return bad_row(entry, f"unreadable golden file: {error}")
        spec = self.spec
        missing = [name for name in spec.outputs if name not in stored.outputs]
        if missing:
            return bad_row(entry, f"the golden file has no output {', '.join(missing)}")
        waveform = stored.inputs.get("waveform")
        samples = int(np.asarray(waveform).shape[-1]) if waveform is not None else 0
        duration = samples / spec.sample_rate if waveform is not None else None
        snr = estimate_snr_db(np.asarray(waveform).reshape(-1), spec.sample_rate) if waveform is not None else None
        try:
            start = time.perf_counter()
            outputs = self.deployed.run_feeds(dict(stored.inputs))
            seconds = time.perf_counter() - start
        except Exception as error:
            return bad_row(entry, f"the deployed model failed: {_one_line(error)}", duration_s=duration)
        if spec.model_kind == ENCODER:
            count = len(next(iter(stored.outputs.values())))
            spans = np.array([[k, k + 1] for k in range(count)], np.int64).reshape(-1, 2)
            deployed = SideRun(spans, [{n: outputs[n][k] for n in spec.outputs} for k in range(count)], seconds)
        else:
            deployed = self.deployed.side_run(outputs, samples, seconds)
        segments = stored.outputs.get("segments")
        if spec.model_kind == ENCODER:
            spans = deployed.spans
        elif segments is not None:
            spans = np.asarray(segments, np.int64).reshape(-1, 2)
        else:
            spans = whole_span(samples, spec.sample_rate)
        rows = [{n: np.asarray(stored.outputs[n])[k] for n in spec.outputs} for k in range(len(spans))]
        reference = SideRun(spans, rows, 0.0)
        return compare_sides(entry, deployed, reference, spec.outputs, duration_s=duration, snr_db=snr)


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]
