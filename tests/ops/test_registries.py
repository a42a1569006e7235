"""Tests driven by the registries: every channel rule, every handler, every criterion.

A rule registered without a probe here, or a handler without a factory, fails
``test_every_*_is_probed`` so new entries cannot go untested.
"""
from __future__ import annotations

import importlib
import inspect
import warnings

import pytest
import torch
import torch.nn as nn

import criteria
import surgery
from surgery.extend import functions, layer_types, methods
from surgery.metrics import count_params
from surgery.testing import assert_exact, randomize

FUNCTION_RULES, METHOD_RULES = functions(), methods()
LAYERS = layer_types()  # the layer contract battery below runs over every registered layer type


class Probe(nn.Module):
    """conv -> BN -> op -> (conv) -> mean over positions -> linear: the op's rule decides
    how the first group's channels flow into the second conv and the classifier."""

    def __init__(self, op, c: int = 8):
        super().__init__()
        self.conv1, self.bn, self.op = nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), op
        self.w = nn.Parameter(torch.randn(c, c))  # weights for functional ops (op(y, w))
        self.takes_w = not isinstance(op, nn.Module) and len(inspect.signature(op).parameters) == 2
        with torch.no_grad():
            self.double()
            out = self.apply_op(self.bn(self.conv1(torch.randn(2, 3, 8, 8, dtype=torch.float64))))
        self.rank, width = out.dim(), out.shape[1]
        self.conv2, self.fc = nn.Conv2d(width, width, 1), nn.Linear(width, 5)

    def apply_op(self, y):
        return self.op(y, self.w) if self.takes_w else self.op(y)

    def forward(self, x):
        y = self.apply_op(self.bn(self.conv1(x)))
        if self.rank == 4:
            y = self.conv2(y)
        return self.fc(y.flatten(2).mean(2) if self.rank > 2 else y)


def exact_through(op, exact: bool = True) -> None:
    """Prune the probe at 0.5: exact against the zeroed original, or (norms over channels,
    inexact by design) smaller with the same output shape."""
    torch.manual_seed(0)
    model = randomize(Probe(op).double().eval())
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruned = surgery.prune(model, x, ratio=0.5)
    check = pruned.surgery_verification  # the engine's own check against its masked reference
    if exact:
        assert check.exact and check.max_error < 1e-10
        if not _rescales(op):  # the independent oracle matches weights by value
            assert_exact(model, pruned, x)
    else:
        assert not check.exact and check.unchecked
        assert count_params(pruned) < count_params(model) and pruned(x).shape == model(x).shape


def _rescales(op) -> bool:
    """MultiheadAttention scales q for its new head_dim, so its weights cannot be matched by value."""
    return isinstance(op, nn.Module) and any(isinstance(m, nn.MultiheadAttention) for m in op.modules())


NORMS_OVER_CHANNELS = {"layer_norm", nn.LayerNorm}  # statistics see pruned channels (GroupNorm loses whole groups: exact)


def _pos(y):
    return y.abs() + 0.5


