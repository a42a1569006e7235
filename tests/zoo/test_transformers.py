"""Hugging Face transformers through the torch.export front end: whole heads (GQA respected)
and MLP width go, exactly, the config follows, and causal LMs still generate."""
import sys
import warnings
from pathlib import Path

import pytest
import torch

import surgery
from surgery.rewrite.model_config import _describes
from surgery.testing import max_error

pytest.importorskip("transformers")
from support.hf_models import build

DESCRIBED = {"llama", "qwen2", "mistral", "phi3", "vit"}
FAMILIES = ["llama", "qwen2", "mistral", "phi3", "gpt2", "opt", "bert", "vit"]


def pruned(family, **kw):
    model, x, causal = build(family)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = surgery.prune(model, x, ratio=0.5, attention="heads",
                              ignored_layers=[model.get_input_embeddings()], **kw)
    return model, small, x, causal


@pytest.mark.parametrize("family", FAMILIES)
def test_heads_and_mlp_go_exactly_and_the_config_follows(family):
    model, small, x, causal = pruned(family)
    assert type(small) is type(model)
    assert sum(p.numel() for p in small.parameters()) < 0.7 * sum(p.numel() for p in model.parameters())
    assert max_error(model, small, x) < 1e-10
    heads = getattr(small.config, "num_attention_heads", None) or small.config.n_head
    assert heads == 2  # 4 heads, half removed
    if family in DESCRIBED:
        rebuilt = type(model)(small.config).double().eval()
        rebuilt.load_state_dict(small.state_dict())  # the config describes the pruned shapes
    else:  # these derive the head size as hidden_size / heads: a warning says to use surgery.save
        assert not _describes(small)
    if causal:
        out = small.generate(x["input_ids"][:1], max_new_tokens=3, do_sample=False)
        assert out.shape == (1, 11)


def test_grouped_query_attention_keeps_each_key_value_head_with_its_query_heads():
    model, small, x, _ = pruned("llama")
    attn = small.model.layers[0].self_attn
    assert attn.q_proj.out_features == 2 * attn.head_dim and attn.k_proj.out_features == attn.head_dim
    assert small.config.num_key_value_heads == 1 and small.config.num_attention_heads == 2
    assert small.config.intermediate_size == 48


def test_save_pretrained_round_trip(tmp_path):
    model, small, x, _ = pruned("qwen2")
    small.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path, torch_dtype=torch.float64).eval()
    with torch.no_grad():
        assert torch.equal(loaded(**x).logits, small(**x).logits)


def test_a_config_that_cannot_describe_the_pruned_model_says_so():
    model, x, _ = build("bert")
    with pytest.warns(UserWarning, match="save with surgery.save"):
        surgery.prune(model, x, ratio=0.5, attention="heads", ignored_layers=[model.get_input_embeddings()])


def test_head_ratio_is_separate_from_the_mlp_ratio():
    model, x, _ = build("bert")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = surgery.prune(model, x, ratio=0.25, head_ratio=0.5, attention="heads",
                              ignored_layers=[model.get_input_embeddings()])
    assert small.config.num_attention_heads == 2 and small.config.intermediate_size == 72


def test_auto_tracer_falls_back_to_export_and_fx_alone_refuses():
    model, x, _ = build("llama")
    with pytest.raises(surgery.TraceError):
        surgery.trace(model, x, tracer="fx")
    assert surgery.trace(model, x).front == "export"


@pytest.mark.parametrize("family", ["llama", "bert", "gpt2"])
def test_dims_mode_keeps_head_counts_and_is_exact(family):
    """Every head loses the same head dims; through rotary embeddings (LLaMA) the dims go in
    rotation pairs and the frequency buffer follows."""
    model, x, _ = build(family)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = surgery.prune(model, x, ratio=0.5, ignored_layers=[model.get_input_embeddings()])
    heads = getattr(small.config, "num_attention_heads", None) or small.config.n_head
    assert heads == 4 and max_error(model, small, x) < 1e-10
    assert sum(p.numel() for p in small.parameters()) < 0.7 * sum(p.numel() for p in model.parameters())


def test_bad_options_name_the_fix():
    model, x, _ = build("bert")
    with pytest.raises(ValueError, match="attention must be"):
        surgery.prune(model, x, ratio=0.5, attention="head")
    with pytest.raises(ValueError, match="tracer must be"):
        surgery.prune(model, x, ratio=0.5, tracer="jit")


