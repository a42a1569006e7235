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


@pytest.mark.parametrize("name, most", [("deeplabv3_resnet50", 0.30), ("fcn_resnet50", 0.30),
                                        ("lraspp_mobilenet_v3_large", 0.30)])
def test_segmentation_models_prune_whole_and_deep(name, most):
    """ASPPPooling/LRASPP read the input's H and W (x.shape[-2:]) to upsample: that says nothing
    about channels, so the backbone's last stage stays prunable (DeepLabV3: 25.0% of the
    parameters kept at ratio 0.5, Torch-Pruning 25.0%)."""
    torch.manual_seed(0)
    model = getattr(torchvision.models.segmentation, name)(weights=None, weights_backbone=None, num_classes=5,
                                                           aux_loss=False)
    model = prepared(model)
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    small = prune_exact(model, x, tol=1e-8)
    kept = sum(p.numel() for p in small.parameters()) / sum(p.numel() for p in model.parameters())
    assert kept <= most, kept
