"""The issue's torchvision models prune at 0.5 and pass the exactness oracle."""
import pytest
import torch
import torchvision

from support.oracle import prune_exact, prepared

MODELS = {
    "resnet18": {}, "resnet50": {}, "vgg16_bn": {}, "mobilenet_v2": {}, "mobilenet_v3_small": {},
    "densenet121": {}, "resnext50_32x4d": {}, "googlenet": {"aux_logits": False, "init_weights": False},
    "efficientnet_b0": {}, "regnet_y_400mf": {},
}


@pytest.mark.parametrize("name", list(MODELS))
def test_torchvision_model_prunes_exactly(name):
    torch.manual_seed(0)
    model = prepared(torchvision.models.get_model(name, weights=None, **MODELS[name]))
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    pruned = prune_exact(model, x, ratio=0.5)
    assert type(pruned) is type(model)
