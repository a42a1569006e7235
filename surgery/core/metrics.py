"""Size and cost of a model: parameters and FLOPs (fvcore, warnings silenced)."""
from __future__ import annotations

import logging
import warnings
from typing import Any

import torch
import torch.nn as nn

from surgery.core.errors import ArgumentError
from surgery.core.inputs import as_inputs, evaluating

__all__ = ["count_params", "count_flops", "flops_by_module"]


def count_params(model: nn.Module) -> int:
    """Number of parameter elements.

    Example:
        >>> count_params(torch.nn.Linear(3, 2))
        8
    """
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, example_inputs: Any) -> int:
    """Multiply-accumulate count from fvcore (fvcore calls one MAC a "flop")."""
    return int(flops_by_module(model, example_inputs).get("", 0))


def flops_by_module(model: nn.Module, example_inputs: Any) -> dict:
    """fvcore FLOPs (multiply-accumulates) per module name ("" is the whole model), with
    fvcore's warnings about unsupported ops silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fvcore uses deprecated torch.jit APIs at import
        from fvcore.nn import FlopCountAnalysis
    args, kwargs = as_inputs(example_inputs)
    if kwargs:
        raise ArgumentError("FLOP counting needs positional example inputs (a tensor or a tuple)")
    loggers = [logging.getLogger(n) for n in ("fvcore", "fvcore.nn.jit_analysis", "iopath")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with evaluating(model), warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            analysis = FlopCountAnalysis(model, args)
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            return dict(analysis.by_module())
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
