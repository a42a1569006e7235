"""tracer='run': the forward as it ran on the example inputs, read like an exported graph."""
import pytest
import torch
import torch.nn as nn
import torchvision

import surgery
from support.oracle import prepared, prune_exact


class Branchy(nn.Module):
    """Branches on data, keeps a per-image loop and a top-k: what fx and export cannot hold."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.mid = nn.Conv2d(16, 16, 3, padding=1)
        self.alt = nn.Conv2d(16, 16, 1)  # runs only when the features sum below zero
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, images):
        outs = []
        for image in images:
            h = self.stem(image[None])
            h = self.mid(h) if float(h.sum()) > 0 else self.alt(h)
            scores = self.head(h).flatten(1)
            outs.append(scores.topk(5, dim=1).values)
        return torch.cat(outs)


def _images(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return ([torch.rand(3, 8, 8, generator=gen, dtype=torch.float64) for _ in range(2)],)


def test_auto_falls_back_to_a_recorded_run_and_prunes_exactly():
    model = prepared(Branchy())
    with pytest.warns(UserWarning, match="tracer='run'"):
        graph = surgery.trace(model, _images())
    assert graph.front == "run"
    small = prune_exact(model, _images())
    assert small.mid.out_channels < 16 and small.head.out_channels == 4  # the output stays


def test_layers_that_did_not_run_are_named():
    model = prepared(Branchy())
    with pytest.warns(UserWarning, match=r"did not run on the example inputs \(alt\)"):
        surgery.trace(model, _images(), tracer="run")


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_run_front_prunes_as_deep_as_fx(name):
    torch.manual_seed(0)
    model = prepared(torchvision.models.get_model(name, weights=None))
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    by_fx = prune_exact(model, x, tracer="fx")
    by_run = prune_exact(model, x, tracer="run")
    assert sum(p.numel() for p in by_run.parameters()) == sum(p.numel() for p in by_fx.parameters())


def test_a_model_that_fails_on_its_inputs_names_the_cause():
    model = nn.Sequential(nn.Conv2d(3, 4, 1))
    with pytest.raises(surgery.TraceError, match="must run on the example inputs"):
        surgery.trace(model, torch.randn(1, 5, 8, 8), tracer="run")


def test_an_unknown_tracer_names_run():
    with pytest.raises(surgery.ArgumentError, match="'run'"):
        surgery.trace(nn.Linear(2, 2), torch.randn(1, 2), tracer="dispatch")
