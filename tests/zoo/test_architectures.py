"""Every torchvision classification model prunes; one per family runs by default."""
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torchvision

import surgery
from support.oracle import prepared
from surgery import testing as oracle
from surgery.metrics import count_params

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))

KWARGS = {"googlenet": {"aux_logits": False, "init_weights": False},
          "inception_v3": {"aux_logits": False, "init_weights": False}}
SIZE = {"vit": 224, "swin": 224, "maxvit": 224, "inception_v3": 96}
FAMILY = ["alexnet", "convnext_tiny", "efficientnet_v2_s", "inception_v3", "maxvit_t", "mnasnet0_5",
          "regnet_x_400mf", "shufflenet_v2_x0_5", "squeezenet1_0", "squeezenet1_1", "swin_t", "swin_v2_t",
          "vgg11", "vit_b_32", "wide_resnet50_2", "mobilenet_v3_large", "resnet34"]
ALL = torchvision.models.list_models(module=torchvision.models)
HEAVY = {"regnet_y_128gf", "vit_h_14"}  # float64 oracle copies do not fit 24 GB


def size_of(name):
    return next((v for k, v in SIZE.items() if name.startswith(k)), 64)


def cross_channel_norm(model):
    return any(isinstance(m, nn.LayerNorm) or (isinstance(m, nn.GroupNorm) and m.num_groups == 1)
               for m in model.modules())


def check(name, ratio):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, **KWARGS.get(name, {})).eval()
    exact = not cross_channel_norm(model) and name not in HEAVY
    dtype = torch.float64 if exact else torch.float32
    if exact:
        model = prepared(model)
    size = size_of(name)
    x = torch.randn(2, 3, size, size, dtype=dtype, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruned = surgery.prune(model, x, ratio=ratio)
    assert count_params(pruned) < count_params(model)
    with torch.no_grad():
        assert pruned.eval()(x).shape == model(x).shape
    if exact:
        assert oracle.max_error(model, pruned, x) < 1e-9
    return model, pruned


@pytest.mark.parametrize("name", FAMILY)
def test_family_representative_prunes_at_half(name):
    check(name, 0.5)


@pytest.mark.parametrize("name", ["shufflenet_v2_x0_5", "squeezenet1_0", "convnext_tiny", "regnet_x_400mf"])
def test_family_representative_prunes_at_0_3(name):
    check(name, 0.3)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in ALL if n not in FAMILY])
@pytest.mark.parametrize("ratio", [0.3, 0.5])
def test_every_torchvision_model(name, ratio):
    check(name, ratio)


def test_squeezenet_classifier_conv_is_frozen_automatically():
    _, pruned = check("squeezenet1_1", 0.5)
    assert pruned.classifier[1].out_channels == 1000 and pruned.classifier[1].in_channels == 256


def test_vit_keeps_heads_valid_and_prunes_the_mlp_on_its_own():
    _, pruned = check("vit_b_32", 0.5)
    attn = pruned.get_submodule("encoder.layers.encoder_layer_0.self_attention")
    assert attn.embed_dim == 384 and attn.embed_dim % attn.num_heads == 0 and attn.head_dim == 32
    assert pruned.get_submodule("encoder.layers.encoder_layer_0.mlp.0").out_features == 1536
    assert type(pruned).__name__ == "VisionTransformer" and pruned.hidden_dim == 384  # reshape(n, self.hidden_dim, ...)


def test_swin_prunes_its_stream_through_windowed_attention():
    model, pruned = check("swin_t", 0.5)
    attn = pruned.features[1][0].attn
    assert attn.qkv.in_features == 48 and attn.qkv.out_features == 144 and attn.num_heads == 3
    assert count_params(pruned) <= 0.35 * count_params(model)


def test_convnext_keeps_its_class_and_layer_scale():
    model, pruned = check("convnext_tiny", 0.5)
    assert type(pruned) is type(model)
    block = pruned.features[1][0]
    assert block.layer_scale.shape[0] == block.block[0].out_channels == 48


def test_segmentation_models_keep_output_channels():
    import detection
    for name in ("lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large"):
        result = detection.prune_segmenter(name)
        assert result["shapes"]["out"] == (1, 21, 128, 128)
        assert result["params"][1] < result["params"][0]


def test_detection_example_prunes_a_whole_detector():
    import detection
    result = detection.prune_detector()
    assert result["params"][1] < 0.5 * result["params"][0] and result["keys"] == ["boxes", "labels", "scores"]
    assert result["exact"] and result["type"].__name__ == "FasterRCNN"


def test_custom_architecture_example_is_exact():
    import custom_architecture
    assert custom_architecture.main() < 1e-10
