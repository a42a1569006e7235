"""``surgery.metrics``: size and cost of a model (parameters, fvcore FLOPs per module).

Example:
    >>> import torch
    >>> from surgery.metrics import count_params
    >>> count_params(torch.nn.Linear(3, 2))
    8
"""
from surgery.core.metrics import count_flops, count_params, flops_by_module

__all__ = ["count_params", "count_flops", "flops_by_module"]
