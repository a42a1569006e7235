"""The exactness oracle as the tests use it: prepared float64 models, quiet pruning, and
``prune_exact`` (prune, then ``surgery.testing.assert_exact``)."""
import warnings

import torch

import surgery
from surgery import testing as oracle


def prepared(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """float64, eval mode, random weights and BN statistics."""
    return oracle.randomize(model.double().eval(), seed)


def prune_quiet(model, x, **kw):
    """``surgery.prune`` with its warnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return surgery.prune(model, x, **kw)


def prune_exact(model, x, ratio=0.5, tol=1e-10, **kw):
    """Prune, then the one exactness check (``surgery.testing.assert_exact``): parameters drop
    and the output equals the zeroed original. Returns the pruned model."""
    pruned = prune_quiet(model, x, ratio=ratio, **kw)
    oracle.assert_exact(model, pruned, x, tol=tol)
    return pruned
