"""OCAP: class-aware pruning from the channels each image of the selected classes uses."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from surgery.core.errors import ArgumentError
from surgery.criteria.base import GroupView
from surgery.criteria.data import DataCriterion, per_unit
from surgery.criteria.registry import register

__all__ = ["OCAP"]


@register("ocap")
class OCAP(DataCriterion):
    """Per image of the selected ``classes`` (all if None) and per channel, the L2 norm over
    the spatial positions of LeakyReLU(BatchNorm output) (``slope``); each image keeps the
    top ``keep_fraction`` of the layer's channels. ``mode="union"`` (OCAP-AB) keeps a
    channel any image keeps; ``mode="frequency"`` (OCAP-FR) keeps those kept by at least a
    ``threshold`` fraction of the images. The score is that frequency.

    In ``union`` and ``frequency`` modes the data decides how many channels each group
    loses (``decides_count``) and ``surgery.prune``'s ``ratio`` caps it. ``mode="target"``
    ranks channels by that frequency and removes exactly the ratio (the class-aware
    project's "prune VGG-16 to 85%"). The first ``skip_first`` conv/linear layers
    are kept whole. ``surgery.keep_classes`` cuts the classifier down to the classes.
    """
    needs_labels = True

    def __init__(self, classes=None, mode: str = "union", keep_fraction: float = 0.5,
                 threshold: float = 0.5, slope: float = 0.01, skip_first: int = 0) -> None:
        super().__init__()
        if mode not in ("union", "frequency", "target"):
            raise ArgumentError(f"mode must be 'union', 'frequency' or 'target', got {mode!r}")
        if mode == "target" and skip_first:
            raise ArgumentError("ocap: skip_first applies to the data-decided modes; with mode='target' keep "
                             "those layers whole with ignored_layers")
        if not 0.0 < keep_fraction <= 1.0:
            raise ArgumentError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
        self.classes = None if classes is None else sorted(int(c) for c in classes)
        self.mode, self.keep_fraction, self.threshold = mode, keep_fraction, threshold
        self.slope, self.skip_first = slope, skip_first
        self._targets = None
        self._skipped: set = set()  # ids of the first skip_first conv/linear layers

    def calibrate(self, model, data, **kw):
        self._skipped = {id(m) for m in [m for m in model.modules()
                                         if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))][: self.skip_first]}
        return super().calibrate(model, data, **kw)

    def observe(self, module, act, raw):
        if self.classes is not None:
            if self._targets is None:
                raise ArgumentError("ocap with classes needs labelled batches (inputs, targets)")
            mask = torch.isin(self._targets.to(act.device), torch.tensor(self.classes, device=act.device))
            act = act[mask]
        v = F.leaky_relu(act, self.slope).norm(dim=2)  # [images, C]
        k = max(1, math.ceil(self.keep_fraction * v.shape[1]))
        top = torch.zeros_like(v, dtype=torch.bool)
        if len(v):
            top.scatter_(1, v.topk(k, dim=1).indices, True)
        return {"hits": top.sum(0).double(), "images": torch.tensor(float(len(v)))}

    def channel_scores(self, module, stats):
        return stats["hits"] / stats["images"].clamp_min(1.0)

    def keep_mask(self, scores: torch.Tensor) -> torch.Tensor:
        keep = scores > 0 if self.mode == "union" else scores >= self.threshold
        if not keep.any():
            keep[int(scores.argmax())] = True
        return keep

    @property
    def decides_count(self) -> bool:
        return self.mode != "target"

    def select(self, target, n):
        if self.mode == "target":
            return super().select(target, n)  # the n least used channels
        view = target if isinstance(target, GroupView) else None
        scores = self.score(target)
        if view is not None and any(id(m) in self._skipped for m in view.modules.get("producers", [])):
            return torch.zeros(0, dtype=torch.long)
        drop = torch.nonzero(~self.keep_mask(scores)).flatten()
        if n is not None and len(drop) > n:  # a cap: drop the least-used first
            drop = drop[torch.argsort(scores[drop], stable=True)[:n]].sort().values
        return drop

    def score_group(self, view: GroupView) -> torch.Tensor:
        # a group's channels are used when used at any of its sites
        out = None
        for module, index in self.sites(view):
            st = self.stats_of(module)
            if st is None:
                continue
            s = per_unit(self.channel_scores(module, st), index, view.size)
            out = s if out is None else torch.maximum(out, s)
        if out is None:
            raise ArgumentError("ocap: no statistics for this group's layers; calibrate first")
        return out
