"""The masked reference is freed before the rewrite: it and the pruned model are never in
memory together (the peak of verifying a large block is one copy lower). A float64 check of a
float32 model uses a cast copy (``verify_dtype="float64"``); a check in the model's own dtype
uses no copy at all."""
from __future__ import annotations

import gc
import weakref

import pytest
import torch
import torch.nn as nn
import torchvision

import surgery
import surgery.rewrite.reference as reference_mod
import surgery.rewrite.verify as verify_mod
from surgery.testing import randomize


def _watch(monkeypatch) -> dict:
    """Record, when the rewrite starts, whether the reference built before it is still alive
    (every reference counts as large, so one a cycle holds is collected)."""
    seen: dict = {"refs": [], "alive_at_rewrite": []}
    build, rewrite = reference_mod.masked_reference, verify_mod.rewrite
    monkeypatch.setattr(reference_mod, "COLLECT_ABOVE", 0)

    def masked(*args, **kwargs):
        ref = build(*args, **kwargs)
        seen["refs"].append(weakref.ref(ref))
        return ref

    def rewriting(*args, **kwargs):
        seen["alive_at_rewrite"].append(any(r() is not None for r in seen["refs"]))
        return rewrite(*args, **kwargs)

    monkeypatch.setattr(reference_mod, "masked_reference", masked)
    monkeypatch.setattr(verify_mod, "rewrite", rewriting)
    return seen


@pytest.mark.parametrize("inplace", [False, True])
def test_the_reference_is_gone_before_the_pruned_model_is_built(monkeypatch, inplace):
    torch.manual_seed(0)
    model = randomize(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval())
    seen = _watch(monkeypatch)
    pruned = surgery.prune(model, torch.randn(2, 3, 8, 8), ratio=0.5, inplace=inplace, verify_dtype="float64")
    assert pruned.surgery_verification.exact and pruned.surgery_verification.dtype == "float64"
    assert seen["refs"] and seen["alive_at_rewrite"] == [False]


def test_a_decoder_block_reference_is_freed_too(monkeypatch):
    transformers = pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                      num_key_value_heads=2, num_hidden_layers=1, vocab_size=50)
    torch.manual_seed(0)
    block = LlamaDecoderLayer(config, 0).eval()
    hidden = torch.randn(2, 5, 32)
    position = torch.arange(5)[None].expand(2, 5)
    inputs = dict(hidden_states=hidden, position_embeddings=LlamaRotaryEmbedding(config)(hidden, position))
    seen = _watch(monkeypatch)
    pruned = surgery.prune(block, inputs, ratio=0.5, attention="heads", inplace=True, verify_dtype="float64")
    assert pruned.surgery_verification.exact
    assert seen["alive_at_rewrite"] == [False]


@pytest.mark.parametrize("verify", [False, True])
def test_an_in_place_prune_frees_the_replaced_layers_without_a_garbage_collection(verify):
    """torch.fx links a traced GraphModule and its graph both ways; the traces a prune makes are
    unlinked, so the layers an in-place rewrite replaced (the old weights) go when the call
    returns, not at Python's next full collection."""
    model = torchvision.models.resnet18().eval()
    old = weakref.ref(model.layer1[0].conv1)
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        surgery.prune(model, torch.randn(1, 3, 64, 64), ratio=0.5, verify=verify, inplace=True)
        assert model.layer1[0].conv1.out_channels == 32
        assert old() is None
    finally:
        if enabled:
            gc.enable()
