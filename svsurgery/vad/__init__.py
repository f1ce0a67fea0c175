"""Voice activity detection and segmentation inside the graph, in front of the encoder.

    from svsurgery import vad
    model = vad.build_vad_frontend(vad.EnergyVadOptions(), vad.SegmentOptions(merge=True))

Each mode (silero, fsmn, energy) is one class behind the protocol of
:class:`svsurgery.vad.mode.VadMode`; :func:`svsurgery.vad.mode.modes` lists them.
"""

from svsurgery.vad.build import SEGMENTS, build_vad_frontend
from svsurgery.vad.mode import VadMode
from svsurgery.vad.options import EnergyVadOptions, FsmnVadOptions, SegmentOptions, SileroVadOptions

__all__ = [
    "SEGMENTS",
    "EnergyVadOptions",
    "FsmnVadOptions",
    "SegmentOptions",
    "SileroVadOptions",
    "VadMode",
    "build_vad_frontend",
]
