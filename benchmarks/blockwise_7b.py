"""Block-by-block pruning of a 7B-class checkpoint on this machine: time and peak memory.

Writes a checkpoint with LLaMA-2-7B's shape (6.74 B parameters, bf16, 13.5 GB, random
weights, one shard per decoder block) to a temporary folder, written a block at a time so
that writing it needs little memory. Then, in a child process, runs
``surgery.blockwise.prune_checkpoint`` on it and reports wall time and the child's peak
resident memory (``ru_maxrss``). Then, in another child, loads the pruned folder with
``AutoModelForCausalLM.from_pretrained`` and runs it on a few tokens. Everything is deleted
at the end.

    python benchmarks/blockwise_7b.py [--layers 32] [--ratio 0.2] [--criterion wanda]
                                      [--samples 8] [--seq-len 128] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

SHAPES = {"llama-7b": dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                           vocab_size=32000, max_position_embeddings=4096),
          "tinyllama-1.1b": dict(hidden_size=2048, intermediate_size=5632, num_attention_heads=32,
                                 num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048)}

SAMPLER = r"""
import threading, time
PEAK = {"RssAnon": 0, "RssFile": 0}
def _sample():
    while True:
        for line in open("/proc/self/status"):
            key = line.split(":")[0]
            if key in PEAK:
                PEAK[key] = max(PEAK[key], int(line.split()[1]) / 2**20)
        time.sleep(0.02)
threading.Thread(target=_sample, daemon=True).start()
"""

PRUNE = SAMPLER + r"""
import json, resource, sys, time
import torch
torch.set_num_threads(int(sys.argv[7]))
from surgery.blockwise import prune_checkpoint
start = time.perf_counter()
plan = prune_checkpoint(sys.argv[1], sys.argv[2], ratio=float(sys.argv[3]), criterion=sys.argv[4],
                        calibration=sys.argv[8], head_ratio=None if sys.argv[9] == "-" else float(sys.argv[9]), samples=int(sys.argv[5]), seq_len=int(sys.argv[6]), progress=False)
print(json.dumps({"seconds": time.perf_counter() - start, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                  "peak_anon_gb": PEAK["RssAnon"], "peak_file_gb": PEAK["RssFile"], "captures": sum(b["captured"] for b in plan["blocks"]),
                  "exact_blocks": sum(b["exact"] for b in plan["blocks"]), "blocks": len(plan["blocks"]),
                  "config_changes": plan["config_changes"]}))
"""

LOAD = SAMPLER + r"""
import json, resource, sys, time
import torch
from transformers import AutoModelForCausalLM
start = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16).eval()
with torch.no_grad():
    logits = model(input_ids=torch.arange(16)[None]).logits
print(json.dumps({"load_and_forward_seconds": time.perf_counter() - start, "params": sum(p.numel() for p in model.parameters()),
                  "finite": bool(torch.isfinite(logits).all()), "logits": list(logits.shape),
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "peak_anon_gb": PEAK["RssAnon"]}))
"""


def write_checkpoint(folder: str, shape: str, layers: int) -> int:
    """A random bf16 checkpoint of ``shape`` with ``layers`` blocks, one shard per block."""
    import torch
    import transformers as tf
    from safetensors.torch import save_file
    from surgery.blockwise.skeleton import skeleton
    config = tf.LlamaConfig(num_hidden_layers=layers, **SHAPES[shape])
    config.dtype = "bfloat16"
    model, name, blocks = skeleton(config)
    state = {k: v for k, v in model.state_dict().items()}
    groups: dict = {}
    for key, t in state.items():
        rest = key[len(name) + 1:] if key.startswith(name + ".") else None
        groups.setdefault(rest.split(".")[0] if rest else "outer", []).append((key, t.shape))
    g = torch.Generator().manual_seed(0)
    weight_map, total, count = {}, 0, len(groups)
    for i, (part, items) in enumerate(groups.items(), 1):
        file = f"model-{i:05d}-of-{count:05d}.safetensors"
        tensors = {}
        for key, shape_ in items:
            ones = key.endswith("norm.weight")
            tensors[key] = torch.ones(shape_, dtype=torch.bfloat16) if ones else \
                (torch.randn(shape_, generator=g) * 0.02).to(torch.bfloat16)
            weight_map[key] = file
            total += tensors[key].numel() * 2
        save_file(tensors, os.path.join(folder, file), metadata={"format": "pt"})
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
    config.save_pretrained(folder)
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="llama-7b", choices=sorted(SHAPES))
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--ratio", type=float, default=0.2)
    p.add_argument("--head-ratio", type=float, default=None)
    p.add_argument("--criterion", default="wanda")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--keep", help="write the checkpoints here and keep them (default: a temp folder, deleted)")
    p.add_argument("--source", help="an existing checkpoint folder to prune instead of writing one")
    args = p.parse_args()
    root = args.keep or tempfile.mkdtemp(prefix="surgery-7b-")
    src, out = args.source or os.path.join(root, "src"), os.path.join(root, "pruned")
    os.makedirs(src, exist_ok=True)
    try:
        start = time.perf_counter()
        if args.source:
            size = json.load(open(os.path.join(src, "model.safetensors.index.json")))["metadata"]["total_size"]
        else:
            size = write_checkpoint(src, args.shape, args.layers)
            print(f"wrote {size / 1e9:.1f} GB ({args.shape}, {args.layers} blocks, bf16) in "
                  f"{time.perf_counter() - start:.0f} s")
        import torch
        ids = os.path.join(root, "ids.pt")
        torch.save(torch.randint(0, SHAPES[args.shape]["vocab_size"], (200_000,),
                                 generator=torch.Generator().manual_seed(1)), ids)
        pruned = json.loads(subprocess.run([sys.executable, "-c", PRUNE, src, out, str(args.ratio), args.criterion,
                                            str(args.samples), str(args.seq_len), str(args.threads), ids,
                                            "-" if args.head_ratio is None else str(args.head_ratio)],
                                           check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        print(json.dumps(pruned))
        loaded = json.loads(subprocess.run([sys.executable, "-c", LOAD, out], check=True, capture_output=True,
                                           text=True).stdout.strip().splitlines()[-1])
        print(json.dumps(loaded))
        out_size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out) if f.endswith(".safetensors"))
        print(f"| {args.shape} ({args.layers} blocks), {size / 1e9:.1f} GB bf16 | {args.criterion} {args.ratio:.0%}, "
              f"{args.samples}x{args.seq_len} tokens | {pruned['seconds']:.0f} s | {pruned['peak_rss_gb']:.1f} GB "
              f"({pruned['peak_anon_gb']:.1f} GB anonymous) | "
              f"{pruned['exact_blocks']}/{pruned['blocks']} | {out_size / 1e9:.1f} GB | "
              f"{loaded['params'] / 1e9:.2f} B, finite {loaded['finite']} |")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
