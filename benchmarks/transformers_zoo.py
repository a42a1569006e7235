"""Hugging Face transformers through the torch.export front end: trace and prune time per
family, and a 1B-parameter LLaMA-shaped model with its peak memory. Each row runs in a fresh
process (peak RSS is per process). Random weights from configs; nothing downloads.

``first trace s`` is the first ``surgery.trace(..., tracer="export")`` of the process (torch.export's
own warm-up included); ``prune s`` the whole
``surgery.prune(..., attention="heads", ratio=0.5, ignored_layers=[input embeddings])``
call (its own trace, L1 scores, rewrite, check); ``peak GB`` the process's peak resident
memory; ``model GB`` the model's own tensors.

    python benchmarks/transformers_zoo.py                 # the families, verify on
    python benchmarks/transformers_zoo.py --llama-1b      # adds the 1B LLaMA (inplace, verify off)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time, warnings, torch, transformers as tf, surgery
def _hwm_kb():  # this process's own peak RSS (ru_maxrss would include the parent's at fork)
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM"))
warnings.simplefilter("ignore")
tf.logging.set_verbosity_error()
family, inplace, verify = sys.argv[1], sys.argv[2] == "1", sys.argv[3] == "1"
H, I, L, V = 512, 1376, 4, 4096
common = dict(vocab_size=V, max_position_embeddings=256)
specs = {
    "llama": (tf.LlamaConfig, tf.LlamaForCausalLM, dict(hidden_size=H, intermediate_size=I, num_hidden_layers=L,
              num_attention_heads=8, num_key_value_heads=4, **common)),
    "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM, dict(hidden_size=H, intermediate_size=I, num_hidden_layers=L,
              num_attention_heads=8, num_key_value_heads=4, **common)),
    "mistral": (tf.MistralConfig, tf.MistralForCausalLM, dict(hidden_size=H, intermediate_size=I, num_hidden_layers=L,
                num_attention_heads=8, num_key_value_heads=4, **common)),
    "phi3": (tf.Phi3Config, tf.Phi3ForCausalLM, dict(hidden_size=H, intermediate_size=I, num_hidden_layers=L,
             num_attention_heads=8, num_key_value_heads=8, pad_token_id=0, **common)),
    "gpt2": (tf.GPT2Config, tf.GPT2LMHeadModel, dict(n_embd=H, n_head=8, n_layer=L, n_positions=256, vocab_size=V)),
    "opt": (tf.OPTConfig, tf.OPTForCausalLM, dict(hidden_size=H, ffn_dim=I, num_hidden_layers=L, num_attention_heads=8,
            word_embed_proj_dim=H, **common)),
    "bert": (tf.BertConfig, tf.BertForSequenceClassification, dict(hidden_size=H, intermediate_size=I,
             num_hidden_layers=L, num_attention_heads=8, num_labels=3, **common)),
    "vit": (tf.ViTConfig, tf.ViTForImageClassification, dict(hidden_size=H, intermediate_size=I, num_hidden_layers=L,
            num_attention_heads=8, image_size=224, patch_size=16, num_labels=10)),
    "llama-1b": (tf.LlamaConfig, tf.LlamaForCausalLM, dict(hidden_size=2048, intermediate_size=5632,
                 num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4, vocab_size=32000,
                 max_position_embeddings=2048)),
}
config_cls, model_cls, kw = specs[family]
config = config_cls(**kw)
config._attn_implementation = "sdpa"
torch.manual_seed(0)
with torch.device("cpu"):
    model = model_cls(config).eval()
for p in model.parameters():
    p.requires_grad_(False)
x = ({"pixel_values": torch.randn(1, 3, 224, 224)} if family == "vit"
     else {"input_ids": torch.randint(0, config.vocab_size, (1, 128))})
model_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
params = sum(p.numel() for p in model.parameters())
t0 = time.perf_counter()
surgery.trace(model, x, tracer="export", attention="heads")
trace_s = time.perf_counter() - t0
heads = getattr(config, "num_attention_heads", None) or config.n_head
t0 = time.perf_counter()
small = surgery.prune(model, x, ratio=0.5, attention="heads", tracer="export", inplace=inplace, verify=verify,
                      ignored_layers=[model.get_input_embeddings()])
prune_s = time.perf_counter() - t0
peak = _hwm_kb() * 1024
after = getattr(small.config, "num_attention_heads", None) or small.config.n_head
print(json.dumps(dict(trace_s=trace_s, prune_s=prune_s, params=params, kept=sum(p.numel() for p in small.parameters()),
                      heads=heads, heads_after=after, model_bytes=model_bytes, peak=peak)))
"""

FAMILIES = ["llama", "qwen2", "mistral", "phi3", "gpt2", "opt", "bert", "vit"]


def row(family: str, inplace: bool, verify: bool) -> str:
    out = subprocess.run([sys.executable, "-c", CHILD, family, str(int(inplace)), str(int(verify))],
                         capture_output=True, text=True)
    if out.returncode:
        return f"| {family} | failed: {out.stderr.strip().splitlines()[-1][:200]} |"
    r = json.loads(out.stdout.strip().splitlines()[-1])
    gb = 1024 ** 3
    return (f"| {family} | {r['params'] / 1e6:.1f}M -> {r['kept'] / 1e6:.1f}M | {r['heads']} -> {r['heads_after']} | "
            f"{r['trace_s']:.2f} | {r['prune_s']:.2f} | {'yes' if inplace else 'no'} | {'yes' if verify else 'no'} | "
            f"{r['model_bytes'] / gb:.2f} | {r['peak'] / gb:.2f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--llama-1b", action="store_true", help="also the 1.1B LLaMA-shaped model (about 4.4 GB)")
    args = p.parse_args()
    print("| model | params | heads per layer | first trace s | prune s | inplace | verify | model GB | peak GB |")
    print("|---|---|---|---:|---:|---|---|---:|---:|")
    for family in args.families.split(","):
        print(row(family, inplace=False, verify=True), flush=True)
    if args.llama_1b:
        print(row("llama-1b", inplace=True, verify=False), flush=True)
        print(row("llama-1b", inplace=True, verify=True), flush=True)


if __name__ == "__main__":
    main()
