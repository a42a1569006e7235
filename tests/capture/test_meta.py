"""Issue 32: analysis without running. Shapes come from the meta device; real forwards run only
where values are needed: none with verify=False, exactly two (the masked reference and the
pruned model) with verification on."""
import resource
import warnings

import pytest
import torch
import torch.nn as nn
import torchvision

import surgery
from models import create
from surgery.capture.fx import propagate, symbolic_trace
from surgery.capture.meta import propagate_meta

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _count_real_forwards(model: nn.Module, layer: nn.Module) -> list:
    """A forward hook on ``layer`` (copied with the model, so the reference and the pruned copy
    count too) that counts the calls on real tensors."""
    calls = []

    def hook(module, args, output):
        if not (args[0].is_meta or type(args[0]).__name__ == "FakeTensor"):
            calls.append(args[0].shape)
    layer.register_forward_hook(hook)
    return calls


@pytest.mark.parametrize("verify, real_forwards", [(False, 0), (True, 2)])
def test_real_forwards_run_only_where_values_are_needed(verify, real_forwards):
    model = create("resnet20").eval()
    calls = _count_real_forwards(model, model.conv1)
    small = surgery.prune(model, X, ratio=0.5, verify=verify)
    assert len(calls) == real_forwards
    assert small.conv1.out_channels == 8 and small.surgery_verification.exact == verify


@pytest.mark.parametrize("name", ["convnext_tiny", "vit_b_32"])
def test_no_real_forward_without_verification_when_literals_are_patched(name):
    """ConvNeXt's LayerNorm2d and ViT's reshapes hold sizes that pruning patches: whether the
    original class still agrees with the patched graph is decided on meta shapes then."""
    kw = {"image_size": 64} if name.startswith("vit") else {}
    model = torchvision.models.get_model(name, **kw).eval()
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    calls = _count_real_forwards(model, first)
    x = torch.randn(1, 3, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = surgery.prune(model, x, ratio=0.5, verify=False)
    assert calls == [] and type(small) is type(model)
    assert small(x).shape == (1, 1000)


def test_the_pruned_class_is_traced_once_for_its_shape_checks(monkeypatch):
    """ConvNeXt's class forward is checked twice on meta (against the patched graph, then against
    the traced shapes): one fx trace of the pruned model serves both."""
    import surgery.capture.meta as meta
    model = torchvision.models.convnext_tiny().eval()
    traced = []
    monkeypatch.setattr(meta, "symbolic_trace", lambda m: traced.append(m) or symbolic_trace(m))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = surgery.prune(model, torch.randn(1, 3, 64, 64), ratio=0.5, verify=False)
    assert type(small) is type(model) and traced == [small]


def test_meta_shapes_equal_the_real_ones_on_every_node():
    for name in ("resnet20", "mobilenetv2_cifar", "vgg11_bn"):
        gm = symbolic_trace(create(name).eval())
        propagate(gm, X)
        real = {n.name: n.meta["surgery.value"] for n in gm.graph.nodes}
        propagate_meta(gm, X)
        assert {n.name: n.meta["surgery.value"] for n in gm.graph.nodes} == real, name


def test_a_graph_that_reads_values_falls_back_to_one_real_forward():
    class ReadsAValue(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            y = self.a(x)
            return self.b(y * y.abs().max().item())  # .item() has no meta value

    model = ReadsAValue().eval()
    calls = _count_real_forwards(model, model.a)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        surgery.prune(model, X, ratio=0.5, verify=False)
    assert len(calls) >= 1  # traced for real, since the graph needs the value


def test_a_model_built_on_the_meta_device_is_traced_without_allocating():
    tf = pytest.importorskip("transformers")
    config = tf.LlamaConfig(hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
                            num_key_value_heads=32, num_hidden_layers=2, vocab_size=32000,
                            max_position_embeddings=128)
    with torch.device("meta"):
        model = tf.LlamaForCausalLM(config).eval()
    assert sum(p.numel() for p in model.parameters()) > 6e8  # 2 blocks of LLaMA-2-7B's width, embeddings
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = surgery.trace(model, torch.zeros(1, 16, dtype=torch.long), tracer="export", attention="heads")
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert graph.prunable_groups and all(p.is_meta for p in model.parameters())
    assert grown_mb < 600, f"peak resident memory grew by {grown_mb:.0f} MB"  # the weights would be 2.6 GB


def test_the_shape_check_after_a_rewrite_compares_with_the_traced_shapes():
    import copy
    from surgery.capture.fx import VALUE_KEY
    from surgery.core.errors import VerificationError
    from surgery.rewrite.rebuild import rewrite
    from surgery.rewrite.verify import check_output_shapes
    model, x = torchvision.models.resnet18().eval(), torch.randn(1, 3, 64, 64)
    graph = surgery.trace(model, x)
    conv = next(n for n in graph.gm.graph.nodes if n.name == "layer1_0_conv1")
    pruned = rewrite(model, graph, graph.groups_of("layer1.0.conv1")[0].units[:32])
    check_output_shapes(graph, pruned, x)  # the pruned model's outputs keep their shapes
    assert conv.meta[VALUE_KEY].shape[1] == 64  # and the traced graph still holds the original's
    broken = copy.deepcopy(pruned)
    broken.fc = torch.nn.Linear(512, 7)
    with pytest.raises(VerificationError, match=r"\(1, 7\) differ from the original \(1, 1000\)"):
        check_output_shapes(graph, broken, x)
