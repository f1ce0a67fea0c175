"""Options of the in-graph VAD and of the segmentation it drives, with units and defaults."""

from __future__ import annotations

import dataclasses

from svsurgery.errors import BadInputError

__all__ = ["EnergyVadOptions", "SegmentOptions"]


@dataclasses.dataclass(frozen=True)
class EnergyVadOptions:
    """A weight-free energy VAD: good on clean recordings, weak in noise (see README).

    Frame i covers samples [i * hop, i * hop + hop) (10 ms frames, as the vad-dev labels);
    a frame is speech when its energy is above both the recording's ``speech_percentile``
    energy + ``relative_threshold_db`` and its ``floor_percentile`` energy (the noise
    floor) + ``noise_margin_db``; then silences shorter than ``close_gaps_ms`` between
    speech are speech (hangover) and speech shorter than ``drop_islands_ms`` is dropped.
    """

    frame_ms: float = 10.0  # ms, frame length and hop
    relative_threshold_db: float = -55.0  # dB relative to the speech_percentile energy
    noise_margin_db: float = 6.0  # dB above the floor_percentile energy
    speech_percentile: float = 95.0  # %, nearest rank
    floor_percentile: float = 10.0  # %, nearest rank
    close_gaps_ms: float = 200.0  # ms; silences shorter than this between speech become speech
    drop_islands_ms: float = 30.0  # ms; speech runs shorter than this are dropped
    samp_freq: float = 16000.0  # Hz

    @property
    def hop(self) -> int:
        return int(round(self.samp_freq * self.frame_ms / 1000))

    def frames(self, milliseconds: float) -> int:
        return int(round(milliseconds / self.frame_ms))

    def validate(self) -> EnergyVadOptions:
        if self.hop < 1 or not 0 < self.speech_percentile <= 100 or not 0 < self.floor_percentile <= 100:
            raise BadInputError(f"energy VAD options {self}: frame_ms must give >= 1 sample, percentiles in (0, 100]")
        if self.close_gaps_ms < 0 or self.drop_islands_ms < 0:
            raise BadInputError("energy VAD: close_gaps_ms and drop_islands_ms must be >= 0")
        return self


@dataclasses.dataclass(frozen=True)
class SegmentOptions:
    """How VAD segments become encoder rows.

    ``merge=True`` is FunASR's ``generate(merge_vad=True, merge_length_s=15)``: segment
    boundaries are packed greedily into contiguous spans of at most ``merge_length_s``
    starting at 0 ms (silence between segments is kept; one segment or none comes back as
    is). ``merge=False`` decodes each segment alone, cut into pieces of at most
    ``max_segment_s``.
    """

    merge: bool = True
    merge_length_s: float = 15.0  # s
    max_segment_s: float = 30.0  # s, unmerged segments are cut to this

    def validate(self) -> SegmentOptions:
        if self.merge_length_s <= 0 or self.max_segment_s <= 0:
            raise BadInputError("segment lengths must be positive")
        return self


@dataclasses.dataclass(frozen=True)
class SileroVadOptions:
    """silero VAD and its ``get_speech_timestamps``, named and defaulted as silero names them.

    ``model`` is silero's sequence model (``silero_vad_16k_sequence.onnx``: all frames in
    one LSTM call); None finds it in the installed ``silero-vad`` package. Frames are 512
    samples (32 ms) at 16 kHz, each seen with the 64 samples before it.
    """

    model: str | None = None  # path to silero_vad_16k_sequence.onnx; None: the installed package's
    threshold: float = 0.5  # speech probability at or above which a frame is speech
    neg_threshold: float | None = None  # below it speech ends; None: max(threshold - 0.15, 0.01)
    min_speech_duration_ms: float = 250.0  # ms; shorter speech is dropped
    max_speech_duration_s: float = float("inf")  # s; longer speech is cut (at the longest silence)
    min_silence_duration_ms: float = 100.0  # ms of silence that end speech
    speech_pad_ms: float = 30.0  # ms added on each side of every speech chunk
    min_silence_at_max_speech: float = 98.0  # ms; silences at least this long are cut candidates
    use_max_poss_sil_at_max_speech: bool = True  # cut over-long speech at its longest silence
    samp_freq: float = 16000.0  # Hz; the sequence model is 16 kHz only

    @property
    def resolved_neg_threshold(self) -> float:
        return self.neg_threshold if self.neg_threshold is not None else max(self.threshold - 0.15, 0.01)

    def validate(self) -> SileroVadOptions:
        if self.samp_freq != 16000:
            raise BadInputError(f"silero's sequence model runs at 16000 Hz, not {self.samp_freq}")
        if not 0 <= self.threshold <= 1 or not 0 <= self.resolved_neg_threshold <= 1:
            raise BadInputError(f"silero thresholds must be in [0, 1] (threshold {self.threshold}, neg {self.neg_threshold})")
        durations = (self.min_speech_duration_ms, self.min_silence_duration_ms, self.speech_pad_ms, self.min_silence_at_max_speech)
        if min(durations) < 0 or not self.max_speech_duration_s > 0:
            raise BadInputError("silero durations must be >= 0 and max_speech_duration_s > 0")
        return self


@dataclasses.dataclass(frozen=True)
class FsmnVadOptions:
    """FunASR's fsmn-vad from the user's model folder (model.onnx, am.mvn, config.yaml).

    The state machine's parameters come from config.yaml ``model_conf`` (FunASR's
    VADXOptions names). By default the end-silence follows FunASR 1.4.16's ``generate()``:
    its dynamic schedule (2000 ms end silence and speech_noise_thres 0.5 for the first 60 s
    chunk, shorter after long speech); ``dynamic_silence=False`` gives the static config
    behaviour (``max_end_silence_time`` from config.yaml, or the one given here, which is
    also what FunASR does when the caller passes it).
    """

    folder: str  # the fsmn-vad model folder
    dynamic_silence: bool = True  # FunASR >= 1.3.9 generate()'s schedule; False: config.yaml's static value
    max_end_silence_time: float | None = None  # ms; given: static end silence (as FunASR's generate kwarg)
    max_single_segment_time: float | None = None  # ms; None: config.yaml's (SenseVoice's pipeline passes 30000)
    chunk_size_ms: float = 60000.0  # ms; FunASR's offline chunk, the schedule's step
    samp_freq: float = 16000.0  # Hz

    def validate(self) -> FsmnVadOptions:
        from pathlib import Path

        if not Path(self.folder).is_dir():
            raise BadInputError(f"--vad fsmn:{self.folder}: no such folder (expected model.onnx, am.mvn, config.yaml)")
        if self.chunk_size_ms <= 0 or (self.max_single_segment_time is not None and self.max_single_segment_time <= 0):
            raise BadInputError("fsmn-vad: chunk_size_ms and max_single_segment_time must be positive")
        return self
