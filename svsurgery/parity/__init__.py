"""The parity kit: metrics and tolerance profiles (references and input generation follow)."""

from svsurgery.parity.metrics import PROFILES, OutputParity, Tolerance, compare

__all__ = ["PROFILES", "OutputParity", "Tolerance", "compare"]