# ---------------------------------------------------------------- function and method rules
# Explicit calls for rules whose function needs arguments; the rest are called as f(y).
FUNCTION_CALLS = {
    "sqrt": lambda f: lambda y: f(_pos(y)), "rsqrt": lambda f: lambda y: f(_pos(y)),
    "log": lambda f: lambda y: f(_pos(y)), "pow": lambda f: lambda y: f(_pos(y), 2),
    "dropout": lambda f: lambda y: f(y, 0.5, False), "dropout1d": lambda f: lambda y: f(y.flatten(2), 0.5, False),
    "dropout2d": lambda f: lambda y: f(y, 0.5, False), "dropout3d": lambda f: lambda y: f(y, 0.5, False),
    "alpha_dropout": lambda f: lambda y: f(y, 0.5, False),
    "max_pool1d": lambda f: lambda y: f(y.flatten(2), 2), "avg_pool1d": lambda f: lambda y: f(y.flatten(2), 2),
    "max_pool2d": lambda f: lambda y: f(y, 2), "avg_pool2d": lambda f: lambda y: f(y, 2),
    "max_pool3d": lambda f: lambda y: f(y.unsqueeze(2), (1, 2, 2)),
    "avg_pool3d": lambda f: lambda y: f(y.unsqueeze(2), (1, 2, 2)),
    "adaptive_avg_pool1d": lambda f: lambda y: f(y.flatten(2), 3), "adaptive_max_pool1d": lambda f: lambda y: f(y.flatten(2), 3),
    "adaptive_avg_pool2d": lambda f: lambda y: f(y, 3), "adaptive_max_pool2d": lambda f: lambda y: f(y, 3),
    "adaptive_avg_pool3d": lambda f: lambda y: f(y.unsqueeze(2), 1), "adaptive_max_pool3d": lambda f: lambda y: f(y.unsqueeze(2), 1),
    "interpolate": lambda f: lambda y: f(y, scale_factor=2.0), "pad": lambda f: lambda y: f(y, (1, 1, 2, 0)),
    "where": lambda f: lambda y: f(y > 0, y, -y), "masked_fill": lambda f: lambda y: f(y, y > 0, 0.0),
    "stochastic_depth": lambda f: lambda y: f(y, 0.5, "row", False),
    "reshape": lambda f: lambda y: f(y, (2, 8, 64)), "flatten": lambda f: lambda y: f(y, 2),
    "squeeze": lambda f: lambda y: f(y.unsqueeze(2), 2), "unsqueeze": lambda f: lambda y: f(y, 2).squeeze(2),
    "permute": lambda f: lambda y: f(y, (0, 1, 3, 2)), "transpose": lambda f: lambda y: f(y, 2, 3),
    "swapaxes": lambda f: lambda y: f(y, 2, 3), "movedim": lambda f: lambda y: f(y, 1, 3).movedim(3, 1),
    "t": lambda f: lambda y: f(y.mean((2, 3))).t(),
    "cat": lambda f: lambda y: f([y, y * 2], 1), "concat": lambda f: lambda y: f([y, y * 2], 1),
    "concatenate": lambda f: lambda y: f([y, y * 2], 1), "stack": lambda f: lambda y: f([y, y], 2).sum(2),
    "split": lambda f: lambda y: f(y, [3, 5], 1)[1], "chunk": lambda f: lambda y: f(y, 2, 1)[0], "unbind": lambda f: lambda y: f(y.unsqueeze(0), 0)[0],
    "scaled_dot_product_attention": lambda f: lambda y: f(y, y, y, scale=0.5), "shifted_window_attention": None,
    "_get_relative_position_bias": None, "_patch_merging_pad": None,
    "getitem": lambda f: lambda y: f(y, (slice(None), slice(2, 7))),
    "getattr": lambda f: lambda y: y.reshape(f(y, "shape")),
    "narrow": lambda f: lambda y: f(y, 1, 2, 5),
    "mean": lambda f: lambda y: f(y, (2, 3)), "sum": lambda f: lambda y: f(y, (2, 3)),
    "amax": lambda f: lambda y: f(y, (2, 3)), "amin": lambda f: lambda y: f(y, (2, 3)),
    "std": lambda f: lambda y: f(y, (2, 3)), "var": lambda f: lambda y: f(y, (2, 3)),
    "prod": lambda f: lambda y: f(_pos(y), 2), "logsumexp": lambda f: lambda y: f(y, (2, 3)),
    "max": lambda f: lambda y: f(y, 2)[0], "min": lambda f: lambda y: f(y, 2)[0],
    "norm": lambda f: lambda y: f(y, dim=(2, 3)), "nansum": lambda f: lambda y: f(y, (2, 3)),
    "nanmean": lambda f: lambda y: f(y, (2, 3)), "all": lambda f: lambda y: y * f(y > -9, 2, keepdim=True),
    "any": lambda f: lambda y: y * f(y > 0, 2, keepdim=True),
    "softmax": lambda f: lambda y: f(y, 2), "log_softmax": lambda f: lambda y: f(y, 2),
    "normalize": lambda f: lambda y: f(y, dim=2), "cumsum": lambda f: lambda y: f(y, 2),
    "bmm": lambda f: lambda y, w: f(y.flatten(2).transpose(1, 2), w.expand(2, 8, 8)).transpose(1, 2),
    "matmul": lambda f: lambda y, w: f(y.flatten(2).transpose(1, 2), w).transpose(1, 2),
    "einsum": lambda f: lambda y, w: f("nchw,cd->ndhw", y, w),
    "layer_norm": lambda f: lambda y: f(y.transpose(1, 3), (8,)).transpose(1, 3),
    "linear": lambda f: lambda y, w: f(y.mean((2, 3)), w),
    "conv1d": lambda f: lambda y, w: f(y.flatten(2), w.unsqueeze(2)),
    "conv2d": lambda f: lambda y, w: f(y, w[:, :, None, None]),
    "conv3d": lambda f: lambda y, w: f(y.unsqueeze(2), w[:, :, None, None, None]).squeeze(2),
    "batch_norm": lambda f: lambda y, w: f(y, w[0], w[1].abs() + 1, training=False),
    "group_norm": lambda f: lambda y, w: f(y, 4, w[0], w[1]),  # four groups of two: whole groups go
    "iadd": lambda f: lambda y: f(y * 1, y), "isub": lambda f: lambda y: f(y * 1, y * 0.5),
    "imul": lambda f: lambda y: f(y * 1, y), "itruediv": lambda f: lambda y: f(y * 1, _pos(y)),
    "truediv": lambda f: lambda y: f(y, _pos(y)), "floordiv": lambda f: lambda y: f(y, 0.5),
    "div": lambda f: lambda y: f(y, _pos(y)), "true_divide": lambda f: lambda y: f(y, _pos(y)),
    "add": lambda f: lambda y: f(y, y * 2), "sub": lambda f: lambda y: f(y, y * 0.5),
    "subtract": lambda f: lambda y: f(y, y * 0.5), "mul": lambda f: lambda y: f(y, y),
    "multiply": lambda f: lambda y: f(y, y), "maximum": lambda f: lambda y: f(y, y * 0.5),
    "minimum": lambda f: lambda y: f(y, y * 0.5), "clamp": lambda f: lambda y: f(y, -0.5, 0.5),
    "clip": lambda f: lambda y: f(y, -0.5, 0.5),
}
METHOD_CALLS = {
    "sqrt": lambda y: _pos(y).sqrt(), "rsqrt": lambda y: _pos(y).rsqrt(), "log": lambda y: _pos(y).log(),
    "pow": lambda y: _pos(y).pow(2), "clamp": lambda y: y.clamp(-0.5, 0.5), "clamp_": lambda y: (y * 1).clamp_(-0.5, 0.5),
    "clip": lambda y: y.clip(-0.5, 0.5), "clamp_min": lambda y: y.clamp_min(0.1), "clamp_max": lambda y: y.clamp_max(0.1),
    "to": lambda y: y.to(torch.float64), "type": lambda y: y.type(torch.float64), "type_as": lambda y: y.type_as(y),
    "cpu": lambda y: y.cpu(), "cuda": None, "requires_grad_": lambda y: (y * 1).requires_grad_(False),
    "half": None, "bfloat16": None, "float": lambda y: y.float().double(),
    "add": lambda y: y.add(y * 2), "add_": lambda y: (y * 1).add_(y), "sub": lambda y: y.sub(y * 0.5),
    "sub_": lambda y: (y * 1).sub_(y * 0.5), "mul": lambda y: y.mul(y), "mul_": lambda y: (y * 1).mul_(y),
    "div": lambda y: y.div(_pos(y)), "div_": lambda y: (y * 1).div_(_pos(y)), "true_divide": lambda y: y.true_divide(_pos(y)),
    "maximum": lambda y: y.maximum(y * 0.5), "minimum": lambda y: y.minimum(y * 0.5),
    "masked_fill": lambda y: y.masked_fill(y > 0, 0.0), "masked_fill_": lambda y: (y * 1).masked_fill_(y > 0, 0.0),
    "where": lambda y: y.where(y > 0, -y),
    "view": lambda y: y.view(2, 8, 64), "reshape": lambda y: y.reshape(2, 8, 64), "flatten": lambda y: y.flatten(2),
    "squeeze": lambda y: y.unsqueeze(2).squeeze(2), "squeeze_": lambda y: y.unsqueeze(2).squeeze_(2),
    "unsqueeze": lambda y: y.unsqueeze(2).squeeze(2), "unsqueeze_": lambda y: (y * 1).unsqueeze_(2).squeeze(2),
    "unflatten": lambda y: y.flatten(2).unflatten(2, (8, 8)), "permute": lambda y: y.permute(0, 1, 3, 2),
    "transpose": lambda y: y.transpose(2, 3), "swapaxes": lambda y: y.swapaxes(2, 3),
    "t": lambda y: y.mean((2, 3)).t().t(), "movedim": lambda y: y.movedim(1, 3).movedim(3, 1),
    "contiguous": lambda y: y.contiguous(), "expand_as": lambda y: y.mean((2, 3), keepdim=True).expand_as(y),
    "reshape_as": lambda y: y.flatten(2).reshape_as(y), "view_as": lambda y: y.flatten(2).view_as(y),
    "expand": lambda y: y.mean((2, 3), keepdim=True).expand(2, 8, 8, 8), "repeat": lambda y: y.repeat(1, 1, 2, 1),
    "split": lambda y: y.split([3, 5], 1)[1], "chunk": lambda y: y.chunk(2, 1)[0], "narrow": lambda y: y.narrow(1, 2, 5),
    "size": lambda y: y.reshape(y.size(0), y.size(1), -1), "dim": lambda y: y * y.dim(),
    "numel": lambda y: y / y.numel(), "nelement": lambda y: y / y.nelement(),
    "mean": lambda y: y.mean((2, 3)), "sum": lambda y: y.sum((2, 3)), "amax": lambda y: y.amax((2, 3)),
    "amin": lambda y: y.amin((2, 3)), "std": lambda y: y.std((2, 3)), "var": lambda y: y.var((2, 3)),
    "prod": lambda y: _pos(y).prod(2), "logsumexp": lambda y: y.logsumexp((2, 3)), "max": lambda y: y.max(2)[0],
    "min": lambda y: y.min(2)[0], "norm": lambda y: y.norm(dim=(2, 3)), "nansum": lambda y: y.nansum((2, 3)),
    "nanmean": lambda y: y.nanmean((2, 3)), "all": lambda y: y * (y > -9).all(2, keepdim=True),
    "any": lambda y: y * (y > 0).any(2, keepdim=True), "softmax": lambda y: y.softmax(2),
    "log_softmax": lambda y: y.log_softmax(2), "cumsum": lambda y: y.cumsum(2),
    "matmul": lambda y, w: y.flatten(2).transpose(1, 2).matmul(w).transpose(1, 2),
    "bmm": lambda y, w: y.flatten(2).transpose(1, 2).bmm(w.expand(2, 8, 8)).transpose(1, 2),
    "hardtanh": None, "hardtanh_": None, "rsub": None,  # no Tensor.rsub method to call
}


