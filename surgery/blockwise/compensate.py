"""FLAP's bias compensation (An et al. 2024): what a removed input channel contributed on
average goes into the consumer's bias, ``b += W[:, removed] @ mean(x[removed])``.

This is a weight update after the verified structural rewrite (the block is checked
against its masked original first), reported in the plan. A consumer without a bias gets
one, and the config's bias switches (``attention_bias``, ``mlp_bias``, ...) are turned on
so that ``from_pretrained`` builds it; layers those switches also give a bias get zeros.

Example:
    >>> import torch, torch.nn as nn
    >>> layer = nn.Linear(4, 2, bias=False)
    >>> sums = {"": (torch.ones(4, dtype=torch.float64), 1.0)}
    >>> small = nn.Linear(2, 2, bias=False)
    >>> compensate(small, {("", "in"): [0, 1]}, {"": layer.weight.detach()}, sums)
    ['']
    >>> small.bias.shape
    torch.Size([2])
"""
from __future__ import annotations

import copy
import itertools
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn as nn

from surgery.core.errors import ArgumentError

__all__ = ["input_sums", "compensate", "bias_switches"]


def input_sums(block: nn.Module, batches: Iterable, call: Callable) -> dict:
    """``{linear name: (sum of its inputs per channel, rows)}`` over ``batches``, float64,
    summed over the ranks of the default process group when one is running."""
    sums: dict = {}

    def hook(name):
        def pre(module, args):
            x = args[0].detach().double().reshape(-1, args[0].shape[-1])
            s, n = sums.get(name, (0.0, 0.0))
            sums[name] = (s + x.sum(0), n + x.shape[0])
        return pre

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in block.named_modules() if isinstance(m, nn.Linear)]
    try:
        with torch.no_grad():
            for batch in batches:
                call(block, batch)
    finally:
        for h in handles:
            h.remove()
    return _all_reduced(sums)


def _all_reduced(sums: dict) -> dict:
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return sums
    out = {}
    for name in sorted(sums):
        s, n = sums[name]
        both = torch.cat([s, torch.tensor([float(n)], dtype=torch.float64)])
        dist.all_reduce(both)
        out[name] = (both[:-1], float(both[-1]))
    return out


def compensate(block: nn.Module, keeps: dict, original_weights: dict, sums: dict) -> list:
    """Add the removed inputs' mean contribution to the bias of every Linear of ``block``
    whose inputs were pruned (``keeps``: ``{(name, "in"): kept indices}``, what the rewrite
    recorded; ``original_weights``: ``{name: weight before pruning}``). Returns the names."""
    done = []
    for name, module in block.named_modules():
        kept = keeps.get((name, "in"))
        if not isinstance(module, nn.Linear) or kept is None or name not in sums:
            continue
        weight = original_weights[name].double()
        removed = np.setdiff1d(np.arange(weight.shape[1]), np.asarray(kept))
        s, n = sums[name]
        delta = weight[:, removed] @ (s[removed] / n)
        out = keeps.get((name, "out"))
        delta = delta if out is None else delta[torch.as_tensor(np.asarray(out))]
        with torch.no_grad():
            if module.bias is None:
                module.bias = nn.Parameter(delta.to(module.weight.dtype), requires_grad=False)
            else:
                module.bias.add_(delta.to(module.bias.dtype))
        done.append(name)
    return done


def bias_switches(config, build: Callable, biased: set) -> tuple:
    """``(config, names)``: a copy of ``config`` with the fewest boolean ``*bias`` switches
    turned on such that the block ``build(config)`` returns has a bias on every Linear in
    ``biased``, and the Linears that then have a bias and are not in ``biased`` (they need
    zeros). Raises when no combination of switches gives those biases."""
    switches = sorted(k for k, v in config.to_dict().items() if k.endswith("bias") and isinstance(v, bool) and not v)
    for size in range(len(switches) + 1):
        for chosen in itertools.combinations(switches, size):
            trial = copy.deepcopy(config)
            for key in chosen:
                setattr(trial, key, True)
            has = {n for n, m in build(trial).named_modules() if isinstance(m, nn.Linear) and m.bias is not None}
            if biased <= has:
                return trial, has - biased
    raise ArgumentError(f"bias compensation puts a bias on {sorted(biased)}, and no combination of "
                        f"{type(config).__name__}'s switches ({', '.join(switches) or 'none'}) builds those biases, "
                        f"so from_pretrained could not load them; prune without compensation "
                        f"(bias_compensation=False, --no-bias-compensation)")
