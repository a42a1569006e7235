"""Definitions of the data-driven criteria, calibration hygiene, streaming and ranks."""
import warnings

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import criteria
import surgery
from criteria import FLAP, ActivationNorm, APoZ, Coverage, HRank, OCAP, Taylor, TaylorWeight, Wanda
from surgery.criteria.data import InputCriterion
from surgery.metrics import count_params

GEN = torch.Generator().manual_seed(0)


class Small(nn.Module):
    """conv -> BN -> ReLU -> conv -> BN -> ReLU -> pool -> fc (float64)."""
    def __init__(self, dead: int | None = None, inplace: bool = False):
        super().__init__()
        self.inplace = inplace
        self.conv1, self.bn1 = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)
        surgery.testing.randomize(self.double(), seed=3)
        if dead is not None:  # channel `dead` of bn1 outputs exactly zero
            with torch.no_grad():
                self.bn1.weight[dead] = 0.0
                self.bn1.bias[dead] = 0.0
        self.eval()

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)), inplace=self.inplace)  # torchvision uses in-place ReLU
        x = F.relu(self.bn2(self.conv2(x)), inplace=self.inplace)
        return self.fc(x.mean((2, 3)))


def batches(n=4, size=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 4, (size,), generator=g))
            for _ in range(n)]


def one_batch(data):
    return [(torch.cat([x for x, _ in data]), torch.cat([y for _, y in data]))]


@pytest.mark.parametrize("inplace", [False, True])
def test_taylor_is_the_first_order_loss_change_of_gating_the_channel(inplace):
    model, data = Small(inplace=inplace), batches(2)
    scores = Taylor(normalize=False).calibrate(model, data).score(model.bn1)
    per_sample = []
    for x, y in one_batch(data):
        for i in range(len(y)):
            gate = torch.ones(6, dtype=torch.float64, requires_grad=True)
            h = model.bn1.register_forward_hook(lambda m, a, out: out * gate.view(1, -1, 1, 1))
            loss = F.cross_entropy(model(x[i:i + 1]), y[i:i + 1], reduction="sum")
            h.remove()
            (g,) = torch.autograd.grad(loss, gate)  # dL/dgate_c = sum over positions of a * dL/da
            per_sample.append(g.abs())
    assert torch.allclose(scores.double(), torch.stack(per_sample).mean(0), rtol=1e-5, atol=1e-12)
    normalized = Taylor().calibrate(model, data).score(model.bn1).double()
    assert torch.allclose(normalized.norm(), torch.tensor(1.0, dtype=torch.float64), atol=1e-6)


def test_a_dead_channel_scores_zero_for_taylor_and_lowest_for_coverage_apoz_wanda():
    model, data = Small(dead=2), batches(3)
    assert float(Taylor(normalize=False).calibrate(model, data).score(model.bn1)[2]) == 0.0
    for crit in (Coverage(), Coverage(metric="mean_absolute"), Coverage(metric="frequency"), APoZ()):
        s = crit.calibrate(model, data).score(model.bn1)
        assert int(s.argmin()) == 2 and float(s[2]) == 0.0
    w = Wanda().calibrate(model, data)
    view = criteria.GroupView(consumers=[model.conv2.weight.transpose(0, 1).reshape(6, -1)],
                              modules={"consumers": [model.conv2]}, index={"consumers": [np.arange(6)]})
    s = w.score(view)
    assert int(s.argmin()) == 2 and float(s[2]) == 0.0
    assert torch.allclose(w.score(model.conv2), s)  # standalone: the layer's input channels


def test_coverage_metrics_match_hand_computation():
    model, data = Small(), batches(3)
    acts = []
    h = model.bn2.register_forward_hook(lambda m, i, o: acts.append(F.relu(o.detach())))
    with torch.no_grad():
        for x, _ in data:
            model(x)
    h.remove()
    a = torch.cat(acts).transpose(0, 1).reshape(8, -1)  # [C, samples*positions]
    mean_abs = a.abs().mean(1)
    freq = (a > 0.1).double().mean(1)
    norm = mean_abs / mean_abs.max()
    for metric, want in [("mean_absolute", mean_abs), ("normalized_mean", norm), ("frequency", freq),
                         ("combined", (norm * freq).sqrt())]:
        got = Coverage(metric=metric, threshold=0.1).calibrate(model, data).score(model.bn2)
        assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-9), metric


def test_apoz_matches_hand_computation():
    model, data = Small(), batches(2)
    acts = []
    h = model.bn1.register_forward_hook(lambda m, i, o: acts.append(o.detach()))
    with torch.no_grad():
        for x, _ in data:
            model(x)
    h.remove()
    zeros = (F.relu(torch.cat(acts)) == 0).double().mean((0, 2, 3))
    assert torch.allclose(APoZ().calibrate(model, data).score(model.bn1).double(), 1 - zeros, atol=1e-6)


