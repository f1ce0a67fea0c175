"""svsurgery: ONNX graph surgery for speech models.

Load a model, change it (patch API, rules, preprocessing fusion), verify it, save it::

    import svsurgery
    model = svsurgery.load("encoder.onnx")
    ...
    svsurgery.save(model, "encoder.fixed.onnx")

torch is optional: everything here works without it; features that need it say so.
"""

from svsurgery._version import __version__

__all__ = [
    "BadInputError",
    "CheckFailedError",
    "MissingDependencyError",
    "SvsError",
    "__version__",
    "diff",
    "fix",
    "from_graphsurgeon",
    "golden",
    "load",
    "patch",
    "save",
    "summarize",
    "to_graphsurgeon",
    "validate",
    "validate_file",
]

# Everything is imported on first use: `import svsurgery` (and the command line's start-up)
# stays instant, and the rule engine does not load onnxscript's rewriter until asked.
_LAZY = {
    "diff": ("svsurgery.divergence", "diff"),
    "fix": ("svsurgery.engine", "fix"),
    "golden": ("svsurgery.golden", None),
    "patch": ("svsurgery.patch", None),
    "BadInputError": ("svsurgery.errors", "BadInputError"),
    "CheckFailedError": ("svsurgery.errors", "CheckFailedError"),
    "MissingDependencyError": ("svsurgery.errors", "MissingDependencyError"),
    "SvsError": ("svsurgery.errors", "SvsError"),
    "from_graphsurgeon": ("svsurgery.graphsurgeon", "from_graphsurgeon"),
    "to_graphsurgeon": ("svsurgery.graphsurgeon", "to_graphsurgeon"),
    "summarize": ("svsurgery.summary", "summarize"),
    "load": ("svsurgery.model_io", "load"),
    "save": ("svsurgery.model_io", "save"),
    "validate": ("svsurgery.model_io", "validate"),
    "validate_file": ("svsurgery.model_io", "validate_file"),
}


def __getattr__(name: str):
    import importlib

    if name not in _LAZY:
        raise AttributeError(f"module 'svsurgery' has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
