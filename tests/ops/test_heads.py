"""attention="heads": whole heads go (q/k/v rows, output-projection columns, per-head bias
tables) and head-count attributes follow; exact with the stream kept."""
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.models.swin_transformer import PatchMerging, PatchMergingV2, shifted_window_attention

import surgery
from surgery.ops.windowed import window_attention
from support.oracle import prepared
from surgery.testing import max_error


def prune(model, x, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return surgery.prune(model, x, attention="heads", **kw)


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "deit_tiny_patch16_224"])
def test_timm_vision_transformers_lose_whole_heads_exactly(name):
    timm = pytest.importorskip("timm")
    model = prepared(timm.create_model(name, depth=2, img_size=32, patch_size=8, num_classes=5))
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    small = prune(model, x, ratio=0.5, ignored_layers=[model.patch_embed])
    attn = small.blocks[0].attn
    assert type(small) is type(model) and attn.num_heads == 2 and attn.head_dim == 64
    assert attn.qkv.out_features == 3 * 2 * 64 and attn.proj.in_features == 128
    assert max_error(model, small, x) < 1e-10


@pytest.mark.parametrize("name", ["swin_t", "swin_v2_t"])
def test_torchvision_swin_loses_whole_heads_exactly_with_every_stream_kept(name):
    """The attention width becomes its own: heads go (q/k/v rows, projection columns, bias
    table columns, logit scales) while the patch embedding and patch merging keep the streams."""
    model = prepared(getattr(torchvision.models, name)())
    x = torch.randn(1, 3, 224, 224, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    stems = [model.features[0]] + [m.reduction for m in model.modules() if isinstance(m, (PatchMerging, PatchMergingV2))]
    small = prune(model, x, ratio=0.5, ignored_layers=stems)
    assert small.get_submodule("features.1.0.attn.qkv").weight.shape == (3 * 64, 96)  # 3 -> 2 heads of 32
    attn = small.get_submodule("features.5.0.attn")  # 12 -> 6 heads: per-head tables and scales follow
    if name == "swin_t":
        assert attn.relative_position_bias_table.shape[1] == 6
    else:
        assert attn.logit_scale.shape[0] == 6 and small.get_submodule("features.5.0.attn.cpb_mlp.2").weight.shape[0] == 6
    calls = [n for n in small.graph.nodes if getattr(n.target, "__name__", "") == "window_attention"]
    assert len(calls) == 12 and calls[0].args[5] == 2
    assert max_error(model, small, x) < 1e-10


def test_swin_heads_and_stream_go_together_and_a_pruned_swin_traces_again():
    model = torchvision.models.swin_t().eval()
    x = torch.randn(1, 3, 224, 224)
    small = prune(model, x, ratio=0.5)
    attn = small.get_submodule("features.5.0.attn")
    assert attn.relative_position_bias_table.shape[1] == 6 and attn.qkv.weight.shape[0] == 3 * 6 * 32
    with torch.no_grad():
        assert small(x).shape == (1, 1000)
    again = surgery.trace(small, x, attention="heads")  # window_attention stays one call with its rule
    assert sum(g.heads and g.prunable for g in again.groups) == 12


@pytest.mark.parametrize("shift, v2", [([0, 0], False), ([2, 3], False), ([2, 2], True)])
def test_window_attention_equals_torchvision_when_the_widths_agree(shift, v2):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 13, 10, 12, generator=g, dtype=torch.float64)  # padded to windows of 4 x 6
    qkv = torch.randn(36, 12, generator=g, dtype=torch.float64)
    proj = torch.randn(12, 12, generator=g, dtype=torch.float64)
    bias = torch.randn(1, 3, 24, 24, generator=g, dtype=torch.float64)
    kw = dict(qkv_bias=torch.randn(36, generator=g, dtype=torch.float64), proj_bias=None, training=False,
              logit_scale=torch.randn(3, 1, 1, generator=g, dtype=torch.float64) if v2 else None)
    a = shifted_window_attention(x, qkv, proj, bias, [4, 6], 3, shift, **kw)
    assert torch.equal(a, window_attention(x, qkv, proj, bias, [4, 6], 3, shift, **kw))


def test_torchvision_vit_multihead_attention_says_why_its_heads_stay():
    model = torchvision.models.vit_b_32()
    model.encoder.layers = model.encoder.layers[:1]
    graph = surgery.trace(model, torch.randn(1, 3, 224, 224), attention="heads", ignored_layers=[model.conv_proj])
    heads = [g for g in graph.groups if g.heads]
    assert heads and "MultiheadAttention's embed_dim is both" in heads[0].reason


