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