def _fn_name(fn) -> str:
    return getattr(fn, "__name__", str(fn))


def _function_call(fn):
    make = FUNCTION_CALLS.get(_fn_name(fn))
    return make(fn) if make is not None else (lambda y: fn(y))


def _method_call(name: str):
    if name in METHOD_CALLS:
        return METHOD_CALLS[name]
    return lambda y: getattr(y, name)()


def _resolve(key):
    """Rules registered by qualified name ("pkg.module.function") resolve to the function."""
    if not isinstance(key, str):
        return key
    module, _, name = key.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _key_module(key) -> str:
    return key if isinstance(key, str) else getattr(key, "__module__", "") or ""


# aten overloads (the torch.export front end) reuse these rules; they are exercised through
# exported models in tests/zoo/test_transformers.py, not by the per-function probes below; Swin's
# windowed-attention functions (and our window_attention) take weights and windows, and are
# checked in tests/ops/test_heads.py
@pytest.mark.parametrize("fn", [_resolve(k) for k in FUNCTION_RULES if not isinstance(k, torch._ops.OpOverload)
                                and "swin_transformer" not in str(k) and "ops.windowed" not in _key_module(k)],
                         ids=lambda f: f"{getattr(f, '__module__', '')}.{_fn_name(f)}")
def test_every_function_rule_is_exact(fn):
    exact_through(_function_call(fn), exact=_fn_name(fn) not in NORMS_OVER_CHANNELS)


