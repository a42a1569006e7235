"""Each criterion's definition, standalone and through the engine."""
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision

import criteria
import surgery
from criteria import FPGM, BNScale, GroupView, KMeansCriterion, L1Norm, L2Norm, Normalized, Random
from criteria.kmeans import kmeans_removal
from criteria.normalize import lamp
from surgery.metrics import count_params

GEN = torch.Generator().manual_seed(0)


def conv_with(weight: torch.Tensor) -> nn.Conv2d:
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], weight.shape[2], bias=False)
    with torch.no_grad():
        conv.weight.copy_(weight)
    return conv


@pytest.mark.parametrize("crit", [L1Norm(), L2Norm(), BNScale()], ids=repr)
def test_a_zeroed_channel_scores_lowest(crit):
    if isinstance(crit, BNScale):
        layer = nn.BatchNorm2d(6)
        with torch.no_grad():
            layer.weight.copy_(torch.rand(6, generator=GEN) + 0.1)
            layer.weight[3] = 0
    else:
        w = torch.randn(6, 3, 3, 3, generator=GEN)
        w[3] = 0
        layer = conv_with(w)
    scores = crit.score(layer)
    assert int(scores.argmin()) == 3 and float(scores[3]) == 0.0


def test_l1_is_sum_of_abs_and_scales_linearly():
    w = torch.randn(5, 4, 3, 3, generator=GEN, dtype=torch.float64)
    s = L1Norm().score(w)
    assert torch.allclose(s, w.abs().sum((1, 2, 3)).float())
    assert torch.allclose(L1Norm().score(w * 3.0), 3.0 * s)


def test_l2_is_the_euclidean_norm():
    w = torch.randn(5, 12, generator=GEN, dtype=torch.float64)
    assert torch.allclose(L2Norm().score(w), w.norm(dim=1).float())


def test_fpgm_ranks_the_filter_nearest_the_median_lowest_and_ignores_global_scale():
    w = torch.randn(7, 8, generator=GEN, dtype=torch.float64) * 3
    w[4] = w[[0, 1, 2, 3, 5, 6]].median(0).values  # the coordinate-wise median of the others
    s = FPGM().score(w)
    assert int(s.argmin()) == 4
    expected = torch.stack([(w - w[i]).norm(dim=1).sum() for i in range(7)])
    assert torch.allclose(s.double(), expected, rtol=1e-5)
    assert torch.equal(torch.argsort(FPGM().score(w * 0.01)), torch.argsort(s))


def test_group_reduction_and_include_options():
    a, b = torch.rand(4, 3, generator=GEN), torch.rand(4, 5, generator=GEN)
    c = torch.rand(4, 2, generator=GEN)
    view = GroupView(producers=[a, b], consumers=[c])
    l1a, l1b, l1c = a.abs().sum(1), b.abs().sum(1), c.abs().sum(1)
    assert torch.allclose(L1Norm().score(view), (l1a + l1b))
    assert torch.allclose(L1Norm(reduce="mean").score(view), (l1a + l1b) / 2)
    assert torch.allclose(L1Norm(reduce="max").score(view), torch.maximum(l1a, l1b))
    assert torch.allclose(L1Norm(include="all").score(view), l1a + l1b + l1c)
    with pytest.raises(ValueError, match="reduce must be one of"):
        L1Norm(reduce="median")


def test_lamp_max_is_one_and_matches_definition():
    s = torch.tensor([0.5, 4.0, 1.0, 2.5], dtype=torch.float64)
    out = lamp(s)
    assert float(out.max()) == 1.0 and int(out.argmax()) == 1
    # ascending: 0.5, 1.0, 2.5, 4.0 -> tails 8.0, 7.5, 6.5, 4.0
    assert torch.allclose(out, torch.tensor([0.5 / 8.0, 1.0, 1.0 / 7.5, 2.5 / 6.5], dtype=torch.float64))
    conv = conv_with(torch.randn(9, 2, 3, 3, generator=GEN))
    assert float(Normalized(L1Norm(), "lamp").score(conv).max()) == pytest.approx(1.0)


@pytest.mark.parametrize("method", ["mean", "max"])
def test_normalize_option_of_the_registry(method):
    conv = conv_with(torch.randn(6, 2, 3, 3, generator=GEN))
    s = criteria.get("l1", normalize=method).score(conv)
    raw = L1Norm().score(conv)
    assert torch.allclose(s, raw / (raw.mean() if method == "mean" else raw.max()))


