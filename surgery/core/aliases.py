"""Short import names for packages that live inside ``surgery``.

``criteria`` and ``models`` are installed as ``surgery.criteria`` and ``surgery.models``, so a
user's own ``criteria.py`` or ``models.py`` in the working directory cannot shadow them (the
engine only ever imports the long names). The top-level ``criteria`` and ``models`` packages
are aliases: the same module objects, registries and classes, never a second copy.

Example:
    >>> import criteria, surgery.criteria
    >>> criteria is surgery.criteria
    True
"""
from __future__ import annotations

import importlib
import pkgutil
import sys
from types import ModuleType


def alias_package(short: str, target: str) -> ModuleType:
    """Make ``import short`` and ``import short.sub`` return ``target`` and ``target.sub``.

    Every submodule of ``target`` is imported and registered under the short name too, so
    ``from criteria.kmeans import KMeansCriterion`` is the very class the engine uses.
    """
    package = importlib.import_module(target)
    sys.modules[short] = package
    for info in pkgutil.walk_packages(package.__path__, prefix=f"{target}."):
        module = importlib.import_module(info.name)
        sys.modules[short + info.name[len(target):]] = module
    return package
