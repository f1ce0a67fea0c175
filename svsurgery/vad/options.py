"""Options of the segmentation the in-graph VAD drives, with units and defaults.

Each VAD mode's options live with the mode (:mod:`svsurgery.vad.mode`); they are found here
too, for code that imports them from here.
"""

from __future__ import annotations

import dataclasses

from svsurgery.errors import BadInputError
from svsurgery.vad.energy import EnergyVadOptions
from svsurgery.vad.fsmn import FsmnVadOptions
from svsurgery.vad.silero import SileroVadOptions

__all__ = ["EnergyVadOptions", "FsmnVadOptions", "SegmentOptions", "SileroVadOptions"]


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
