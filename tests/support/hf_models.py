"""Tiny random Hugging Face transformers models, one per family (nothing downloads)."""
import torch

TOKENS = 128


def _common(**kw):
    base = dict(vocab_size=TOKENS, max_position_embeddings=64)
    base.update(kw)
    return base


def build(family: str, layers: int = 2):
    """(model, example inputs, is causal LM) for a family, float64, eval mode, seeded."""
    import transformers as tf
    torch.manual_seed(0)
    specs = {
        "llama": (tf.LlamaConfig, tf.LlamaForCausalLM, dict(hidden_size=64, intermediate_size=96,
                                                             num_attention_heads=4, num_key_value_heads=2)),
        "llama-mqa": (tf.LlamaConfig, tf.LlamaForCausalLM, dict(hidden_size=64, intermediate_size=96,
                                                                 num_attention_heads=4, num_key_value_heads=1)),
        "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM, dict(hidden_size=64, intermediate_size=96,
                                                            num_attention_heads=4, num_key_value_heads=2)),
        "mistral": (tf.MistralConfig, tf.MistralForCausalLM, dict(hidden_size=64, intermediate_size=96,
                                                                  num_attention_heads=4, num_key_value_heads=2)),
        "phi3": (tf.Phi3Config, tf.Phi3ForCausalLM, dict(hidden_size=64, intermediate_size=96, num_attention_heads=4,
                                                         num_key_value_heads=4, pad_token_id=0)),
        "gpt2": (tf.GPT2Config, tf.GPT2LMHeadModel, dict(n_embd=64, n_head=4, n_layer=layers, n_positions=64)),
        "opt": (tf.OPTConfig, tf.OPTForCausalLM, dict(hidden_size=64, ffn_dim=96, num_attention_heads=4,
                                                      word_embed_proj_dim=64)),
        "bert": (tf.BertConfig, tf.BertForSequenceClassification, dict(hidden_size=64, intermediate_size=96,
                                                                       num_attention_heads=4, num_labels=3)),
        "vit": (tf.ViTConfig, tf.ViTForImageClassification, dict(hidden_size=64, intermediate_size=96,
                                                                 num_attention_heads=4, image_size=32, patch_size=8,
                                                                 num_labels=3)),
    }
    config_cls, model_cls, kw = specs[family]
    kw = _common(num_hidden_layers=layers, **kw) if family not in ("gpt2", "vit") else dict(kw, vocab_size=TOKENS) if family == "gpt2" else kw
    if family == "vit":
        kw["num_hidden_layers"] = layers
    config = config_cls(**kw)
    config._attn_implementation = "sdpa"
    from surgery.testing import randomize
    model = randomize(model_cls(config).double().eval(), 0)
    g = torch.Generator().manual_seed(1)
    if family == "vit":
        inputs = {"pixel_values": torch.randn(2, 3, 32, 32, generator=g, dtype=torch.float64)}
    else:
        inputs = {"input_ids": torch.randint(1, TOKENS, (2, 8), generator=g)}
    return model, inputs, family not in ("bert", "vit")
