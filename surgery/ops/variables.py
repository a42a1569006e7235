"""Channel variables: a union-find over integer ids, with freeze reasons.

Every channel of every tracked tensor is an integer *variable*. Op rules unify
variables that must be removed together and freeze those that must never be
removed. After the analysis each union-find root is one removable *unit*.
"""
from __future__ import annotations

import numpy as np

from surgery.core.errors import ArgumentError

__all__ = ["VarTable"]


class VarTable:
    """Union-find over channel variables.

    Example:
        >>> vt = VarTable()
        >>> a, b = vt.new(3), vt.new(3)
        >>> vt.unify(a, b)
        >>> bool(vt.find(int(a[0])) == vt.find(int(b[0])))
        True
    """

    def __init__(self) -> None:
        self._parent: list[int] = []
        self._reasons: dict[int, str] = {}  # var -> first freeze reason

    def __len__(self) -> int:
        return len(self._parent)

    def new(self, n: int) -> np.ndarray:
        """Create ``n`` fresh variables and return their ids."""
        start = len(self._parent)
        self._parent.extend(range(start, start + n))
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, v: int) -> int:
        parent = self._parent
        while parent[v] != v:
            parent[v] = parent[parent[v]]
            v = parent[v]
        return v

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self._parent[max(ra, rb)] = min(ra, rb)

    def unify(self, a: np.ndarray, b: np.ndarray) -> None:
        """Unify two equally long arrays of variables position by position."""
        if len(a) != len(b):
            raise ArgumentError(f"cannot unify {len(a)} channels with {len(b)}")
        for x, y in zip(a.tolist(), b.tolist()):
            if x != y:
                self.union(x, y)

    def freeze(self, vars_: np.ndarray, reason: str) -> None:
        """Mark variables as never removable, remembering the first reason."""
        for v in np.unique(vars_).tolist():
            self._reasons.setdefault(v, reason)

    def roots(self) -> np.ndarray:
        """The root of every variable (vectorised pointer jumping)."""
        parent = np.asarray(self._parent, dtype=np.int64)
        while True:
            nxt = parent[parent]
            if np.array_equal(nxt, parent):
                return parent
            parent = nxt

    def frozen_roots(self, roots: np.ndarray) -> dict[int, str]:
        """Map each frozen root to the first reason recorded for it."""
        out: dict[int, str] = {}
        for v, reason in self._reasons.items():
            out.setdefault(int(roots[v]), reason)
        return out