@pytest.mark.parametrize("name", sorted(METHOD_RULES))
def test_every_method_rule_is_exact(name):
    call = _method_call(name)
    if name == "unbind":
        pytest.skip("unbind over a non-channel dim is checked by the timm attention tests (tests/ops/test_heads.py)")
    if call is None:
        pytest.skip(f".{name}() changes the device or precision, or is no Tensor method: not checkable here")
    exact_through(call)


# ---------------------------------------------------------------- module rules
class _Seq(nn.Module):  # a module applied to the probe tensor (a module attribute so fx calls it)
    def __init__(self, m, view):
        super().__init__()
        self.m, self.view = m, view

    def forward(self, y):
        if self.view == "1d":
            return self.m(y.flatten(2))
        if self.view == "3d":
            return self.m(y.unsqueeze(2)).squeeze(2)
        if self.view == "last":
            return self.m(y.transpose(1, 3)).transpose(1, 3)
        if self.view == "tokens":
            t = y.flatten(2).transpose(1, 2)
            return self.m(t, t, t, need_weights=False)[0].transpose(1, 2)
        return self.m(y)


MODULE_FACTORIES = {  # types whose constructor needs arguments, or whose input is not [N, C, H, W]
    nn.Threshold: lambda: nn.Threshold(0.1, 0.0), nn.MaxPool1d: lambda: (nn.MaxPool1d(2), "1d"),
    nn.MaxPool2d: lambda: nn.MaxPool2d(2), nn.MaxPool3d: lambda: (nn.MaxPool3d((1, 2, 2)), "3d"),
    nn.AvgPool1d: lambda: (nn.AvgPool1d(2), "1d"), nn.AvgPool2d: lambda: nn.AvgPool2d(2),
    nn.AvgPool3d: lambda: (nn.AvgPool3d((1, 2, 2)), "3d"),
    nn.AdaptiveAvgPool1d: lambda: (nn.AdaptiveAvgPool1d(3), "1d"), nn.AdaptiveAvgPool2d: lambda: nn.AdaptiveAvgPool2d(3),
    nn.AdaptiveAvgPool3d: lambda: (nn.AdaptiveAvgPool3d(1), "3d"),
    nn.AdaptiveMaxPool1d: lambda: (nn.AdaptiveMaxPool1d(3), "1d"), nn.AdaptiveMaxPool2d: lambda: nn.AdaptiveMaxPool2d(3),
    nn.AdaptiveMaxPool3d: lambda: (nn.AdaptiveMaxPool3d(1), "3d"),
    nn.LPPool1d: lambda: (nn.LPPool1d(2, 2), "1d"), nn.LPPool2d: lambda: nn.LPPool2d(2, 2),
    nn.Upsample: lambda: nn.Upsample(scale_factor=2.0), nn.UpsamplingNearest2d: lambda: nn.UpsamplingNearest2d(scale_factor=2),
    nn.UpsamplingBilinear2d: lambda: nn.UpsamplingBilinear2d(scale_factor=2),
    nn.ZeroPad2d: lambda: nn.ZeroPad2d(1), nn.ConstantPad1d: lambda: (nn.ConstantPad1d(1, 0.5), "1d"),
    nn.ConstantPad2d: lambda: nn.ConstantPad2d(1, 0.5), nn.ConstantPad3d: lambda: (nn.ConstantPad3d(1, 0.5), "3d"),
    nn.ReflectionPad1d: lambda: (nn.ReflectionPad1d(1), "1d"), nn.ReflectionPad2d: lambda: nn.ReflectionPad2d(1),
    nn.ReplicationPad1d: lambda: (nn.ReplicationPad1d(1), "1d"), nn.ReplicationPad2d: lambda: nn.ReplicationPad2d(1),
    nn.ReplicationPad3d: lambda: (nn.ReplicationPad3d(1), "3d"),
    nn.Softmax: lambda: nn.Softmax(2), nn.LogSoftmax: lambda: nn.LogSoftmax(2), nn.Softmin: lambda: nn.Softmin(2),
    nn.Dropout1d: lambda: (nn.Dropout1d(), "1d"), nn.Dropout3d: lambda: (nn.Dropout3d(), "3d"),
    nn.Conv1d: lambda: (nn.Conv1d(8, 6, 3), "1d"), nn.Conv2d: lambda: nn.Conv2d(8, 6, 3, groups=2),
    nn.Conv3d: lambda: (nn.Conv3d(8, 8, 1, groups=8), "3d"),
    nn.ConvTranspose1d: lambda: (nn.ConvTranspose1d(8, 6, 3), "1d"),
    nn.ConvTranspose2d: lambda: nn.ConvTranspose2d(8, 6, 3, groups=2),
    nn.ConvTranspose3d: lambda: (nn.ConvTranspose3d(8, 6, 1), "3d"),
    nn.BatchNorm1d: lambda: (nn.BatchNorm1d(8), "1d"), nn.BatchNorm2d: lambda: nn.BatchNorm2d(8),
    nn.BatchNorm3d: lambda: (nn.BatchNorm3d(8), "3d"), nn.SyncBatchNorm: None,
    nn.InstanceNorm1d: lambda: (nn.InstanceNorm1d(8, affine=True), "1d"),
    nn.InstanceNorm2d: lambda: nn.InstanceNorm2d(8, affine=True),
    nn.InstanceNorm3d: lambda: (nn.InstanceNorm3d(8, affine=True), "3d"),
    nn.GroupNorm: lambda: nn.GroupNorm(4, 8), nn.LayerNorm: lambda: (nn.LayerNorm(8), "last"),
    nn.PReLU: lambda: nn.PReLU(8), nn.Linear: lambda: (nn.Linear(8, 6), "last"),
    nn.Flatten: lambda: nn.Flatten(2), nn.Unflatten: lambda: nn.Unflatten(3, (4, 2)),
    nn.ChannelShuffle: lambda: nn.ChannelShuffle(2), nn.Embedding: None,
    nn.MultiheadAttention: lambda: (nn.MultiheadAttention(8, 2), "tokens"),
}
SKIPPED_MODULES = {nn.SyncBatchNorm: "needs a process group to run",
                   nn.Embedding: "reads token ids, not a feature map (tests/ops/test_op_rules.py::test_embedding_is_exact)"}


