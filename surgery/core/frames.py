"""Where in the user's code a call came from: warnings point at the user's line, and trace
errors name the user's line, on every entry path.

A frame is the library's when its file lies inside this package's folder (by path, so a user
whose project folder is called ``surgery-experiments`` still gets their line) or inside torch.

Example:
    >>> user_stacklevel() >= 1
    True
"""
from __future__ import annotations

import os
import sys
import traceback

import torch

__all__ = ["user_stacklevel", "user_frame", "is_library_file"]

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_TORCH = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep


def is_library_file(filename: str) -> bool:
    """True for this package's own files and torch's (not for the user's)."""
    path = os.path.abspath(filename)
    return path.startswith(_PACKAGE) or path.startswith(_TORCH) or filename.startswith("<frozen")


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes ``warnings.warn``, called by the function that calls this,
    point at the first frame outside the library (1 when there is none)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and is_library_file(frame.f_code.co_filename):
        frame, level = frame.f_back, level + 1
    return level if frame is not None else 1


def user_frame(err: BaseException) -> str:
    """``file:line `code``` of the innermost frame of ``err``'s traceback in the user's code, or ""."""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if not is_library_file(f.filename)]
    if not frames:
        return ""
    f = frames[-1]
    return f"{f.filename}:{f.lineno} `{(f.line or '').strip()}`"
