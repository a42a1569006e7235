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
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []  # unifications not yet merged in

    def __len__(self) -> int:
        return len(self._parent)

    def new(self, n: int) -> np.ndarray:
        """Create ``n`` fresh variables and return their ids."""
        start = len(self._parent)
        self._parent.extend(range(start, start + n))
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, v: int) -> int:
        self._settle()
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
        """Unify two equally long arrays of variables position by position (recorded now,
        merged in one vectorised pass when a root is next asked for)."""
        if len(a) != len(b):
            raise ArgumentError(f"cannot unify {len(a)} channels with {len(b)}")
        a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
        differ = a != b
        if differ.any():
            self._pending.append((a[differ], b[differ]))

    def _settle(self) -> None:
        """Merge the recorded unifications: each variable's root becomes the smallest id of
        its connected component (what union by smaller root gives). Vectorised hooking and
        pointer jumping (Shiloach-Vishkin) over all recorded pairs at once."""
        if not self._pending:
            return
        a = np.concatenate([p[0] for p in self._pending])
        b = np.concatenate([p[1] for p in self._pending])
        self._pending = []
        label = _jumped(np.asarray(self._parent, dtype=np.int64))
        while True:
            la, lb = label[a], label[b]
            cross = la != lb
            if not cross.any():
                break
            np.minimum.at(label, np.maximum(la, lb)[cross], np.minimum(la, lb)[cross])
            label = _jumped(label)
        self._parent = label.tolist()

    def freeze(self, vars_: np.ndarray, reason: str) -> None:
        """Mark variables as never removable, remembering the first reason."""
        for v in np.unique(vars_).tolist():
            self._reasons.setdefault(v, reason)

    def roots(self) -> np.ndarray:
        """The root of every variable (vectorised pointer jumping)."""
        self._settle()
        return _jumped(np.asarray(self._parent, dtype=np.int64))

    def frozen_roots(self, roots: np.ndarray) -> dict[int, str]:
        """Map each frozen root to the first reason recorded for it."""
        out: dict[int, str] = {}
        for v, reason in self._reasons.items():
            out.setdefault(int(roots[v]), reason)
        return out


def _jumped(parent: np.ndarray) -> np.ndarray:
    """Every variable pointing straight at its root (parents always point to smaller ids)."""
    while True:
        nxt = parent[parent]
        if np.array_equal(nxt, parent):
            return parent
        parent = nxt