def test_ocap_union_grows_with_images_and_one_image_keeps_the_top_fraction():
    model = Small()
    data = batches(4, size=1)
    used = None
    for n in range(1, 5):
        s = OCAP(keep_fraction=0.5).calibrate(model, data[:n]).score(model.bn2)
        union = s > 0
        if used is not None:
            assert bool((union | used).eq(union).all())  # never shrinks
        used = union
        if n == 1:
            assert int(union.sum()) == 4  # exactly the top half of 8 channels
            acts = []
            h = model.bn2.register_forward_hook(lambda m, i, o: acts.append(o.detach()))
            with torch.no_grad():
                model(data[0][0])
            h.remove()
            v = F.leaky_relu(acts[0], 0.01).flatten(2).norm(dim=2)[0]
            assert set(torch.nonzero(union).flatten().tolist()) == set(v.topk(4).indices.tolist())


def test_ocap_frequency_mode_and_classes():
    model, data = Small(), batches(4)
    freq = OCAP(mode="frequency", threshold=0.75).calibrate(model, data)
    s = freq.score(model.bn2)
    assert torch.equal(freq.keep_mask(s), s >= 0.75) or int(freq.keep_mask(s).sum()) == 1
    only = OCAP(classes=[1]).calibrate(model, data)
    n_images = sum(int((y == 1).sum()) for _, y in data)
    assert float(only.stats_of(model.bn2)["images"]) == n_images


def test_hrank_of_zero_and_outer_product_maps():
    conv = nn.Conv2d(1, 2, 1, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([0.0, 1.0]).view(2, 1, 1, 1))
    u, v = torch.randn(6, dtype=torch.float64, generator=GEN), torch.randn(5, dtype=torch.float64, generator=GEN)
    x = torch.outer(u, v).view(1, 1, 6, 5)
    s = HRank(activation=None).calibrate(conv, [x]).score(conv)
    assert s.tolist() == [0.0, 1.0]


def test_taylor_weight_is_not_zero_with_batchnorm_in_eval_mode():
    model, data = Small(), batches(2)
    s = TaylorWeight(form="weight").calibrate(model, data).score(model.conv1)
    assert float(s.max()) > 1e-8
    # what calibration avoids: in train mode BN makes sum(w * dL/dw) of a conv filter ~0
    model.train()
    x, y = one_batch(data)[0]
    model.zero_grad()
    F.cross_entropy(model(x), y, reduction="sum").backward()
    train_mode = ((model.conv1.weight * model.conv1.weight.grad).flatten(1).sum(1) ** 2).detach()
    model.eval()
    assert float(train_mode.max()) < 1e-6 * float(s.max())
    assert TaylorWeight(form="bn").calibrate(model, data).score(model.bn1).shape == (6,)


def test_hooks_are_removed_and_state_restored_after_a_raise():
    model = Small()
    model.train()
    model.conv1.weight.requires_grad_(False)

    def boom(m, batch):
        raise RuntimeError("forward failed")

    for crit in (Taylor(), Coverage(), Wanda(), TaylorWeight()):
        with pytest.raises(RuntimeError, match="forward failed"):
            crit.calibrate(model, batches(1), forward_fn=boom)
        assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
        assert model.training and not model.conv1.weight.requires_grad and model.conv2.weight.requires_grad


@pytest.mark.parametrize("make", [lambda: Taylor(), lambda: Coverage(), lambda: APoZ(), lambda: Wanda(),
                                  lambda: HRank(), lambda: OCAP()], ids=["taylor", "coverage", "apoz", "wanda",
                                                                         "hrank", "ocap"])
def test_streaming_gives_the_same_scores_as_one_big_batch(make):
    model, data = Small(), batches(4)
    layer = model.conv2 if isinstance(make(), Wanda) else model.bn1
    a = make().calibrate(model, data).score(layer)
    b = make().calibrate(model, one_batch(data)).score(layer)
    assert torch.allclose(a, b, rtol=1e-6, atol=1e-9)


def test_state_does_not_grow_with_the_number_of_samples():
    model = Small()
    sizes = [Coverage().calibrate(model, batches(n)).state_bytes for n in (1, 8)]
    assert sizes[0] == sizes[1] > 0


