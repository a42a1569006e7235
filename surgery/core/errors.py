"""The library's own errors. Every one derives from :class:`SurgeryError`, so a caller (and
the command line, which prints them as one line and exits with status 2) tells a refusal
with a fix from an internal bug. Each also derives from the builtin it used to be
(``ValueError``, ``TypeError`` or ``RuntimeError``), so ``except ValueError`` still works.

Example:
    >>> from surgery.core.errors import ArgumentError, SurgeryError
    >>> issubclass(ArgumentError, SurgeryError) and issubclass(ArgumentError, ValueError)
    True
"""
from __future__ import annotations

__all__ = ["SurgeryError", "ArgumentError", "ArgumentTypeError", "TraceError", "ShapeError", "ExportError",
           "VerificationError", "InPlaceError", "UntrustedSpecError", "RatioError", "UnknownOptionError", "check_ratio"]


class SurgeryError(Exception):
    """Base of every error torch-surgery raises on purpose; the message names what and the fix."""


class ArgumentError(SurgeryError, ValueError):
    """An argument, option or file value is out of range or unknown; the message names it."""


class ArgumentTypeError(SurgeryError, TypeError):
    """An argument has the wrong type; the message names it and what is accepted."""


class TraceError(SurgeryError, ValueError):
    """torch.fx could not trace the model; the message names the module, line and fix."""


class ShapeError(SurgeryError, ValueError):
    """Running the traced model on ``example_inputs`` failed."""


class ExportError(SurgeryError, ValueError):
    """torch.export could not capture the model; the message carries torch's reason."""


class VerificationError(SurgeryError, RuntimeError):
    """The rewritten model does not equal the original with the removed channels masked.
    The user's model is left as it was. This is a bug in a rule or handler: please report it."""


class InPlaceError(SurgeryError, ValueError):
    """The model cannot be pruned in place: its forward holds a literal size that pruning
    changes, so the pruned model is a new ``torch.fx.GraphModule``, not the caller's object.
    The model was left as it was."""


class UntrustedSpecError(SurgeryError, ValueError):
    """A spec read from a file names code to run; it is refused before anything is imported."""


class UnknownOptionError(ArgumentError, TypeError):
    """An option name that does not exist (a keyword argument or a file key); the message names
    the closest one. Both a ValueError and a TypeError, like Python's own unknown keyword."""


class RatioError(ArgumentError, TypeError):
    """A ratio that is not a number in [0, 1). One type for every ratio the library reads, and
    both a ValueError and a TypeError, so either ``except`` catches it."""


def check_ratio(ratio: object, name: str = "ratio") -> float:
    """``ratio`` as a float in [0, 1) (the fraction removed), or :class:`RatioError` naming ``name``.

    Example:
        >>> check_ratio(0.25)
        0.25
    """
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
        raise RatioError(f"{name} must be a number in [0, 1) (the fraction of channels to remove), got {ratio!r}")
    if not 0.0 <= ratio < 1.0 or ratio != ratio:
        raise RatioError(f"{name} must be in [0, 1) (the fraction of channels to remove), got {ratio}")
    return float(ratio)
