import warnings

import pytest
import torch

from surgery import testing as oracle

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
    """Prune, then the one exactness check (surgery.testing.assert_exact): parameters drop
    and the output equals the zeroed original."""
    pruned = prune_quiet(model, x, ratio=ratio, **kw)
    oracle.assert_exact(model, pruned, x, tol=tol)
    return pruned


@pytest.fixture
def x32():
    return torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
