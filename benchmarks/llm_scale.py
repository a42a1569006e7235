"""Block-by-block pruning at real model shapes on this machine: time, peak memory, per-block error.

For each shape (TinyLlama-1.1B, LLaMA-2-7B), writes a checkpoint with random weights in bf16
(one shard per decoder block, written a block at a time) to a temporary folder, then in a child
process runs ``surgery.blockwise.prune_checkpoint`` and reports wall time, peak resident memory
(``VmHWM``, the child's own high-water mark: ``ru_maxrss`` would count the parent's memory at the
fork; and the anonymous part, sampled from /proc/self/status; the rest is pages of the
memory-mapped shards and shared libraries), how many blocks were verified exact and the largest per-block error. In
another child it loads the output with ``AutoModelForCausalLM.from_pretrained`` and generates
8 tokens; for shapes under 2 B parameters it also compares the logits with the original's
with the removed channels zeroed where they are read (o_proj and down_proj columns), float32.
``--depths 4,16`` prunes the first shape at those depths to show the peak does not grow.
Everything is deleted at the end.

    python benchmarks/llm_scale.py [--shapes tinyllama-1.1b,llama-7b] [--ratio 0.25] [--head-ratio 0.5]
                                   [--samples 16] [--seq-len 128] [--depths 4,16] [--source-7b DIR]
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
                           vocab_size=32000, max_position_embeddings=4096, num_hidden_layers=32),
          "tinyllama-1.1b": dict(hidden_size=2048, intermediate_size=5632, num_attention_heads=32,
                                 num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048,
                                 num_hidden_layers=22)}

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
import json, resource, sys, time, warnings
def _hwm_kb():  # this process's own peak RSS (ru_maxrss would include the parent's at fork)
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM"))
import torch
warnings.simplefilter("ignore")
a = json.loads(sys.argv[1])
torch.set_num_threads(a["threads"])
from surgery.blockwise import prune_checkpoint
start = time.perf_counter()
plan = prune_checkpoint(a["src"], a["out"], ratio=a["ratio"], head_ratio=a["head_ratio"], criterion=a["criterion"],
                        calibration=a["ids"], samples=a["samples"], seq_len=a["seq_len"], progress=False)
print(json.dumps({"seconds": time.perf_counter() - start, "peak_rss_gb": _hwm_kb() / 2**20,
                  "peak_anon_gb": PEAK["RssAnon"], "captures": sum(b["captured"] for b in plan["blocks"]),
                  "exact_blocks": sum(b["exact"] for b in plan["blocks"]), "blocks": len(plan["blocks"]),
                  "max_error": max(b["max_error"] or 0.0 for b in plan["blocks"]), "config_changes": plan["config_changes"]}))
"""

LOAD = SAMPLER + r"""
import json, resource, sys, time, warnings
def _hwm_kb():  # this process's own peak RSS (ru_maxrss would include the parent's at fork)
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM"))
import torch
warnings.simplefilter("ignore")
from transformers import AutoModelForCausalLM
src, out, compare = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
start = time.perf_counter()
dtype = torch.float32 if compare else torch.bfloat16
model = AutoModelForCausalLM.from_pretrained(out, dtype=dtype).eval()
ids = torch.randint(0, model.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(2))
result = {"params": sum(p.numel() for p in model.parameters())}
with torch.no_grad():
    logits = model(input_ids=ids).logits
    result["generated"] = list(model.generate(ids, max_new_tokens=8, do_sample=False).shape)
    if compare:
        plan = json.load(open(out + "/surgery_plan.json"))
        original = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
        for record in plan["blocks"]:
            block = original.model.layers[record["block"]]
            for name, roles in record["removed"].items():
                if "in" in roles:
                    block.get_submodule(name).weight[:, roles["in"]] = 0
        reference = original(input_ids=ids).logits
        result["relative_error_vs_masked"] = float((logits - reference).abs().max() / reference.abs().max())
result.update(load_and_run_seconds=time.perf_counter() - start, finite=bool(torch.isfinite(logits).all()),
              peak_rss_gb=_hwm_kb() / 2**20, peak_anon_gb=PEAK["RssAnon"])
print(json.dumps(result))
"""


