"""Importing the user's own code: a module path or a ``.py`` file, failures as one line."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from svsurgery.errors import BadInputError

__all__ = ["import_user_module"]


def import_user_module(where: str, label: str) -> ModuleType:
    """Import ``where`` (``pkg.mod`` or ``path/to/file.py``); ``label`` starts every error line."""
    if where.endswith(".py") or "/" in where or "\\" in where:
        path = Path(where)
        if not path.is_file():
            raise BadInputError(f"{label}: no such file {where}")
        name = f"svsurgery_user_{path.stem}_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:  # not a suffix Python imports from (.py, .pyc, extensions)
            raise BadInputError(f"{label}: {where} is not a Python module file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as error:
            sys.modules.pop(name, None)
            raise BadInputError(f"{label}: importing {where} failed: {type(error).__name__}: {error}") from None
        return module
    try:
        return importlib.import_module(where)
    except Exception as error:
        raise BadInputError(f"{label}: cannot import {where}: {type(error).__name__}: {error}") from None
