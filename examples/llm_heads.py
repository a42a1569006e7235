"""Prune a tiny LLaMA by whole attention heads and MLP width with Wanda scores on random
token batches, check it against the masked original, generate, save and load it back.

Nothing downloads: the model is built from a config with random weights.
Run: python examples/llm_heads.py
"""
import tempfile
import warnings

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import surgery
from surgery.testing import max_error


def build() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=128)
    return LlamaForCausalLM(config).double().eval()


def main() -> dict:
    model = build()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (2, 16), generator=g)
    batches = [({"input_ids": torch.randint(0, 256, (2, 16), generator=g)}, None) for _ in range(4)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = surgery.prune(model, {"input_ids": ids}, ratio=0.5, attention="heads", criterion="wanda",
                              data=batches, forward_fn=lambda m, batch: (m(**batch[0]).logits, None),
                              ignored_layers=[model.get_input_embeddings()])
    error = max_error(model, small, {"input_ids": ids})
    text = small.generate(ids[:1, :4], max_new_tokens=8, do_sample=False)
    with tempfile.TemporaryDirectory() as folder:
        small.save_pretrained(folder)
        loaded = LlamaForCausalLM.from_pretrained(folder, torch_dtype=torch.float64).eval()
        same = torch.equal(loaded(input_ids=ids).logits, small(input_ids=ids).logits)
    result = {"heads": (model.config.num_attention_heads, small.config.num_attention_heads),
              "kv_heads": (model.config.num_key_value_heads, small.config.num_key_value_heads),
              "mlp": (model.config.intermediate_size, small.config.intermediate_size),
              "params": (sum(p.numel() for p in model.parameters()), sum(p.numel() for p in small.parameters())),
              "error": error, "generated": tuple(text.shape), "reloaded_equal": same}
    return result


if __name__ == "__main__":
    for key, value in main().items():
        print(f"{key:>15}: {value}")