def _rank_scores(rank, world, path, out):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=world)
    try:
        model, data = Small(), batches(4)
        mine = data[rank::world]
        res = {name: crit.calibrate(model, mine).score(model.bn1)
               for name, crit in (("taylor", Taylor()), ("coverage", Coverage()))}
        torch.save(res, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_match_one_process_on_all_data(tmp_path):
    out = str(tmp_path / "scores")
    mp.spawn(_rank_scores, args=(2, str(tmp_path / "rendezvous"), out), nprocs=2, join=True)
    model, data = Small(), batches(4)
    single = {"taylor": Taylor().calibrate(model, data).score(model.bn1),
              "coverage": Coverage().calibrate(model, data).score(model.bn1)}
    for rank in range(2):
        got = torch.load(f"{out}.{rank}", weights_only=True)
        for name in single:
            assert torch.allclose(got[name], single[name], rtol=1e-6), (rank, name)


DATA_NAMES = [n for n in criteria.available() if criteria.get(n).needs_data]


@pytest.mark.parametrize("name", DATA_NAMES)
def test_every_data_criterion_prunes_resnet18_and_scores_standalone(name):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5).eval()
    x = torch.randn(1, 3, 64, 64, generator=GEN)
    data = [(torch.randn(4, 3, 64, 64, generator=GEN), torch.randint(0, 5, (4,), generator=GEN)) for _ in range(2)]
    crit = criteria.get(name, k=2) if name == "ktaylor" else criteria.get(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruned = surgery.prune(model, x, ratio=0.5, criterion=crit, data=data)
    assert count_params(pruned) < count_params(model) and pruned(x).shape == (1, 5)
    layer = model.layer1[0].conv2 if isinstance(crit, InputCriterion) else model.layer1[0].bn1
    if name in ("fisher", "lrp"):
        layer = model.layer1[0].conv1
    s = criteria.get(name, k=2).calibrate(model, data[:1]).score(layer) if name == "ktaylor" else \
        criteria.get(name).calibrate(model, data[:1]).score(layer)
    assert s.shape == (64,) and torch.isfinite(s).all()


def test_data_criterion_without_data_says_so():
    with pytest.raises(ValueError, match="needs data: pass data="):
        surgery.prune(Small(), batches(1)[0][0], ratio=0.5, criterion="taylor")
    with pytest.raises(ValueError, match="uses weights only"):
        surgery.prune(Small(), batches(1)[0][0], ratio=0.5, criterion="l1", data=batches(1))


def test_keep_classes_keeps_rows_in_order():
    model = Small()
    w = model.fc.weight.detach().clone()
    surgery.keep_classes(model, [3, 0])
    assert torch.equal(model.fc.weight, w[[3, 0]]) and model.fc.out_features == 2


def test_lrp_conserves_relevance_layer_to_layer_without_bias():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.ReLU(),
                          nn.Conv2d(6, 8, 3, padding=1, bias=False), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 4, bias=False)).double().eval()
    data = batches(2)
    lrp = criteria.LRP(normalize=False).calibrate(model, data)
    with torch.no_grad():
        x, y = one_batch(data)[0]
        start = model(x).gather(1, y[:, None]).mean()
    totals = [float(lrp.score(model[i]).double().sum()) for i in (0, 2, 6)]
    assert totals == pytest.approx([float(start)] * 3, rel=1e-6)
    normalized = criteria.LRP().calibrate(model, data).score(model[2])
    assert float(normalized.abs().sum()) == pytest.approx(1.0)


def _inputs_of(layer, model, data):
    seen = []
    h = layer.register_forward_pre_hook(lambda m, i: seen.append(i[0].detach().double()))
    with torch.no_grad():
        for x, _ in data:
            model(x)
    h.remove()
    return torch.cat(seen).transpose(0, 1).reshape(seen[0].shape[1], -1)  # [C, samples*positions]


def test_activation_norm_and_flap_match_hand_computation():
    model, data = Small(), batches(3)
    x = _inputs_of(model.conv2, model, data)
    mean_square = ActivationNorm().calibrate(model, data).score(model.conv2).double()
    assert torch.allclose(mean_square, (x ** 2).mean(1), rtol=1e-5, atol=1e-9)
    column = model.conv2.weight.detach().double().transpose(0, 1).reshape(6, -1).pow(2).sum(1)
    flap = FLAP().calibrate(model, data).score(model.conv2).double()
    assert torch.allclose(flap, x.var(1) * column, rtol=1e-5, atol=1e-9)
    assert torch.allclose(ActivationNorm(statistic="fluctuation").calibrate(model, data).score(model.conv2), flap.float())
    dead = Small(dead=2)
    for crit in (ActivationNorm(), FLAP()):
        s = crit.calibrate(dead, data).score(dead.conv2)
        assert int(s.argmin()) == 2 and float(s[2]) == 0.0


def test_activation_norm_rejects_an_unknown_statistic():
    with pytest.raises(ValueError, match="statistic must be one of"):
        ActivationNorm(statistic="variance")


def test_map_ranks_equal_matrix_rank_on_zero_rows_low_rank_and_near_deficient_maps():
    """HRank's fast ranks must be torch.linalg.matrix_rank's exactly (same tolerance)."""
    from surgery.criteria.activations import map_ranks
    g = torch.Generator().manual_seed(0)
    for h, w in ((7, 7), (12, 9), (5, 16)):
        full = F.relu(torch.randn(40, h, w, generator=g))
        low = torch.randn(40, h, 2, generator=g) @ torch.randn(40, 2, w, generator=g)
        near = full + 0.0
        near[:, :, -1] = near[:, :, 0] + 1e-7 * torch.randn(40, h, generator=g)  # at the tolerance's edge
        cut = full.clone()
        cut[::2, : h // 2] = 0  # zero rows
        cut[1::3, :, ::2] = 0  # zero columns
        maps = torch.stack([full, low, near, cut, torch.zeros(40, h, w)])
        assert torch.equal(map_ranks(maps), torch.linalg.matrix_rank(maps))