class GQA(nn.Module):
    """Grouped-query attention written by hand: 4 query heads read 2 key/value heads."""

    def __init__(self, dim=32, heads=4, kv=2):
        super().__init__()
        self.heads, self.kv, self.d = heads, kv, dim // heads
        self.q, self.k = nn.Linear(dim, dim), nn.Linear(dim, kv * self.d)
        self.v, self.o = nn.Linear(dim, kv * self.d), nn.Linear(dim, dim)
        self.fc = nn.Linear(dim, 10)

    def forward(self, x):
        b, n, _ = x.shape
        q = self.q(x).view(b, n, -1, self.d).transpose(1, 2)
        k = self.k(x).view(b, n, -1, self.d).transpose(1, 2)
        v = self.v(x).view(b, n, -1, self.d).transpose(1, 2)
        rep = self.heads // self.kv  # the group size stays; the number of groups may shrink
        k = k[:, :, None].expand(-1, -1, rep, -1, -1).reshape(b, -1, n, self.d)
        v = v[:, :, None].expand(-1, -1, rep, -1, -1).reshape(b, -1, n, self.d)
        y = F.scaled_dot_product_attention(q, k, v, scale=self.d ** -0.5)
        return self.fc(x + self.o(y.transpose(1, 2).reshape(b, n, -1)))


def test_grouped_query_heads_go_with_their_key_value_head():
    model = prepared(GQA())
    x = torch.randn(2, 5, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    graph = surgery.trace(model, x, attention="heads")
    group = [g for g in graph.groups if g.heads][0]
    assert group.size == 2  # units: a key/value head with its two query heads
    small = prune(model, x, ratio=0.5)
    assert small.k.out_features == 8 and small.q.out_features == 16
    assert max_error(model, small, x) < 1e-10


def test_head_ratio_applies_to_head_groups_only():
    timm = pytest.importorskip("timm")
    model = prepared(timm.create_model("vit_tiny_patch16_224", depth=1, img_size=32, patch_size=8, num_classes=5,
                                       num_heads=4))
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    small = prune(model, x, ratio=0.25, head_ratio=0.5, ignored_layers=[model.patch_embed])
    assert small.blocks[0].attn.num_heads == 2 and small.blocks[0].mlp.fc1.out_features == 576


class MQA(nn.Module):
    """Multi-query attention through ``enable_gqa``: one key/value head serves 4 query heads."""

    def __init__(self, dim=32, heads=4):
        super().__init__()
        self.d = dim // heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, self.d), nn.Linear(dim, self.d)
        self.o, self.fc = nn.Linear(dim, dim), nn.Linear(dim, 10)

    def forward(self, x):
        b, n, _ = x.shape
        q = self.q(x).view(b, n, -1, self.d).transpose(1, 2)
        k = self.k(x).view(b, n, 1, self.d).transpose(1, 2)
        v = self.v(x).view(b, n, 1, self.d).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, scale=self.d ** -0.5, enable_gqa=True)
        return self.fc(x + self.o(y.transpose(1, 2).reshape(b, n, -1)))


def test_multi_query_attention_loses_query_heads_and_keeps_its_one_key_value_head():
    model = prepared(MQA())
    x = torch.randn(2, 5, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    small = prune(model, x, ratio=0.5)
    assert small.q.out_features == 16 and small.k.out_features == small.v.out_features == 8
    assert max_error(model, small, x) < 1e-10


class GQALiteral(GQA):
    """GQA whose views name the head counts (literals in the exported graph): ``heads`` 4 -> 2
    and ``kv_heads`` 2 -> 1 must both follow, each from its value before the rewrite."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.kv_heads = self.kv

    def forward(self, x):
        b, n, _ = x.shape
        q = self.q(x).view(b, n, self.heads, self.d).transpose(1, 2)
        k = self.k(x).view(b, n, self.kv_heads, self.d).transpose(1, 2)
        v = self.v(x).view(b, n, self.kv_heads, self.d).transpose(1, 2)
        rep = self.heads // self.kv_heads
        k = k[:, :, None].expand(b, self.kv_heads, rep, n, self.d).reshape(b, self.heads, n, self.d)
        v = v[:, :, None].expand(b, self.kv_heads, rep, n, self.d).reshape(b, self.heads, n, self.d)
        y = F.scaled_dot_product_attention(q, k, v, scale=self.d ** -0.5)
        return self.fc(x + self.o(y.transpose(1, 2).reshape(b, n, -1)))


@pytest.mark.parametrize("tracer", ["fx", "export"])
def test_grouped_query_heads_with_literal_head_counts(tracer):
    model = prepared(GQALiteral(kv=2))
    x = torch.randn(2, 5, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    small = prune(model, x, ratio=0.5, tracer=tracer)
    assert small.k.out_features == 8 and small.q.out_features == 16
    assert max_error(model, small, x) < 1e-10
    if tracer == "export":  # the user's class runs its own forward
        assert (small.heads, small.kv_heads, small.d) == (2, 1, 8)
