"""Criteria from weight gradients on calibration data: Taylor (2019) and Fisher (OBD)."""
from __future__ import annotations

import torch
import torch.nn as nn

from surgery.core.errors import ArgumentError
from surgery.criteria.activations import Taylor
from surgery.criteria.data import DataCriterion, _NORMS, out_rows
from surgery.criteria.kmeans import KMeansCriterion
from surgery.criteria.registry import register

__all__ = ["TaylorWeight", "Fisher", "KTaylor"]

_WEIGHTED = (nn.modules.conv._ConvNd, nn.Linear)


@register("taylor_weight")
class TaylorWeight(DataCriterion):
    """Molchanov et al. 2019: per filter (sum of w * dL/dw)^2 per batch, averaged over
    batches; the BN-gate form (gamma * dL/dgamma + beta * dL/dbeta)^2 where the group has a
    BatchNorm (``form="auto"``), or always ``"weight"`` / ``"bn"``. Calibration runs in eval
    mode: in train mode BatchNorm makes a conv filter's sum of w * dL/dw about zero."""
    needs_labels = needs_gradients = True
    hook_outputs = False
    uses_param_grads = True

    def __init__(self, form: str = "auto") -> None:
        super().__init__()
        if form not in ("auto", "weight", "bn"):
            raise ArgumentError(f"form must be 'auto', 'weight' or 'bn', got {form!r}")
        self.form = form

    def observe_params(self, module):
        w = getattr(module, "weight", None)
        if not isinstance(w, torch.Tensor) or w.grad is None:
            return {}
        if isinstance(module, _WEIGHTED):
            s = out_rows(module, w * w.grad).sum(1)
        elif isinstance(module, _NORMS) and w.dim() == 1:
            s = w * w.grad + (module.bias * module.bias.grad if module.bias is not None and module.bias.grad is not None else 0)
        else:
            return {}
        return {"t": s.detach() ** 2, "batches": torch.tensor(1.0)}

    def sites(self, view):
        norms = [(m, i) for m, i in view.layers("per_channel")
                 if isinstance(m, _NORMS)]
        prods = view.layers("producers")
        if self.form == "bn" or (self.form == "auto" and norms):
            if not norms:
                raise ArgumentError("taylor_weight(form='bn'): this group has no BatchNorm")
            return norms
        return prods or norms

    def channel_scores(self, module, stats):
        return stats["t"] / stats["batches"]


@register("fisher")
class Fisher(DataCriterion):
    """Diagonal Fisher / Hessian approximation of Optimal Brain Damage: 1/2 * sum of
    g^2 * w^2 over each filter's weights, with empirical gradients (one per batch of the
    summed loss), averaged over batches."""
    needs_labels = needs_gradients = True
    hook_outputs = False
    uses_param_grads = True

    def observe_params(self, module):
        w = getattr(module, "weight", None)
        if not isinstance(module, _WEIGHTED) or w.grad is None:
            return {}
        return {"f": 0.5 * out_rows(module, (w.grad * w) ** 2).sum(1).detach(), "batches": torch.tensor(1.0)}

    def sites(self, view):
        return view.layers("producers")

    def channel_scores(self, module, stats):
        return stats["f"] / stats["batches"]


@register("ktaylor")
class KTaylor(KMeansCriterion):
    """K-means clustering of filters with Taylor (2017) ranking inside clusters (K-Taylor)."""

    def __init__(self, k=None, pca=None, seed: int = 0, max_k: int = 10, normalize: bool = True) -> None:
        super().__init__(k=k, base=Taylor(normalize=normalize), pca=pca, seed=seed, max_k=max_k)
