"""What a VAD mode is, and which modes there are.

A mode is one class: a frozen dataclass of its options that also answers every question the
rest of the project asks about the mode. :class:`VadMode` states the protocol and gives the
defaults; a mode implements

- ``name`` (and ``argument`` when ``--vad`` takes one, as in ``fsmn:DIR``), ``cli_help``;
- ``validate()``: its options checked, and any file they name loaded and checked, before
  anything else touches it (a bad file is one line, exit 2);
- ``graph(g, samples)``: its segments as ONNX ops, returned by name (:class:`VadGraph`);
- ``reference(pipeline=...)``: its segments from an implementation independent of that graph
  (:class:`VadReference`), for verifying a fusion and for audits;

and may override ``required_opset()``, ``files()``, ``metadata()`` / ``from_metadata()`` and
``add_arguments()`` / ``from_arguments()`` (its own command-line options). A new mode is one new
module defining such a class plus its line in :data:`REGISTERED`; the command line's ``--vad``,
the fusion, its verification, the metadata a fused model records and the audit all go
through :func:`modes`.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import NameFixPass

from svsurgery.errors import BadInputError
from svsurgery.frontend._ops import MIN_OPSET, GraphOps
from svsurgery.frontend.build import min_ir_version
from svsurgery.runtime import inference_session

__all__ = [
    "REGISTERED",
    "VadGraph",
    "VadMode",
    "VadReference",
    "add_arguments",
    "cli_help",
    "from_metadata",
    "graph_alone",
    "modes",
    "parse",
    "usage",
    "vad_model",
]

# one line per mode, "module:class"; the order is the order --vad's help and errors list them in
REGISTERED = (
    "svsurgery.vad.silero:SileroVadOptions",
    "svsurgery.vad.fsmn:FsmnVadOptions",
    "svsurgery.vad.energy:EnergyVadOptions",
)


@dataclasses.dataclass
class VadGraph:
    """A mode's VAD as values of a graph being built."""

    segments: ir.Value  # int64 [K, 2] [start_ms, end_ms) of the speech
    # the per-frame score the decisions came from (silero: speech, fsmn: silence probability)
    scores: ir.Value | None = None


@dataclasses.dataclass
class VadReference:
    """A mode's segments from an implementation independent of its graph, built once."""

    description: str  # what it is, for reports
    segments: Callable[[np.ndarray], np.ndarray]  # float32 [N] in [-1, 1] -> int64 [K, 2] ms


class VadMode:
    """The protocol every VAD mode implements (see the module docstring). Subclasses are
    frozen dataclasses whose fields are the mode's options; ``samp_freq`` is one of them."""

    name: ClassVar[str]  # what --vad calls it, and the "mode" its metadata records
    argument: ClassVar[str | None] = None  # what follows "NAME:" in --vad (fsmn: "DIR"); None: nothing
    cli_help: ClassVar[str] = ""  # one phrase for --vad's help
    samp_freq: float
    if TYPE_CHECKING:  # every mode is a dataclass: asdict() and fields() take it
        __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    # -- options
    def validate(self) -> VadMode:
        """These options, checked (BadInputError naming the option or file); returns self."""
        raise NotImplementedError

    def files(self) -> list[tuple[Path, str]]:
        """(path, what) of every file the mode reads, for the command's file plan."""
        return []

    # -- the graph
    def required_opset(self) -> int:
        """The lowest ai.onnx opset the mode's graph can be authored at."""
        return MIN_OPSET

    def graph(self, g: GraphOps, samples: ir.Value) -> VadGraph:
        """The speech in ``samples`` (float [N], in [-1, 1]) as ONNX ops added to ``g``."""
        raise NotImplementedError

    # -- the reference
    def reference(self, *, pipeline: bool = False) -> VadReference:
        """The mode's segments from outside its graph. ``pipeline=False`` (verifying a fusion):
        an independent implementation of the same decisions, or, where its dependency is not
        installed, the graph's VAD part run alone (:func:`graph_alone`), said in the
        description. ``pipeline=True`` (audits): the pipeline a user runs in Python, end to end."""
        raise NotImplementedError

    # -- records
    def metadata(self) -> dict:
        """The options as recorded in a fused model's ``svsurgery.frontend`` metadata (strict
        JSON: an infinite limit is written "inf")."""
        return {"mode": self.name, **{k: _plain(v) for k, v in dataclasses.asdict(self).items()}}

    @classmethod
    def from_metadata(cls, recorded: dict) -> VadMode:
        """The options :meth:`metadata` recorded (keys it does not know are ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: (math.inf if v == "inf" else v) for k, v in recorded.items() if k in known})

    # -- the command line
    @classmethod
    def add_arguments(cls, group) -> None:
        """Add the mode's own options to an argparse group (default: none)."""

    @classmethod
    def from_arguments(cls, argument: str | None, args=None) -> VadMode:
        """The options from ``--vad NAME[:ARGUMENT]`` and, when ``args`` is given, the options
        :meth:`add_arguments` declared (else the defaults)."""
        return cls()