def _module_op(cls):
    make = MODULE_FACTORIES.get(cls, cls)
    made = make()
    module, view = made if isinstance(made, tuple) else (made, "")
    return _Seq(module, view)


def _skip_named(key) -> None:
    """Registrations by qualified name (transformers' Conv1D) need their package; they are
    exercised by tests/zoo/test_transformers.py (GPT-2), exact against the masked original."""
    if isinstance(key, str):
        pytest.importorskip(key.rpartition(".")[0])
        pytest.skip(f"{key} is checked through GPT-2 in tests/zoo/test_transformers.py")


# ---------------------------------------------------------------- the layer contract battery
@pytest.mark.parametrize("key", list(LAYERS), ids=lambda c: getattr(c, "__name__", c))
def test_layer_contract(key):
    """Every registered layer type, by being registered: its rule carries channels exactly
    (pruned, rebuilt by its handler and checked against the masked original), and its handler
    keeps dtype, grad mode and train/eval state and selects the kept slices."""
    _skip_named(key)
    if key in SKIPPED_MODULES:
        pytest.skip(SKIPPED_MODULES[key])
    entry = LAYERS[key]
    if entry.rule is not None:
        exact_through(_module_op(key), exact=key not in NORMS_OVER_CHANNELS)
    if entry.handler is not None:
        _handler_contract(key, entry.handler)


