"""``surgery.apply_plan``: replay a plan (JSON or :class:`surgery.Plan`) on a fresh model."""
from __future__ import annotations

import warnings
from typing import Any

import torch.nn as nn

from surgery.core.errors import ArgumentTypeError
from surgery.plan import record, touched_layers
from surgery.core.inputs import spec_inputs
from surgery.plan import Plan, check_architecture, units_from_plan
from surgery.groups.build import trace
from surgery.rewrite.verify import checked_rewrite

__all__ = ["apply_plan"]


def apply_plan(model: nn.Module, plan: Plan | dict | str, *, example_inputs: Any = None,
               inplace: bool = False, verify: bool = True) -> nn.Module:
    """Replay ``plan`` on ``model`` (a fresh instance of the architecture it was made for).

    Example:
        >>> import torch, surgery
        >>> from models import create
        >>> x = torch.randn(1, 3, 32, 32)
        >>> pruned = surgery.prune(create("resnet20"), x, ratio=0.5)
        >>> plan = surgery.Plan.from_json(pruned.surgery_history[-1])
        >>> again = surgery.apply_plan(create("resnet20"), plan)
        >>> again.conv1.out_channels
        8
    """
    return replay(model, plan, example_inputs=example_inputs, inplace=inplace, verify=verify)


def replay(model: nn.Module, plan: Plan | dict | str, *, example_inputs: Any = None, inplace: bool = False,
           verify: bool = True, new_object_ok: bool = False) -> nn.Module:
    """:func:`apply_plan`; with ``inplace`` and ``new_object_ok`` (the caller owns ``model``) the
    result may be a new GraphModule instead of :class:`surgery.rewrite.rebuild.InPlaceError`."""
    if isinstance(plan, str):
        plan = Plan.from_json(plan)
    elif isinstance(plan, dict):
        plan = Plan.from_dict(plan)
    elif not isinstance(plan, Plan):
        raise ArgumentTypeError(f"plan must be a surgery.Plan, its dict or its JSON text; got {type(plan).__name__}")
    check_architecture(plan, model)
    inputs = example_inputs if example_inputs is not None else spec_inputs(plan.inputs, _device(model))
    graph = trace(model, inputs, **plan.trace)  # the units the plan was made with (whole heads or dims)
    units = units_from_plan(graph, plan)
    with warnings.catch_warnings():  # advice on how to save does not apply to a model being loaded
        warnings.filterwarnings("ignore", message=".*save with surgery.save")
        new, _ = checked_rewrite(model, graph, units, inputs, inplace=inplace, verify_exact=verify,
                                 new_object_ok=new_object_ok)
    return record(new, model, plan, touched_layers(graph, units))


def _device(model: nn.Module):
    p = next(model.parameters(), None)
    return p.device if p is not None else None
