"""Layer-wise relevance propagation (Bach et al. 2015) for channel relevance.

Relevance starts at the true class's logit and is propagated back with modified
gradients: convolutions use the z+ rule, linear layers the epsilon rule, normalisation
layers pass relevance through unchanged; average pooling layers (modules) pass it in
proportion to each input's share; ReLU and max pooling use their gradients, which
conserve it. Residual additions copy relevance into both branches (no
proportional split), so conservation holds exactly only for chains without skips.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from surgery.criteria.calibration import Stats, channel_dim, hooked, per_channel_view, run_batches
from surgery.criteria.data import DataCriterion, _NORMS
from surgery.criteria.registry import register

__all__ = ["LRP"]


class _Rule(torch.autograd.Function):
    """Identity on values; in backward, the relevance arriving at ``out`` goes to ``x``."""

    @staticmethod
    def forward(ctx, x, out, module, rule, eps, record):
        ctx.save_for_backward(x)
        ctx.module, ctx.rule, ctx.eps, ctx.record = module, rule, eps, record
        return out.clone()

    @staticmethod
    def backward(ctx, relevance):
        (x,) = ctx.saved_tensors
        ctx.record(ctx.module, relevance)
        if ctx.rule == "identity":
            return relevance, None, None, None, None, None
        with torch.enable_grad():
            a = x.detach().requires_grad_(True)
            z = _forward(ctx.module, a, ctx.rule)
            s = relevance / (z + ctx.eps * torch.where(z >= 0, 1.0, -1.0))
            (c,) = torch.autograd.grad(z, a, grad_outputs=s)
        return a.detach() * c, None, None, None, None, None


_POOLS = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
          nn.AdaptiveAvgPool3d)


def _forward(module: nn.Module, a: torch.Tensor, rule: str) -> torch.Tensor:
    if rule == "zplus":  # positive weights, no bias
        return module._conv_forward(a, module.weight.clamp(min=0), None)
    if rule == "z":  # average pooling: relevance in proportion to each input's share
        return module.forward(a)  # not module(a): that would run this hook again
    return F.linear(a, module.weight, module.bias)  # epsilon rule


def _rule_of(module: nn.Module) -> str | None:
    if isinstance(module, nn.modules.conv._ConvNd) and not isinstance(module, nn.modules.conv._ConvTransposeNd):
        return "zplus"
    if isinstance(module, nn.Linear):
        return "epsilon"
    if isinstance(module, _NORMS):
        return "identity"
    if isinstance(module, _POOLS):
        return "z"
    return None


@register("lrp")
class LRP(DataCriterion):
    """Channel relevance: the relevance reaching each channel of a conv/linear output
    (summed over positions, averaged over samples), divided by the layer's total
    (``normalize=False`` keeps raw relevance). Needs labelled batches."""
    needs_labels = True

    def __init__(self, eps: float = 1e-9, normalize: bool = True) -> None:
        super().__init__()
        self.eps, self.normalize = eps, normalize

    def calibrate(self, model, data, *, max_batches=None, forward_fn=None, loss_fn=None, device=None):
        modules = [m for m in model.modules() if _rule_of(m)]
        stats = Stats(modules)

        def record(module, relevance):
            if _rule_of(module) == "z":
                return
            r = per_channel_view(relevance.detach(), channel_dim(module, relevance)).sum(2)
            stats.add(module, {"R": r.sum(0), "n": torch.tensor(float(r.shape[0]))})

        def hook(module, inputs, output):
            return _Rule.apply(inputs[0], output.detach(), module, _rule_of(module), self.eps, record)

        def start(output, targets):  # d(start)/d(output) = the true class's logit, one-hot
            picked = F.one_hot(targets, output.shape[-1]).to(output.dtype) * output.detach()
            return (output * picked).sum()

        def forward(m, batch):
            x, y = batch
            return m(x.detach().requires_grad_(True)), y

        with hooked(model, modules, forward=hook):
            run_batches(model, data, max_batches=max_batches, forward_fn=forward_fn or forward,
                        loss_fn=start, backward=True, device=device, desc="calibrating lrp")
        stats.all_reduce()
        self._stats = stats
        return self

    def sites(self, view):
        return view.layers("producers")

    def channel_scores(self, module, stats):
        r = stats["R"] / stats["n"]
        return r / r.abs().sum().clamp_min(1e-30) if self.normalize else r
