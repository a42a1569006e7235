"""Criteria computed from activations (and their gradients) on calibration data."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from surgery.criteria.data import DataCriterion
from surgery.criteria.registry import register

__all__ = ["Taylor", "Coverage", "APoZ", "HRank"]


def _act(a: torch.Tensor, activation: str | None) -> torch.Tensor:
    if activation is None:
        return a
    if activation == "relu":
        return F.relu(a)
    raise ValueError(f"activation must be 'relu' or None, got {activation!r}")


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
            raise ValueError(f"metric must be one of {self.METRICS}, got {metric!r}")
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
        ranks = torch.linalg.matrix_rank(_act(raw, self.activation))  # float32 SVD: 2x faster than float64
        return {"rank": ranks.sum(0).double(), "n": torch.tensor(float(raw.shape[0]))}

    def channel_scores(self, module, stats):
        return stats["rank"] / stats["n"]