def _plain(value):
    return str(value) if isinstance(value, float) and not math.isfinite(value) else value


@functools.cache
def modes() -> dict[str, type[VadMode]]:
    """The registered modes by name, in :data:`REGISTERED` order."""
    found = {}
    for entry in REGISTERED:
        module, _, name = entry.partition(":")
        mode = getattr(importlib.import_module(module), name)
        found[mode.name] = mode
    return found


def usage() -> str:
    """How --vad's value is spelled, e.g. "silero, fsmn:DIR or energy"."""
    spelled = [m.name + (f":{m.argument}" if m.argument else "") for m in modes().values()]
    return ", ".join(spelled[:-1]) + " or " + spelled[-1] if len(spelled) > 1 else spelled[0]


def parse(spec: str, args=None) -> VadMode:
    """``--vad NAME[:ARGUMENT]`` as a mode's options, validated; ``args``: the parsed command line
    holding the options :func:`add_arguments` declared (None: each mode's defaults)."""
    name, colon, argument = spec.partition(":")
    mode = modes().get(name)
    if mode is None or bool(colon) != bool(mode.argument) or (colon and not argument):
        raise BadInputError(f"--vad {spec}: expected {usage()}")
    return mode.from_arguments(argument if colon else None, args).validate()


def add_arguments(group) -> None:
    """Every mode's own command-line options, in registry order."""
    for mode in modes().values():
        mode.add_arguments(group)


def cli_help() -> str:
    """--vad's help: each mode's phrase."""
    phrases = [m.cli_help for m in modes().values()]
    return "find speech and decode each span: " + ", ".join(phrases[:-1]) + ", or " + phrases[-1]


def from_metadata(recorded) -> VadMode | None:
    """The mode a fused model recorded (``{"mode": NAME, ...}``); None when it names none we know."""
    if not isinstance(recorded, dict):
        return None
    name = recorded.get("mode")
    mode = modes().get(name) if isinstance(name, str) else None
    return None if mode is None else mode.from_metadata(recorded)


def vad_model(vad: VadMode) -> ir.Model:
    """The mode's VAD alone: ``samples`` f32 [N] -> ``scores`` (when the mode has them: one per
    frame, as :attr:`VadGraph.scores`) and ``segments`` [K, 2] ms."""

    samples = ir.val("samples", ir.DataType.FLOAT, ["samples"])
    opset = vad.required_opset()
    graph = ir.Graph([samples], [], nodes=[], opset_imports={"": opset}, name=f"svsurgery_vad_{vad.name}")
    found = vad.validate().graph(GraphOps(graph, opset), samples)
    if found.scores is not None:
        found.scores.name = "scores"
        graph.outputs.append(found.scores)
    found.segments.name = "segments"
    graph.outputs.append(found.segments)
    model = ir.Model(graph, ir_version=min_ir_version(opset))
    NameFixPass()(model)
    return model


def graph_alone(vad: VadMode, why: str) -> VadReference:
    """The reference of last resort: the graph's VAD part run alone (``why``: what is missing)."""
    session = inference_session(vad_model(vad))

    def segments(waveform: np.ndarray) -> np.ndarray:
        return session.run(["segments"], {"samples": np.ascontiguousarray(waveform, np.float32)})[0]

    return VadReference(f"the VAD part of the graph run alone ({why})", segments)
