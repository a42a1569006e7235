"""The model's stack of repeated blocks (transformer layers), for ``skip_blocks``.

The stack is found by structure, not by class name: the longest ``nn.ModuleList`` or
``nn.Sequential`` whose children are all instances of one class with parameters (LLaMA's
``model.layers``, GPT-2's ``transformer.h``, BERT's ``encoder.layer``, timm ViT's ``blocks``).

Example:
    >>> import torch.nn as nn
    >>> class Net(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.stem = nn.Linear(4, 8)
    ...         self.layers = nn.ModuleList(nn.Linear(8, 8) for _ in range(6))
    >>> name, _ = repeated_blocks(Net())
    >>> name
    'layers'
    >>> skipped_blocks(Net(), (1, 2))
    ['layers.0', 'layers.4', 'layers.5']
"""
from __future__ import annotations

import torch.nn as nn

from surgery.core.errors import ArgumentError

__all__ = ["repeated_blocks", "skipped_blocks"]


def _stacks(model: nn.Module) -> list:
    found = []
    for name, m in model.named_modules():
        if not isinstance(m, (nn.ModuleList, nn.Sequential)) or len(m) < 2:
            continue
        kids = list(m.children())
        if len(kids) == len(m) and len({type(k) for k in kids}) == 1 and any(True for _ in kids[0].parameters()):
            found.append((name, kids))
    return found


def repeated_blocks(model: nn.Module) -> tuple[str, list]:
    """``(name, blocks)`` of the longest stack of same-class blocks. Raises ValueError when
    there is none or when several stacks are equally long (say which with ``ratios``)."""
    stacks = _stacks(model)
    if not stacks:
        raise ArgumentError(f"{type(model).__name__} has no stack of repeated blocks (an nn.ModuleList or "
                         f"nn.Sequential of one block class), so skip_blocks has nothing to count; use "
                         f"ratios={{'layer name': 0.0}} to keep chosen layers whole")
    longest = max(len(b) for _, b in stacks)
    best = [(n, b) for n, b in stacks if len(b) == longest]
    if len(best) > 1:
        raise ArgumentError(f"skip_blocks is ambiguous on {type(model).__name__}: {', '.join(repr(n) for n, _ in best)} "
                         f"are all stacks of {longest} blocks; use ratios={{'{best[0][0]}.0': 0.0, ...}} to keep "
                         f"chosen blocks whole")
    return best[0]


def skipped_blocks(model: nn.Module, skip: tuple) -> list:
    """Names of the first ``skip[0]`` and last ``skip[1]`` blocks of the model's stack."""
    first, last = skip
    if first == last == 0:
        return []
    name, blocks = repeated_blocks(model)
    if first + last >= len(blocks):
        raise ArgumentError(f"skip_blocks=({first}, {last}) would skip all {len(blocks)} blocks of {name!r}; "
                         f"leave at least one to prune")
    picked = list(range(first)) + list(range(len(blocks) - last, len(blocks)))
    prefix = f"{name}." if name else ""
    return [f"{prefix}{i}" for i in picked]
