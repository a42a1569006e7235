"""Verification in the model's own dtype: no copy of the weights, layer fingerprints that see
what the outputs hide, float64 where float32 is in doubt."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import surgery
import surgery.rewrite.reference as reference_mod
import surgery.rewrite.verify as verify_mod
from surgery import VerificationError
from surgery.rewrite.layer_check import fingerprint, layer_error
from surgery.testing import planted_bug, randomize


def _net(bias: float | None = -100.0) -> nn.Module:
    """With ``bias``, conv_b's output goes through a bias so negative that ReLU zeroes all of it:
    its errors never reach the model's output."""
    torch.manual_seed(0)
    net = randomize(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 1),
                                  nn.Flatten(), nn.Linear(2 * 6 * 6, 3)).eval())
    if bias is not None:
        with torch.no_grad():
            net[3].bias.fill_(bias)
    return net


X = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1))


def test_a_float32_model_is_checked_in_float32_on_itself_without_a_copy(monkeypatch):
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    monkeypatch.setattr(reference_mod, "masked_reference", lambda *a, **k: pytest.fail("copied the model"))
    pruned = surgery.prune(net, X, ratio=0.5)
    result = pruned.surgery_verification
    assert result.exact and result.dtype == "float32" and result.layers == 4
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())


def test_a_float64_model_is_checked_in_float64_on_itself(monkeypatch):
    net = _net().double()
    monkeypatch.setattr(reference_mod, "masked_reference", lambda *a, **k: pytest.fail("copied the model"))
    assert surgery.prune(net, X.double(), ratio=0.5).surgery_verification.dtype == "float64"


def test_layer_fingerprints_catch_a_wrong_column_that_the_outputs_hide(monkeypatch):
    net = _net()
    with planted_bug("3"):
        with pytest.raises(VerificationError, match="'3'") as err:
            surgery.prune(net, X, ratio=0.5, inplace=True)
        assert "float64" in str(err.value)  # float32 was in doubt, float64 decided
        assert net[3].in_channels == 8  # restored
        monkeypatch.setattr(reference_mod, "watched_layers", lambda *a, **k: {})
        assert surgery.prune(net, X, ratio=0.5).surgery_verification.exact  # the outputs alone: equal


def test_without_float64_to_fall_back_on_a_float32_mismatch_is_conclusive(monkeypatch):
    monkeypatch.setattr(reference_mod, "FLOAT64_LIMIT", 0)
    for net in (_net(), _net(bias=None)):  # seen by layer fingerprints only, and by both
        with planted_bug("3"), pytest.raises(VerificationError) as err:
            surgery.prune(net, X, ratio=0.5)
        assert "in float32" in str(err.value) and "'3'" in str(err.value)


def test_a_float32_difference_rounding_could_explain_is_checked_again_in_float64(monkeypatch):
    monkeypatch.setattr(reference_mod, "_CLEAR32", (0.0, 0.0))  # every float32 difference is in doubt
    calls = []
    run = reference_mod.reference_outputs
    monkeypatch.setattr(verify_mod, "reference_outputs", lambda *a, **k: calls.append(a[4]) or run(*a, **k))
    result = surgery.prune(_net(), X, ratio=0.5).surgery_verification
    assert result.exact and result.dtype == "float64" and calls == [None, torch.float64]


def test_verify_dtype_float64_checks_in_float64_from_the_start():
    result = surgery.prune(_net(), X, ratio=0.5, verify_dtype="float64").surgery_verification
    assert result.exact and result.dtype == "float64"
    with pytest.raises(ValueError, match="verify_dtype"):
        surgery.prune(_net(), X, ratio=0.5, verify_dtype="float16")


class _Counting(nn.Module):
    """Updates a buffer on every forward, in eval mode too."""

    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 2, 1)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls += 1
        return self.head(torch.relu(self.conv(x)))


def test_the_in_place_reference_puts_back_buffers_a_forward_updates():
    torch.manual_seed(0)
    net = _Counting().eval()
    surgery.prune(net, X, ratio=0.5)
    assert float(net.calls) == 0


def test_tied_and_functionally_read_layers_are_masked_on_copies_and_given_back():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.d, self.b = nn.Linear(6, 8), nn.Linear(6, 8), nn.Linear(8, 3)
            self.d.weight = self.a.weight  # tied: both hold the same tensor
            self.scale = nn.Parameter(torch.rand(8) + 0.5)  # a raw parameter that loses slices

        def forward(self, x):
            h = (torch.relu(self.a(x)) + torch.relu(self.d(x))) * self.scale
            return self.b(h) + nn.functional.linear(h, self.b.weight)  # b's weight is also read as such

    torch.manual_seed(0)
    net = Tied().eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    pruned = surgery.prune(net, torch.randn(4, 6), ratio=0.5)
    assert pruned.surgery_verification.exact and pruned.b.in_features == 4
    assert net.d.weight is net.a.weight and all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_fingerprints_of_equal_channels_are_equal_and_a_swap_changes_them():
    x = torch.randn(3, 5, 4, 4)
    y = x.clone()
    y[:, 1, 0, 0] += 1
    a, b = fingerprint(x, 1), fingerprint(y, 1)
    assert torch.equal(a[:, [0, 2, 3, 4]], b[:, [0, 2, 3, 4]]) and a[0, 1] != b[0, 1]
    assert layer_error({"l": [a]}, {"l": [a.clone()]}, 0.0) == (0.0, None, 1)
    error, first, calls = layer_error({"l": [a]}, {"l": [b]}, 1e-3)
    assert first == "l" and error > 1e-3 and calls == 1


class _QK(nn.Module):
    """q.k over pruned channels after BatchNorm (whose shift the masked reference keeps in the
    removed channels), a conv on the scores, then a softmax that cancels the difference."""

    def __init__(self):
        super().__init__()
        self.q, self.qn = nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8)
        self.k, self.kn = nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8)
        self.v, self.mix, self.head = nn.Conv2d(3, 4, 1), nn.Conv2d(1, 1, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        B, _, H, W = x.shape
        q, k = self.qn(self.q(x)).flatten(2), self.kn(self.k(x)).flatten(2)
        attn = self.mix((q.transpose(1, 2) @ k).unsqueeze(1)).squeeze(1).softmax(-1)
        return self.head((self.v(x).flatten(2) @ attn.transpose(1, 2)).reshape(B, 4, H, W))


def test_layers_after_channels_consumed_without_a_layer_are_not_compared(monkeypatch):
    torch.manual_seed(0)
    net = randomize(_QK().eval())
    x = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    with pytest.warns(UserWarning, match="literal sizes"):
        result = surgery.prune(net, x, ratio=0.5).surgery_verification
    assert result.exact and result.layers == 3  # q, k, v; not mix (after q @ k), not head
    monkeypatch.setattr(reference_mod, "consumed_without_layer", lambda *a, **k: set())
    with pytest.raises(VerificationError, match="'mix'"):  # the reference differs there by design
        surgery.prune(net, x, ratio=0.5)
