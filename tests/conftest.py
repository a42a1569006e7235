import warnings

import pytest
import torch

from surgery import testing as oracle
from surgery.metrics import count_params

torch.set_num_threads(2)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: heavy tests, run with -m slow")


def prepared(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """float64, eval mode, random weights and BN statistics."""
    return oracle.randomize(model.double().eval(), seed)


def prune_quiet(model, x, **kw):
    import surgery
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return surgery.prune(model, x, **kw)


def assert_exact(model, x, ratio=0.5, tol=1e-10, **kw):
    """Prune, then check: params drop, output shapes equal, oracle holds and is not vacuous."""
    pruned = prune_quiet(model, x, ratio=ratio, **kw)
    assert count_params(pruned) < count_params(model)
    err = oracle.max_error(model, pruned, x)
    assert err < tol, f"pruned output differs from the zeroed original by {err:.3g}"
    return pruned


@pytest.fixture
def x32():
    return torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
