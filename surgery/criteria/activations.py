"""Criteria computed from activations (and their gradients) on calibration data."""
from __future__ import annotations


import torch
import torch.nn.functional as F

from surgery.core.errors import ArgumentError
from surgery.criteria.data import DataCriterion
from surgery.criteria.registry import register

__all__ = ["Taylor", "Coverage", "APoZ", "HRank", "map_ranks"]


def _act(a: torch.Tensor, activation: str | None) -> torch.Tensor:
    if activation is None:
        return a
    if activation == "relu":
        return F.relu(a)
    raise ArgumentError(f"activation must be 'relu' or None, got {activation!r}")


@register("taylor")
class Taylor(DataCriterion):
    """Molchanov et al. 2017: per sample |sum over positions of a * dL/da| at the channel's
    activation (BatchNorm output, else the producer's output), averaged over samples, then
    divided by the layer's L2 norm (``normalize=False`` keeps the raw average).
    Calibration runs in eval mode with a summed loss (cross-entropy by default)."""
    needs_labels = needs_gradients = True

    def __init__(self, normalize: bool = True) -> None:
        super().__init__()
        self.normalize = normalize

    def observe(self, module, act, raw):
        return {"n": torch.tensor(float(act.shape[0]))}

    def observe_grad(self, module, act, grad):
        return {"sum": (act * grad).sum(2).abs().sum(0)}

    def channel_scores(self, module, stats):
        mean = stats.get("sum", torch.zeros(1)) / stats["n"]
        return mean / mean.norm().clamp_min(1e-30) if self.normalize else mean


@register("coverage")
class Coverage(DataCriterion):
    """Neuron coverage after the activation (ReLU by default), per channel over samples and
    positions: ``mean_absolute`` E|a|, ``normalized_mean`` E|a| / max over the layer,
    ``frequency`` P(a > threshold), ``combined`` sqrt(normalized_mean * frequency).
    Higher coverage means keep (least-covered channels are pruned first)."""
    METRICS = ("mean_absolute", "normalized_mean", "frequency", "combined")

    def __init__(self, metric: str = "combined", threshold: float = 0.0, activation: str | None = "relu") -> None:
        super().__init__()
        if metric not in self.METRICS:
            raise ArgumentError(f"metric must be one of {self.METRICS}, got {metric!r}")
        self.metric, self.threshold, self.activation = metric, threshold, activation

    def observe(self, module, act, raw):
        a = _act(act, self.activation)
        return {"abs": a.abs().sum((0, 2)), "above": (a > self.threshold).sum((0, 2)),
                "count": torch.tensor(float(a.shape[0] * a.shape[2]))}

    def channel_scores(self, module, stats):
        mean = stats["abs"] / stats["count"]
        if self.metric == "mean_absolute":
            return mean
        norm = mean / mean.max().clamp_min(1e-30)
        freq = stats["above"] / stats["count"]
        return {"normalized_mean": norm, "frequency": freq}.get(self.metric, (norm * freq).sqrt())


@register("apoz")
class APoZ(DataCriterion):
    """Average percentage of zeros after ReLU (Hu et al. 2016); the score is 1 - APoZ, so
    channels that are mostly zero are pruned first."""

    def observe(self, module, act, raw):
        return {"zeros": (F.relu(act) == 0).sum((0, 2)), "count": torch.tensor(float(act.shape[0] * act.shape[2]))}

    def channel_scores(self, module, stats):
        return 1.0 - stats["zeros"] / stats["count"]


@register("hrank")
class HRank(DataCriterion):
    """Average rank of each channel's feature map (Lin et al., HRank, CVPR 2020), after ReLU
    by default. Layers whose outputs are not 2-D maps are not scored."""

    def __init__(self, activation: str | None = "relu") -> None:
        super().__init__()
        self.activation = activation

    def observe(self, module, act, raw):
        if raw.dim() != 4:
            return {}
        ranks = map_ranks(_act(raw, self.activation))
        return {"rank": ranks.sum(0).double(), "n": torch.tensor(float(raw.shape[0]))}

    def channel_scores(self, module, stats):
        return stats["rank"] / stats["n"]


def map_ranks(maps: torch.Tensor) -> torch.Tensor:
    """``torch.linalg.matrix_rank`` of every ``[..., H, W]`` map (its default tolerance,
    ``max(H, W) * eps * sigma_max``), computed fast where the answer is sure.

    Zero rows and columns (common after ReLU) do not change the rank or sigma_max. On the
    smaller side of what remains, the map has full rank under that tolerance when its Gram
    matrix minus ``tol^2 I`` is positive definite; with ``tol`` from an upper bound of
    sigma_max (the smaller of the Gram's trace and its largest absolute row sum), a
    successful float64 Cholesky proves it. Only the other maps pay for a singular value
    decomposition.

    Example:
        >>> import torch
        >>> m = torch.randn(2, 3, 6, 5, generator=torch.Generator().manual_seed(0))
        >>> m[0, 1, :, 2:] = 0  # rank 2
        >>> map_ranks(m).tolist()
        [[5, 2, 5], [5, 5, 5]]
    """
    h, w = maps.shape[-2:]
    flat = maps.reshape(-1, h, w)
    rows, cols = flat.ne(0).any(-1), flat.ne(0).any(-2)  # [n, h], [n, w]
    kept_rows, kept_cols = rows.sum(-1), cols.sum(-1)
    ranks = torch.minimum(kept_rows, kept_cols)
    sure = ranks == 0
    for side in (cols, rows):
        pick = ~sure & ((kept_cols <= kept_rows) if side is cols else (kept_cols > kept_rows))
        if pick.any():
            sure[pick] = _full_rank(flat[pick].double(), side[pick], max(h, w), maps.dtype, side is cols)
    if (~sure).any():
        ranks[~sure] = torch.linalg.matrix_rank(flat[~sure])
    return ranks.reshape(maps.shape[:-2])


def _full_rank(a: torch.Tensor, live: torch.Tensor, size: int, dtype: torch.dtype, columns: bool) -> torch.Tensor:
    """Whether each map restricted to its ``live`` columns (or rows) has full rank under
    ``matrix_rank``'s tolerance: a sufficient test (Cholesky of the Gram minus tol^2 I)."""
    gram = a.transpose(-2, -1) @ a if columns else a @ a.transpose(-2, -1)
    bound = torch.minimum(gram.diagonal(dim1=-2, dim2=-1).sum(-1), gram.abs().sum(-1).amax(-1))  # >= sigma_max^2
    tol2 = (size * torch.finfo(dtype).eps) ** 2 * bound
    dead = (~live).double()  # a zero row/column: make its dim trivially positive, out of the test
    shift = torch.diag_embed(dead * (1.0 + tol2[:, None]) - tol2[:, None])
    _, info = torch.linalg.cholesky_ex(gram + shift)
    return info == 0
