"""Criteria by name: ``criteria.get("l1")``, ``criteria.register("mine")``."""
from __future__ import annotations

from typing import Any, Callable

__all__ = ["CRITERIA", "register", "get", "available"]

CRITERIA: dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator: make a criterion available as ``criteria.get(name)``."""
    def deco(cls: type) -> type:
        cls.name = name
        CRITERIA[name] = cls
        return cls
    return deco


def available() -> list:
    return sorted(CRITERIA)


def get(criterion: Any, **options: Any):
    """A criterion object from a name (with options) or an existing criterion object.

    ``normalize="mean"|"max"|"lamp"|"none"`` wraps it in :class:`criteria.Normalized`.

    Example:
        >>> get("l1")
        L1Norm(include='producers', reduce='sum')
    """
    normalize = options.pop("normalize", None)
    if isinstance(criterion, str):
        if criterion not in CRITERIA:
            raise ValueError(f"unknown criterion {criterion!r}; available: {', '.join(available())}. "
                             f"Register your own with @criteria.register(name).")
        obj = CRITERIA[criterion](**options)
        if normalize is None:
            return obj
        from criteria.normalize import Normalized
        return Normalized(obj, normalize)
    if hasattr(criterion, "score") and not isinstance(criterion, type):
        if options:
            raise ValueError("options are only accepted with a criterion name, not an object")
        return criterion
    raise TypeError(f"criterion must be a name ({', '.join(available())}) or an object with "
                    f"a score() method; got {criterion!r}")
