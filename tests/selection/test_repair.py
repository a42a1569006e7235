"""Issue 29: one-shot quality. Norm statistics re-estimated where pruning touched them, consumers
refitted by least squares, and a global ranking by importance per FLOP saved."""
import warnings

import pytest
import torch
import torch.nn as nn

import surgery
from models import create
from surgery.metrics import count_flops
from surgery.repair.reconstruct import _capture, consumers

G = torch.Generator().manual_seed(0)
X = torch.randn(64, 3, 32, 32, generator=G)
HELD_OUT = torch.randn(32, 3, 32, 32, generator=G)


def _trained_like(name="resnet20"):
    """Random weights with non-trivial BN statistics (as after training)."""
    torch.manual_seed(0)
    model = create(name)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(X)
    return model.eval()


def _batches(x, n=4):
    return [(chunk, None) for chunk in x.chunk(n)]


def test_recalibration_changes_only_the_touched_norm_layers():
    model = _trained_like()
    pruned = surgery.prune(model, X[:2], ratio=0.5, ignored_layers=["layer3"])
    touched = set(surgery.repair.recalibrate.touched_norms(pruned))
    norms = {n: m for n, m in pruned.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert touched and touched < set(norms)  # layer3's norms were not rebuilt
    before = {n: (m.running_mean.clone(), m.running_var.clone(), m.momentum) for n, m in norms.items()}
    names = surgery.recalibrate(pruned, _batches(X), max_batches=4)
    assert set(names) == touched and not pruned.training
    for n, m in norms.items():
        same = torch.equal(m.running_mean, before[n][0]) and torch.equal(m.running_var, before[n][1])
        assert same == (n not in touched), n
        assert m.momentum == before[n][2]
    again = surgery.recalibrate(pruned, _batches(X), max_batches=4, layers="all")
    assert set(again) == set(norms)


def test_reconstruction_lowers_the_consumers_error_on_held_out_data():
    model = _trained_like()
    plain = surgery.prune(model, X[:2], ratio=0.5)
    refit = surgery.prune(model, X[:2], ratio=0.5, reconstruct="least_squares", data=_batches(X), max_batches=4)
    assert refit.surgery_repairs and refit.surgery_verification.exact  # the rewrite itself was verified
    layers = consumers(model, refit)
    assert len(layers) > 5
    worse = 0
    for name in layers:
        target = _capture(model, model.get_submodule(name), (HELD_OUT, None), None, "output")
        errs = []
        for pruned in (plain, refit):
            out = _capture(pruned, pruned.get_submodule(name), (HELD_OUT, None), None, "output")
            keep = refit._surgery_keeps.get((name, "out"))
            ref = target if keep is None else target.index_select(1, torch.as_tensor(keep))
            errs.append(float(((out - ref) ** 2).sum() / (ref ** 2).sum()))
        worse += errs[1] > errs[0]
    assert worse == 0
    with torch.no_grad():
        y, a, b = model(HELD_OUT), plain(HELD_OUT), refit(HELD_OUT)
    assert float(((b - y) ** 2).mean()) < float(((a - y) ** 2).mean())


def test_normalize_flops_meets_the_target_with_another_allocation():
    model, x = create("resnet56"), torch.randn(1, 3, 32, 32)
    total = count_flops(model, x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = surgery.prune(model, x, target_flops=0.5, global_pruning=True)
        by_cost = surgery.prune(model, x, target_flops=0.5, global_pruning=True, normalize="flops")
    for pruned in (plain, by_cost):
        assert abs(count_flops(pruned, x) / total - 0.5) < 0.02
    widths = lambda m: [c.out_channels for c in m.modules() if isinstance(c, nn.Conv2d)]  # noqa: E731
    assert widths(plain) != widths(by_cost)
    # per FLOP saved, the cheap deep layers are kept more: more parameters for the same FLOPs
    assert sum(p.numel() for p in by_cost.parameters()) > sum(p.numel() for p in plain.parameters())


def test_repairs_need_data_and_say_so():
    with pytest.raises(ValueError, match="recalibrate=True / reconstruct='least_squares' need calibration"):
        surgery.prune(create("resnet20"), X[:2], ratio=0.5, recalibrate=True)


def test_normalize_latency_ranks_by_a_measured_per_layer_table():
    from surgery.select.cost import latency_by_module
    model, x = create("resnet20").eval(), torch.randn(1, 3, 32, 32)
    table = latency_by_module(model, x, repeats=2)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert table[""] > 0 and all(table[n] > 0 for n in convs) and sum(table[n] for n in convs) < table[""] * 1.5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruned = surgery.prune(model, x, target_flops=0.5, global_pruning=True, normalize="latency")
    assert abs(count_flops(pruned, x) / count_flops(model, x) - 0.5) < 0.02
