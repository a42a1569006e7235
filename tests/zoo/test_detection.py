"""Whole torchvision detectors through the run front end (tracer='run', or 'auto' falling back
to it): no ignored layers, a batch of two images of different sizes, outputs (boxes, scores,
labels, masks, keypoints) equal to the zeroed original in float64, the class stays."""
import pytest
import torch
import torch.nn as nn
import torchvision
from torchvision.models import detection
from torchvision.ops.misc import FrozenBatchNorm2d

import surgery
from support.oracle import prepared, prune_exact

SMALL = dict(min_size=96, max_size=128)  # the transform resizes to this: a CPU-sized run


def _images(seed: int = 0) -> tuple:
    gen = torch.Generator().manual_seed(seed)
    return ([torch.rand(3, 96, 128, generator=gen, dtype=torch.float64),
             torch.rand(3, 112, 96, generator=gen, dtype=torch.float64)],)


def _detector(name: str) -> nn.Module:
    keep_all = {"box_score_thresh": 0.0} if "rcnn" in name else {"score_thresh": 0.0}
    if name.startswith(("mask", "keypoint")):  # few RoIs reach the mask and keypoint heads: a CPU-sized run
        keep_all.update(box_detections_per_img=8, rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=50)
    torch.manual_seed(0)
    size = {} if name.startswith("ssd") else SMALL  # SSDlite resizes to its own 320x320
    return getattr(detection, name)(weights=None, weights_backbone=None, num_classes=5, **size, **keep_all)


def _kept(small: nn.Module, model: nn.Module) -> float:
    return sum(p.numel() for p in small.parameters()) / sum(p.numel() for p in model.parameters())


def _check(model: nn.Module, x: tuple, **kw) -> nn.Module:
    with torch.no_grad():
        outputs = model(*x)
    assert all(len(o["scores"]) > 0 for o in outputs)  # so the comparison compares detections
    small = prune_exact(model, x, tol=1e-9, **kw)
    assert type(small) is type(model)
    assert small.surgery_verification.exact
    return small


def test_faster_rcnn_prunes_whole_with_the_default_tracer():
    model = prepared(_detector("fasterrcnn_mobilenet_v3_large_320_fpn"))
    x = _images()
    with pytest.warns(UserWarning, match="tracer='run'"):
        graph = surgery.trace(model, x)
    assert graph.front == "run"
    small = _check(model, x)
    assert small.roi_heads.box_predictor.cls_score.out_features == 5  # model outputs stay
    assert small.backbone.fpn.layer_blocks[0][0].out_channels < 256  # FPN channels go
    assert _kept(small, model) < 0.3  # Torch-Pruning keeps 87.9% at the same ratio


@pytest.mark.parametrize("name", ["retinanet_resnet50_fpn", "fcos_resnet50_fpn", "ssdlite320_mobilenet_v3_large",
                                  "maskrcnn_resnet50_fpn", "keypointrcnn_resnet50_fpn"])
def test_every_torchvision_detector_prunes_whole_and_exactly(name):
    model = prepared(_detector(name))
    small = _check(model, _images(), tracer="run")
    assert _kept(small, model) < 0.5


def test_fcos_head_groupnorm_loses_whole_groups():
    """GroupNorm(32, C) normalises each group of C/32 channels on its own: whole groups go,
    so the head stays exact."""
    torch.manual_seed(0)
    backbone = detection.backbone_utils.resnet_fpn_backbone(backbone_name="resnet18", weights=None,
                                                            trainable_layers=5, returned_layers=[2, 3, 4],
                                                            extra_blocks=torchvision.ops.feature_pyramid_network
                                                            .LastLevelP6P7(256, 256))
    model = prepared(detection.FCOS(backbone, num_classes=5, score_thresh=0.0, **SMALL))
    small = _check(model, _images(1), tracer="run")
    norm = small.head.classification_head.conv[1]
    assert isinstance(norm, nn.GroupNorm) and norm.num_channels < 256
    assert norm.num_channels // norm.num_groups == 256 // 32


def _frozen_stats(model: nn.Module, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            for name in ("weight", "bias", "running_mean"):
                getattr(m, name).copy_(torch.randn(getattr(m, name).shape, generator=gen) * 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model


def _frozen_faster_rcnn() -> nn.Module:
    torch.manual_seed(0)
    backbone = detection.backbone_utils.resnet_fpn_backbone(backbone_name="resnet18", weights=None,
                                                            norm_layer=FrozenBatchNorm2d, trainable_layers=3)
    return detection.FasterRCNN(backbone, num_classes=5, box_score_thresh=0.0, **SMALL)


def test_a_frozen_batchnorm_backbone_prunes_runs_and_reloads(tmp_path):
    """Detectors built for pretrained weights use FrozenBatchNorm2d (buffers, no parameters)."""
    model = _frozen_stats(prepared(_frozen_faster_rcnn()))
    small = _check(model, _images(2), tracer="run")
    frozen = small.backbone.body.layer1[0].bn1
    assert isinstance(frozen, FrozenBatchNorm2d) and frozen.weight.shape[0] < 64
    surgery.save(small, tmp_path / "small.pt")
    back = surgery.load(tmp_path / "small.pt", model=_frozen_faster_rcnn().double(), example_inputs=_images(2))
    assert not back.training
    with torch.no_grad():
        ours, theirs = small(*_images(3)), back(*_images(3))  # other images run too
    assert len(ours) == 2 and all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(ours, theirs))


def test_a_segmenter_prunes_whole_through_the_run_front_end():
    torch.manual_seed(0)
    model = prepared(torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                               num_classes=5))
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    small = prune_exact(model, x, tol=1e-8, tracer="run")
    assert _kept(small, model) < 0.3