def test_every_handler_type_has_a_rule_and_a_probe():
    missing = [getattr(k, "__name__", k) for k, v in LAYERS.items() if v.handler is not None and v.rule is None]
    assert not missing, f"handlers without a channel rule (so never reached by the probes): {missing}"


def _handler_contract(cls, handler) -> None:
    module = _module_op(cls).m.double().train(False)
    for p in module.parameters():
        p.requires_grad_(False)
    for role in ("out", "in"):
        try:
            rows = handler.slices(module, role)
        except (NotImplementedError, KeyError):
            continue
        n = rows.shape[0]
        keep = list(range(0, n, 2))
        try:
            new = handler.prune(module, keep if role == "in" else None, keep if role == "out" else None)
        except ValueError as err:  # grouped layouts may refuse an unbalanced choice, by name
            assert type(module).__name__ in str(err) or "group" in str(err)
            continue
        assert new is not module and not new.training
        assert all(p.dtype == torch.float64 and not p.requires_grad for p in new.parameters())
        kept_rows = handler.slices(new, role)
        assert kept_rows.shape[0] == len(keep)
        if kept_rows.shape[1] == rows.shape[1]:  # the other side kept whole: the rows are the selected ones
            assert torch.equal(kept_rows, rows[keep])


# ---------------------------------------------------------------- criteria
def _data():
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 3, 16, 16, generator=g), torch.randint(0, 10, (4,), generator=g)) for _ in range(2)]