def write_checkpoint(folder: str, shape: str, layers: int | None = None) -> int:
    """A random bf16 checkpoint of ``shape``, one shard per block; returns its size in bytes."""
    import torch
    import transformers as tf
    from safetensors.torch import save_file
    from surgery.blockwise.skeleton import skeleton
    config = tf.LlamaConfig(**{**SHAPES[shape], **({"num_hidden_layers": layers} if layers else {})})
    config.dtype = "bfloat16"
    model, name, _ = skeleton(config)
    groups: dict = {}
    for key, t in model.state_dict().items():
        rest = key[len(name) + 1:] if key.startswith(name + ".") else None
        groups.setdefault(rest.split(".")[0] if rest else "outer", []).append((key, t.shape))
    g = torch.Generator().manual_seed(0)
    weight_map, total, count = {}, 0, len(groups)
    for i, items in enumerate(groups.values(), 1):
        file = f"model-{i:05d}-of-{count:05d}.safetensors"
        tensors = {key: torch.ones(s, dtype=torch.bfloat16) if key.endswith("norm.weight") else
                   (torch.randn(s, generator=g) * 0.02).to(torch.bfloat16) for key, s in items}
        for key, t in tensors.items():
            weight_map[key] = file
            total += t.numel() * 2
        save_file(tensors, os.path.join(folder, file), metadata={"format": "pt"})
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
    config.save_pretrained(folder)
    return total


def _child(code: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(shape: str, root: str, args, layers: int | None = None, source: str | None = None, load: bool = True) -> dict:
    import torch
    tag = f"{shape}-{layers or 'full'}"
    src, out = source or os.path.join(root, tag), os.path.join(root, tag + "-pruned")
    size = None
    if not source:
        os.makedirs(src)
        start = time.perf_counter()
        size = write_checkpoint(src, shape, layers)
        print(f"wrote {tag}: {size / 1e9:.1f} GB in {time.perf_counter() - start:.0f} s", flush=True)
    else:
        size = json.load(open(os.path.join(src, "model.safetensors.index.json")))["metadata"]["total_size"]
    ids = os.path.join(root, "ids.pt")
    torch.save(torch.randint(0, 32000, (200_000,), generator=torch.Generator().manual_seed(1)), ids)
    pruned = _child(PRUNE, json.dumps(dict(src=src, out=out, ratio=args.ratio, head_ratio=args.head_ratio,
                                           criterion=args.criterion, ids=ids, samples=args.samples,
                                           seq_len=args.seq_len, threads=args.threads)))
    pruned.update(shape=tag, size_gb=size / 1e9)
    if load:
        pruned["load"] = _child(LOAD, src, out, "1" if size < 5e9 else "0")
        pruned["out_gb"] = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out)
                               if f.endswith(".safetensors")) / 1e9
    print(json.dumps(pruned), flush=True)
    if not source:
        shutil.rmtree(src)
    shutil.rmtree(out)
    return pruned


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="tinyllama-1.1b,llama-7b")
    p.add_argument("--ratio", type=float, default=0.25)
    p.add_argument("--head-ratio", type=float, default=0.5)
    p.add_argument("--criterion", default="wanda")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--depths", default="4,16", help="layer counts of the first shape for the depth check ('' skips)")
    p.add_argument("--source-7b", help="an existing llama-7b checkpoint folder to prune instead of writing one")
    args = p.parse_args()
    root = tempfile.mkdtemp(prefix="surgery-scale-")
    rows = []
    try:
        shapes = args.shapes.split(",")
        for shape in shapes:
            rows.append(run(shape, root, args, source=args.source_7b if shape == "llama-7b" else None))
        depth = [run(shapes[0], root, args, layers=int(d), load=False) for d in args.depths.split(",") if d]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\n{args.criterion}, {args.ratio:.0%} of MLP channels, head_ratio {args.head_ratio}, "
          f"{args.samples}x{args.seq_len} calibration tokens, {args.threads} threads\n")
    print("| shape | checkpoint | time | peak resident (anonymous) | blocks exact | largest block error | output "
          "| loads, generates | logits vs masked original |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|")
    for r in rows:
        load = r["load"]
        vs = load.get("relative_error_vs_masked")
        print(f"| {r['shape']} | {r['size_gb']:.1f} GB | {r['seconds']:.0f} s | {r['peak_rss_gb']:.2f} GB "
              f"({r['peak_anon_gb']:.2f} GB) | {r['exact_blocks']}/{r['blocks']} | {r['max_error']:.1e} | "
              f"{r['out_gb']:.1f} GB | {load['params'] / 1e9:.2f} B params, {load['generated']} | "
              f"{'not run (size)' if vs is None else f'{vs:.1e}'} |")
    if depth:
        print("\n| depth | peak resident (anonymous) | time |\n|---:|---:|---:|")
        for r in depth:
            print(f"| {r['shape']} | {r['peak_rss_gb']:.2f} GB ({r['peak_anon_gb']:.2f} GB) | {r['seconds']:.0f} s |")


if __name__ == "__main__":
    main()
