"""svsurgery: ONNX graph surgery for speech models.

Load a model, change it (patch API, rules, preprocessing fusion), verify it, save it::

    import svsurgery
    model = svsurgery.load("encoder.onnx")
    ...
    svsurgery.save(model, "encoder.fixed.onnx")

torch is optional: everything here works without it; features that need it say so.
"""

from svsurgery import patch
from svsurgery._version import __version__
from svsurgery.errors import BadInputError, CheckFailedError, MissingDependencyError, SvsError
from svsurgery.graphsurgeon import from_graphsurgeon, to_graphsurgeon
from svsurgery.inspect import summarize
from svsurgery.io import load, save, validate, validate_file

__all__ = [
    "diff",
    "fix",
    "golden",
    "BadInputError",
    "CheckFailedError",
    "MissingDependencyError",
    "SvsError",
    "__version__",
    "from_graphsurgeon",
    "load",
    "patch",
    "save",
    "summarize",
    "to_graphsurgeon",
    "validate",
    "validate_file",
]


def __getattr__(name: str):
    # the rule engine and golden files load onnxscript's rewriter: only when asked for
    if name == "fix":
        from svsurgery.engine import fix

        return fix
    if name == "diff":  # svsurgery.diff(module, model, inputs): the layer-by-layer comparison
        from svsurgery.layerwise import diff

        return diff
    if name == "golden":
        import svsurgery.golden

        return svsurgery.golden
    raise AttributeError(f"module 'svsurgery' has no attribute {name!r}")
