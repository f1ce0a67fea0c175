"""Voice activity detection and segmentation inside the graph, in front of the encoder.

    from svsurgery import vad
    model = vad.build_vad_frontend(vad.EnergyVadOptions(), vad.SegmentOptions(merge=True))
"""

from svsurgery.vad.build import SEGMENTS, build_vad_frontend
from svsurgery.vad.options import EnergyVadOptions, FsmnVadOptions, SegmentOptions, SileroVadOptions

__all__ = ["SEGMENTS", "EnergyVadOptions", "FsmnVadOptions", "SegmentOptions", "SileroVadOptions", "build_vad_frontend"]
