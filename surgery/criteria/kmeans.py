"""K-means clustering criterion (semantics of the MIC-Laboratory CNN pruning engine).

Filters are clustered (scikit-learn ``KMeans``, optionally after PCA). Each cluster with
more than one member loses a share of the removals proportional to its size, its
lowest-scoring members (by the base criterion) first; a cluster is never emptied and
singleton clusters are kept whole. Removals left over by rounding go round-robin, one
per cluster with more than one member left. With ``k=1`` this is the base criterion.
"""
from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch

from surgery.core.errors import ArgumentError
from surgery.criteria.base import GroupView, Wrapper
from surgery.criteria.registry import get, register

__all__ = ["KMeansCriterion", "kmeans_removal", "cluster_filters"]


def kmeans_removal(labels: np.ndarray, scores: torch.Tensor, n: int) -> torch.Tensor:
    """Indices to remove given cluster ``labels`` and base ``scores`` (higher = keep).

    Example:
        >>> kmeans_removal(np.array([0, 0, 1, 1]), torch.tensor([1.0, 2.0, 3.0, 0.5]), 2).tolist()
        [0, 3]
    """
    s = scores.detach().double().cpu().numpy()
    clusters = [sorted(np.nonzero(labels == c)[0].tolist(), key=lambda i: (s[i], i)) for c in np.unique(labels)]
    multi = [c for c in clusters if len(c) > 1]
    capacity = sum(len(c) - 1 for c in multi)
    if n > capacity:  # the quotas cannot be met: keep one per cluster as long as possible, rest by score
        first = kmeans_removal(labels, scores, capacity).tolist() if capacity else []
        rest = sorted(set(range(len(s))) - set(first), key=lambda i: (s[i], i))[: n - capacity]
        return torch.tensor(sorted(first + rest), dtype=torch.long)
    total = sum(len(c) for c in multi)
    removed, left = [], []
    for c in multi:
        q = min(math.floor(n * len(c) / total), len(c) - 1)
        removed += c[:q]
        left.append(c[q:])
    while len(removed) < n:  # round-robin over clusters that can still give one
        for c in left:
            if len(removed) < n and len(c) > 1:
                removed.append(c.pop(0))
    return torch.tensor(sorted(removed), dtype=torch.long)


def cluster_filters(features: np.ndarray, k: int | None, pca: float | None = None, seed: int = 0,
                    max_k: int = 10) -> np.ndarray:
    """Cluster labels of the rows of ``features``; ``k=None`` picks k by silhouette score.
    scikit-learn's threads are limited to torch's thread count (threadpoolctl)."""
    from threadpoolctl import threadpool_limits
    with threadpool_limits(limits=torch.get_num_threads()):
        return _cluster(features, k, pca, seed, max_k)


def _cluster(features: np.ndarray, k: int | None, pca: float | None, seed: int, max_k: int) -> np.ndarray:
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.metrics import silhouette_score
    n = len(features)
    if pca is not None and n > 2:
        features = PCA(n_components=pca, random_state=seed).fit_transform(features)
    if k is not None and k < 1:
        raise ArgumentError(f"k must be at least 1, got {k}")
    if k == 1 or n < 3:
        return np.zeros(n, dtype=np.int64)
    fit = lambda kk: KMeans(n_clusters=kk, random_state=seed, n_init=10).fit_predict(features)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate points: sklearn warns about fewer distinct clusters
        if k is not None:
            return fit(min(k, n))
        best, best_labels = -2.0, np.zeros(n, dtype=np.int64)
        for kk in range(2, min(max_k, n - 1) + 1):
            labels = fit(kk)
            if len(np.unique(labels)) < 2:
                continue
            score = silhouette_score(features, labels)
            if score > best:
                best, best_labels = score, labels
    return best_labels


@register("kmeans")
class KMeansCriterion(Wrapper):
    """Cluster-aware removal on top of a base criterion (``base="l1"`` gives K-L1).

    Args:
        k: clusters per layer: an int (default 2: one fit per layer, fast), a dict
            {layer name: k} (other layers automatic), or "auto"/None to choose k by
            silhouette score (a fit per candidate k: slow on wide layers).
        base: the criterion ranking channels inside a cluster (a name or an object).
        pca: keep this fraction of variance with PCA before clustering (None: no PCA).
        seed: random state of KMeans (and PCA), so results are deterministic.

    ``score`` returns the base criterion's scores; ``select`` applies the clustering. When
    more channels must go than the clusters can give without emptying one, the rest are
    taken by the base criterion (with a warning, once).

    Example:
        >>> import torch.nn as nn
        >>> len(KMeansCriterion(k=2).prune_indices(nn.Conv2d(3, 8, 3), 0.5))
        4
    """

    def __init__(self, k: int | dict | str | None = 2, base: Any = "l1", pca: float | None = None,
                 seed: int = 0, max_k: int = 10) -> None:
        super().__init__(get(base))
        if k == "auto":
            k = None
        if not (k is None or isinstance(k, dict) or (isinstance(k, int) and not isinstance(k, bool) and k >= 1)):
            raise ArgumentError(f"k must be a positive int, a dict {{layer name: k}}, or 'auto' (silhouette search); got {k!r}")
        self.k, self.pca, self.seed, self.max_k = k, pca, seed, max_k
        self._fell_back = False

    def select(self, target, n: int) -> torch.Tensor:
        view = self.view_of(target)
        scores = self.base.score(view)
        if n == 0:
            return torch.zeros(0, dtype=torch.long)
        parts = view.producers or view.per_channel
        features = torch.cat([p.detach().double().cpu() for p in parts], 1).numpy()
        labels = cluster_filters(features, self._k_for(view), self.pca, self.seed, self.max_k)
        capacity = sum(c - 1 for c in np.bincount(labels) if c > 1)
        if n > capacity and not self._fell_back:
            self._fell_back = True
            warnings.warn(f"kmeans: {n} of {len(labels)} channels must go but only {capacity} can without emptying a "
                          f"cluster; the rest are taken by the base criterion ({type(self.base).__name__}). Said once.",
                          stacklevel=2)
        return kmeans_removal(labels, scores, n)

    def _k_for(self, view: GroupView) -> int | None:
        if not isinstance(self.k, dict):
            return self.k
        names = view.names.get("producers", []) + view.names.get("per_channel", [])
        return next((self.k[nm] for nm in names if nm in self.k), None)