def _criterion(name: str):
    return criteria.get(name, k=2) if name == "kmeans" else criteria.get(name)


def _kwargs(crit) -> dict:
    return {"data": _data()} if crit.needs_data else {}


@pytest.mark.parametrize("name", criteria.available())
def test_prune_pruner_and_surgeon_agree(name):
    """The three entry points select through one path: prune and Pruner.step give the same
    model, and a Surgeon pruning any one layer of the original picks the same channels as
    prune did for that layer's group."""
    from models import create
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    base = create("resnet20").eval()
    crit = _criterion(name)
    a = surgery.prune(base, x, ratio=0.5, criterion=crit, **_kwargs(crit))
    crit = _criterion(name)
    b = surgery.Pruner(base, x, ratio=0.5, criterion=crit, **_kwargs(crit)).step()
    assert _same(a, b)
    chosen = {e.layer: e.indices for e in surgery.Plan.from_json(a.surgery_history[-1]).entries}
    for layer in list(chosen)[:3]:
        surgeon = surgery.Surgeon(__import__("copy").deepcopy(base), x)
        crit = _criterion(name)
        surgeon.prune_layer(layer, 0.5, crit, **_kwargs(crit))
        entries = surgery.Plan.from_json(surgeon.model.surgery_history[-1]).entries
        assert [(e.layer, e.indices) for e in entries] == [(layer, chosen[layer])]


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name", criteria.available())
def test_wrappers_pass_every_flag_through(name):
    crit = _criterion(name)
    flags = ("needs_data", "needs_labels", "needs_gradients", "decides_count")
    for wrapped in (criteria.Normalized(crit, "mean"), criteria.get(crit, normalize="max"),
                    criteria.KMeansCriterion(k=2, base=crit)):
        assert [getattr(wrapped, f) for f in flags] == [getattr(crit, f) for f in flags]


