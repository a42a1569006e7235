"""Checks run on a rewritten model before it is handed back."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from surgery.groups import ChannelGraph
from surgery.inputs import run_eval
from surgery.rules.context import VALUE_KEY

__all__ = ["check_output_shapes"]


def check_output_shapes(graph: ChannelGraph, pruned: nn.Module, example_inputs: Any) -> None:
    """Run ``pruned`` on the example inputs; output shapes must equal the traced ones."""
    out = run_eval(pruned, example_inputs)
    expected = [n for n in graph.gm.graph.nodes if n.op == "output"][0]
    want = _shapes(expected.args[0], lambda n: getattr(n.meta.get(VALUE_KEY), "shape", None))
    got = _shapes(out, lambda t: t.shape if isinstance(t, torch.Tensor) else None)
    if want != got:
        raise RuntimeError(f"internal error: the pruned model's output shapes {got} differ from "
                           f"the original {want}; please report this model")


def _shapes(obj: Any, leaf) -> Any:
    if isinstance(obj, (list, tuple)) and not isinstance(obj, torch.Size):
        return [_shapes(o, leaf) for o in obj]
    if isinstance(obj, dict):
        return {k: _shapes(v, leaf) for k, v in obj.items()}
    v = leaf(obj)
    return tuple(v) if isinstance(v, torch.Size) else None
