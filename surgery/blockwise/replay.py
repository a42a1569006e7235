"""Replay a block-by-block plan (``surgery_plan.json``) on its checkpoint: the same heads and
channels go, with no scoring, and every block is verified again.

A :class:`surgery.blockwise.planned.Planned` criterion scores the channels the plan removed 0
and the others 1, so the selection, at the plan's ratios, picks exactly them; a block whose
selection differs from the plan (another checkpoint, other shapes) is refused.

Example:
    >>> plan = replay_checkpoint("llama-7b", "llama-7b-small-again", "llama-7b-small/surgery_plan.json")  # doctest: +SKIP
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from surgery.blockwise.prune import PLAN_FILE, prune_checkpoint
from surgery.core.errors import ArgumentError

__all__ = ["replay_checkpoint", "read_plan"]

FORMAT = "torch-surgery-blockwise"


def read_plan(plan: str | os.PathLike | dict) -> dict:
    """The plan as a dict (a path to ``surgery_plan.json``, its folder, or the dict itself)."""
    if isinstance(plan, dict):
        data = plan
    else:
        path = Path(plan)
        path = path / PLAN_FILE if path.is_dir() else path
        if not path.is_file():
            raise ArgumentError(f"no plan at {str(path)!r}: give the surgery_plan.json a pruning wrote")
        data = json.loads(path.read_text())
    if data.get("format") != FORMAT:
        raise ArgumentError(f"not a block-by-block plan (format {data.get('format')!r}, expected {FORMAT!r})")
    return data


def replay_checkpoint(checkpoint: str | os.PathLike, output: str | os.PathLike, plan: str | os.PathLike | dict, *,
                      calibration: str | os.PathLike | torch.Tensor | None = None, overwrite: bool = False,
                      progress: bool = True) -> dict:
    """Prune ``checkpoint`` into ``output`` exactly as ``plan`` says; returns the new plan.
    ``calibration`` (default: the plan's file, when it is still there) feeds verification and
    FLAP's bias compensation; without it random token ids are used to verify."""
    data = read_plan(plan)
    options, cal = data["options"], data["calibration"]
    if calibration is None and cal.get("file") not in (None, "tensor") and Path(cal["file"]).is_file():
        calibration = cal["file"]
    if calibration is None and options.get("bias_compensation"):
        raise ArgumentError("the plan compensates biases, which needs the calibration data: pass calibration=")
    planned = {b["block"]: b["removed"] for b in data["blocks"]}
    return prune_checkpoint(checkpoint, output, ratio=options["ratio"], head_ratio=options["head_ratio"],
                            criterion="l1", calibration=calibration, samples=cal["samples"], seq_len=cal["seq_len"],
                            feed=options["feed"], bias_compensation=options["bias_compensation"],
                            verify=options["verify"], seed=cal["seed"], overwrite=overwrite, progress=progress,
                            planned=planned)
