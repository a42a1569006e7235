"""Criteria by name: ``criteria.get("l1")``, ``criteria.register("mine")``."""
from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable, Iterator

from surgery.core.errors import ArgumentError, ArgumentTypeError
from surgery.criteria.base import Criterion
from surgery.criteria.normalize import Normalized

__all__ = ["ALIASES", "register", "unregister", "registered", "get", "available", "canonical"]

_CRITERIA: dict[str, type] = {}
ALIASES = {  # the names users of other tools type -> canonical names
    "l1norm": "l1", "l1_norm": "l1", "magnitude": "l1", "weight_magnitude": "l1", "l2norm": "l2", "l2_norm": "l2",
    "slimming": "bn_scale", "network_slimming": "bn_scale", "bn": "bn_scale", "bn_gamma": "bn_scale",
    "geometric_median": "fpgm", "k_means": "kmeans", "k_l1": "kmeans", "taylor_fo": "taylor", "class_aware": "ocap",
    "minitron": "activation_norm", "activation": "activation_norm",
}


def canonical(name: str) -> str:
    """``"L1norm"``, ``"Magnitude"``, ``"l1-norm"`` -> ``"l1"``: case and dashes ignored, aliases resolved."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    return ALIASES.get(key, key)


def register(name: str) -> Callable[[type], type]:
    """Class decorator: make a criterion available as ``criteria.get(name)``."""
    def deco(cls: type) -> type:
        if name in _CRITERIA and _CRITERIA[name] is not cls:
            warnings.warn(f"criteria.register({name!r}): replacing {_CRITERIA[name].__name__} with "
                          f"{cls.__name__}", stacklevel=2)
        cls.name = name
        _CRITERIA[name] = cls
        return cls
    return deco


def unregister(name: str) -> None:
    """Forget the criterion registered as ``name``."""
    _CRITERIA.pop(name, None)


@contextlib.contextmanager
def registered(name: str, cls: type) -> Iterator[type]:
    """``register(name)(cls)`` for the ``with`` block; what was registered before comes back."""
    old = _CRITERIA.get(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # replacing is the point here
        register(name)(cls)
    try:
        yield cls
    finally:
        _CRITERIA.pop(name, None) if old is None else _CRITERIA.__setitem__(name, old)
        if old is not None:
            old.name = name


def available() -> list:
    return sorted(_CRITERIA)


def get(criterion: Any, **options: Any):
    """A criterion object from a name (with options) or an existing criterion object.

    ``normalize="mean"|"max"|"lamp"|"none"`` wraps it in :class:`criteria.Normalized`.

    Example:
        >>> get("l1")
        L1Norm(include='producers', reduce='sum')
    """
    normalize = options.pop("normalize", None)
    if isinstance(criterion, str):
        name = canonical(criterion)
        if name not in _CRITERIA:
            raise ArgumentError(f"unknown criterion {criterion!r}; available: {', '.join(available())} "
                             f"(aliases: {', '.join(sorted(ALIASES))}). Register your own with "
                             f"@criteria.register(name).")
        obj = _CRITERIA[name](**options)
    elif isinstance(criterion, Criterion):
        if options:
            raise ArgumentError("options are only accepted with a criterion name, not an object "
                             f"(set them when building {type(criterion).__name__})")
        obj = criterion
    else:
        raise ArgumentTypeError(f"criterion must be a name ({', '.join(available())}) or a criteria.Criterion "
                        f"(subclass it and implement score_group; select() comes with it); got {criterion!r}")
    return obj if normalize is None else Normalized(obj, normalize)