def test_ocap_with_normalize_prunes_through_the_engine():
    from models import create
    x = torch.randn(1, 3, 16, 16)
    model = create("resnet20").eval()
    small = surgery.prune(model, x, ratio=0.5, criterion=criteria.get("ocap", normalize="mean"), data=_data())
    assert count_params(small) <= count_params(model)


class _Duplicates(criteria.L1Norm):
    def select(self, target, n):
        return torch.zeros(n, dtype=torch.long)  # the same channel n times


@pytest.mark.parametrize("entry", ["prune", "pruner", "surgeon"])
def test_every_entry_point_rejects_a_bad_selection(entry):
    from models import create
    x = torch.randn(1, 3, 16, 16)
    model = create("resnet20").eval()
    with pytest.raises(ValueError, match="distinct"):
        if entry == "prune":
            surgery.prune(model, x, ratio=0.5, criterion=_Duplicates())
        elif entry == "pruner":
            surgery.Pruner(model, x, ratio=0.5, criterion=_Duplicates()).step()
        else:
            surgery.Surgeon(model, x).prune_layer("conv1", 0.5, _Duplicates())
    assert model.conv1.out_channels == 16


def test_get_wraps_a_criterion_object_when_asked_to_normalize():
    wrapped = criteria.get(criteria.L1Norm(), normalize="max")
    assert isinstance(wrapped, criteria.Normalized) and float(wrapped.score(nn.Conv2d(3, 4, 3)).max()) == 1.0
    with pytest.raises(TypeError, match="Criterion"):
        criteria.get(object())


def test_registries_warn_on_overwrite():
    from surgery.extend import registered_layer, registered_method
    from surgery.ops.linear import LinearHandler
    original = criteria.get("l1")
    try:
        with pytest.warns(UserWarning, match="replacing"):
            criteria.register("l1")(type("Other", (criteria.L1Norm,), {}))
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            criteria.register("l1")(type(original))
    with criteria.registry.registered("l1", type("Temp", (criteria.L1Norm,), {})):
        assert type(criteria.get("l1")).__name__ == "Temp"
    assert type(criteria.get("l1")) is type(original)
    old = methods()["relu"]
    with pytest.warns(UserWarning, match="replacing the rule"), registered_method("relu", rule=lambda ctx, node: None):
        pass
    assert methods()["relu"] is old
    old = layer_types()[nn.Linear]
    with pytest.warns(UserWarning, match="replacing the handler"), \
            registered_layer(nn.Linear, handler=type("H", (LinearHandler,), {})()):
        pass
    assert layer_types()[nn.Linear] == old


def test_register_layer_checks_its_keys_and_parts():
    from surgery.extend import register_layer
    with pytest.raises(TypeError, match="nn.Module subclasses or qualified class names"):
        register_layer("not a class name", rule=lambda ctx, node: None)
    with pytest.raises(TypeError, match="nn.Module subclasses"):
        register_layer(int, rule=lambda ctx, node: None)
    with pytest.raises(TypeError, match="rule=..., handler=... or both"):
        register_layer(nn.Linear)
    with pytest.raises(TypeError, match="Handler"):
        register_layer(nn.Linear, handler=object())


def test_one_lookup_rule_only_for_the_registered_forward_handler_for_subclasses():
    from surgery.extend import handler_for, lookup_layer, rule_for

    class OwnForward(nn.LayerNorm):
        def forward(self, x):
            return super().forward(x) * 2

    class SameForward(nn.LayerNorm):
        pass

    entry, own = lookup_layer(OwnForward(4))
    assert entry is layer_types()[nn.LayerNorm] and not own
    assert rule_for(OwnForward(4)) is None and handler_for(OwnForward(4)) is entry.handler
    assert rule_for(SameForward(4)) is entry.rule
