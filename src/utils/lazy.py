"""Package exports loaded when first used (PEP 562), for packages whose modules import heavy libraries.

A package's ``__init__`` that imports its modules makes every import of any of its submodules pay for all of them:
``main.py --help`` imported torch because the CLI knows the ``evolve`` command. Used as::

    __getattr__ = lazy_exports(__name__, {"EvolutionSimulation": "src.workflows.evolution.simulation"})
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``exports[name]`` (a module path) the first time ``name`` is used."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name]), name)

    return __getattr__