def test_random_is_seeded():
    conv = nn.Conv2d(3, 10, 3)
    assert torch.equal(Random(seed=3).score(conv), Random(seed=3).score(conv))
    assert not torch.equal(Random(seed=3).score(conv), Random(seed=4).score(conv))


def test_kmeans_removal_quotas_round_robin_and_singletons():
    labels = np.array([0] * 6 + [1] * 3 + [2])          # sizes 6, 3 and a singleton
    scores = torch.arange(10, dtype=torch.float64)     # index = importance
    removed = kmeans_removal(labels, scores, 4).tolist()
    # quotas floor(4*6/9)=2 and floor(4*3/9)=1, then one round-robin removal from cluster 0
    assert removed == [0, 1, 2, 6]
    # 8 must go but the clusters can give 7 (6 - 1 and 3 - 1): those 7, then the base criterion's lowest
    over = kmeans_removal(labels, scores, 8).tolist()
    assert len(over) == 8 and set(kmeans_removal(labels, scores, 7).tolist()) < set(over)


def test_kmeans_never_fails_on_ordinary_layers_and_warns_once_when_it_falls_back():
    conv = conv_with(torch.randn(16, 3, 3, 3, generator=GEN))
    crit = KMeansCriterion(k=8)
    with pytest.warns(UserWarning, match="base criterion"):
        first = crit.select(conv, 14)
    assert len(set(first.tolist())) == 14
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        crit.select(conv, 14)  # said once


def test_kmeans_with_duplicated_filters_keeps_one_per_cluster():
    protos = torch.randn(4, 3, 3, 3, generator=GEN) * torch.tensor([1.0, 5.0, 10.0, 20.0]).view(4, 1, 1, 1)
    w = protos.repeat_interleave(3, dim=0)                # 12 filters: 4 prototypes x 3 copies
    conv = conv_with(w)
    removed = KMeansCriterion(k=4).select(conv, 8).tolist()
    kept = sorted(set(range(12)) - set(removed))
    assert sorted(k // 3 for k in kept) == [0, 1, 2, 3]   # exactly one copy of each prototype left
    # plain L1 would remove all copies of the two weakest prototypes instead
    assert sorted(L1Norm().select(conv, 8).tolist()) == list(range(8))


def test_kmeans_with_k1_equals_the_base_criterion():
    conv = conv_with(torch.randn(16, 4, 3, 3, generator=GEN))
    for n in (1, 5, 11):
        assert torch.equal(KMeansCriterion(k=1).select(conv, n), L1Norm().select(conv, n))


def test_kmeans_is_deterministic_and_chooses_k_automatically():
    conv = conv_with(torch.randn(20, 3, 3, 3, generator=GEN))
    a = KMeansCriterion(k="auto", pca=0.8, seed=1).select(conv, 8)
    b = KMeansCriterion(k="auto", pca=0.8, seed=1).select(conv, 8)
    assert torch.equal(a, b) and len(set(a.tolist())) == 8


def test_bn_l1_penalty_is_the_scaled_sum_of_gammas():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2))
    with torch.no_grad():
        m[1].weight.copy_(torch.tensor([1.0, -2.0, 0.0, 3.0]))
    assert float(criteria.bn_l1_penalty(m, 0.1).detach()) == pytest.approx(0.1 * (6.0 + 2.0))
    assert criteria.bn_l1_penalty(m).requires_grad


def test_criteria_can_be_used_standalone_to_pick_filters():
    conv = conv_with(torch.randn(10, 3, 3, 3, generator=GEN))
    idx = L1Norm().prune_indices(conv, 0.3)
    assert idx.tolist() == criteria.lowest(L1Norm().score(conv), 0.3).tolist() and len(idx) == 3


ALL = [n for n in criteria.available() if not criteria.get(n).needs_data]  # weight criteria


@pytest.mark.parametrize("name", ALL)
def test_every_criterion_prunes_a_torchvision_model(name):
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64, generator=GEN)
    crit = criteria.get(name, k=2) if name == "kmeans" else name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruned = surgery.prune(model, x, ratio=0.5, criterion=crit)
    assert count_params(pruned) < 0.5 * count_params(model)
    assert pruned(x).shape == (1, 10)


@pytest.mark.parametrize("name", ALL)
def test_every_criterion_scores_a_single_layer(name):
    layer = nn.BatchNorm2d(8) if name == "bn_scale" else nn.Conv2d(3, 8, 3)
    s = criteria.get(name).score(layer)
    assert s.shape == (8,) and torch.isfinite(s).all()