def test_llm_heads_example():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
    import llm_heads
    result = llm_heads.main()
    assert result["heads"] == (8, 4) and result["kv_heads"] == (4, 2) and result["mlp"] == (256, 128)
    assert result["error"] < 1e-10 and result["reloaded_equal"] and result["generated"] == (1, 12)


@pytest.mark.parametrize("criterion", ["activation_norm", "flap", "taylor"])
def test_data_criteria_on_token_batches_remove_the_dead_key_value_head(criterion):
    """Key/value head 0 outputs zeros (its v rows are zero), so query heads 0 and 1, which read
    it, contribute nothing: every data criterion must take that group first. Batches are dicts
    of keyword arguments with labels (the model's own loss drives Taylor)."""
    model, x, _ = build("llama")
    d = model.config.hidden_size // model.config.num_attention_heads
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.v_proj.weight[:d] = 0.0
    g = torch.Generator().manual_seed(2)
    data = [{"input_ids": (ids := torch.randint(1, 128, (2, 8), generator=g)), "labels": ids} for _ in range(3)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = surgery.prune(model, x, ratio=0.5, attention="heads", criterion=criterion, data=data,
                              ignored_layers=[model.get_input_embeddings()])
    for old, new in zip(model.model.layers, small.model.layers):
        assert torch.equal(new.self_attn.k_proj.weight, old.self_attn.k_proj.weight[d:])
        assert torch.equal(new.self_attn.q_proj.weight, old.self_attn.q_proj.weight[2 * d:])
    assert max_error(model, small, x) < 1e-10


def test_skip_blocks_keeps_the_first_and_last_layers_whole():
    model, x, _ = build("llama", layers=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = surgery.prune(model, x, ratio=0.5, attention="heads", skip_blocks=(1, 1),
                              ignored_layers=[model.get_input_embeddings()])
    kept = [(l.self_attn.q_proj.out_features, l.mlp.gate_proj.out_features) for l in small.model.layers]
    assert kept == [(64, 96), (32, 48), (32, 48), (64, 96)]
    assert max_error(model, small, x) < 1e-10
    with warnings.catch_warnings():  # the residual stream is produced outside the skipped blocks too
        warnings.simplefilter("ignore")
        stream = surgery.prune(model, x, ratio=0.5, attention="heads", skip_blocks=(1, 1))
    assert stream.config.hidden_size == 32 and stream.model.layers[0].mlp.gate_proj.out_features == 96
    with pytest.raises(ValueError, match="would skip all 4 blocks of 'model.layers'"):
        surgery.prune(model, x, ratio=0.5, skip_blocks=(2, 2))
    with pytest.raises(ValueError, match="skip_blocks must be"):
        surgery.prune(model, x, ratio=0.5, skip_blocks=(1, -1))


def test_surgery_save_round_trips_a_model_whose_config_cannot_describe_it(tmp_path):
    model, small, x, _ = pruned("gpt2")
    surgery.save(small, tmp_path / "gpt2.pt")
    fresh, _, _ = build("gpt2")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        back = surgery.load(tmp_path / "gpt2.pt", fresh)
    assert not [w for w in seen if "save with surgery.save" in str(w.message)]  # no advice on saving
    with torch.no_grad():
        assert torch.equal(back(**x).logits, small(**x).logits)


def test_multi_query_attention_loses_query_heads_and_keeps_its_key_value_head():
    """One key/value head copied for every query head (repeat_kv): query heads go, the copies
    follow (num_key_value_groups 4 -> 2), the key/value head stays."""
    model, small, x, _ = pruned("llama-mqa")
    attn = small.model.layers[0].self_attn
    assert attn.q_proj.out_features == 2 * attn.head_dim and attn.k_proj.out_features == attn.head_dim
    assert attn.num_key_value_groups == 2 and attn.layer_idx == 0
    assert small.config.num_attention_heads == 2 and small.config.num_key_value_heads == 1
    assert max_error(model, small, x) < 1e-10
    assert small.generate(x["input_ids"][:1], max_new_tokens=3, do_sample=False).shape == (1, 11)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_the_hidden_size_goes_when_the_embeddings_are_not_ignored(family):
    """Through RMSNorm/LayerNorm the result cannot equal the masked original: the call warns,
    checks output shapes, the config follows and the model still generates."""
    model, x, _ = build(family)
    with pytest.warns(UserWarning, match="normalisations over channels"):
        small = surgery.prune(model, x, ratio=0.5, attention="heads")
    assert (getattr(small.config, "hidden_size", None) or small.config.n_embd) == 32
    assert not small.surgery_verification.exact
    assert small.generate(x["input_ids"][:1], max_new_tokens=2, do_sample=False).shape == (1, 10)
