"""Fixtures only; shared helpers live in tests/support/ (``from support.oracle import prepared``)."""
import pytest
import torch

torch.set_num_threads(2)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: heavy tests, run with -m slow")


@pytest.fixture
def x32():
    return torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
