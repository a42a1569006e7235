"""Quality of block-by-block pruning on a small decoder this script trains itself.

Data: the Python standard library's own top-level source files (on every machine), as bytes
(a 256-token vocabulary); every 10th file is held out. A LLaMA-shaped decoder (4 blocks,
hidden 256, 8 heads, MLP 768) is trained on the rest, saved as a checkpoint folder, then
pruned with ``surgery.blockwise.prune_checkpoint`` at 20% and 50% with each criterion
(calibration: 32 windows of 128 bytes from the training files). Reported: perplexity per
byte on held-out windows before and after, and after LoRA recovery (``peft``) of the 50%
models. Everything lives in a temporary folder, deleted at the end.

    python benchmarks/llm_quality.py [--steps 600] [--lora-steps 200] [--seed 0]
"""
from __future__ import annotations

import argparse
import glob
import shutil
import sysconfig
import tempfile
import time
import warnings
from pathlib import Path

import torch

CRITERIA = ("wanda", "flap", "activation_norm", "l2", "random")
SEQ = 128


def byte_windows(files: list, count: int, seed: int) -> torch.Tensor:
    stream = torch.tensor(list(b"\n".join(Path(f).read_bytes() for f in files)), dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, stream.numel() - SEQ, (count,), generator=g)
    return torch.stack([stream[s:s + SEQ] for s in starts.tolist()])


def train_base(folder: Path, train: torch.Tensor, steps: int, seed: int) -> float:
    import transformers as tf
    torch.manual_seed(seed)
    config = tf.LlamaConfig(vocab_size=256, hidden_size=256, intermediate_size=768, num_attention_heads=8,
                            num_key_value_heads=8, num_hidden_layers=4, max_position_embeddings=SEQ,
                            tie_word_embeddings=False)
    model = tf.LlamaForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    model.train()
    for _ in range(steps):
        rows = train[torch.randint(0, train.shape[0], (16,), generator=g)]
        loss = model(input_ids=rows, labels=rows).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval().save_pretrained(folder)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--lora-steps", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(2)
    from transformers import AutoModelForCausalLM
    from surgery.blockwise import prune_checkpoint
    from surgery.blockwise.recover import lora_recover, perplexity
    files = sorted(glob.glob(sysconfig.get_paths()["stdlib"] + "/*.py"))
    held = files[::10]
    trainf = [f for f in files if f not in held]
    train, calib, test = (byte_windows(trainf, 20000, args.seed), byte_windows(trainf, 32, args.seed + 1),
                          byte_windows(held, 256, args.seed + 2))
    root = Path(tempfile.mkdtemp(prefix="surgery-quality-"))
    try:
        seconds = train_base(root / "base", train, args.steps, args.seed)

        def ppl(folder):
            return perplexity(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), test)

        base = ppl(root / "base")
        print(f"base: {args.steps} steps in {seconds:.0f} s, held-out perplexity {base:.3f} "
              f"({len(trainf)} training files, {len(held)} held out)")
        rows = []
        for ratio in (0.2, 0.5):
            for crit in CRITERIA:
                out = root / f"{crit}-{ratio}"
                plan = prune_checkpoint(root / "base", out, ratio=ratio, criterion=crit, calibration=calib,
                                        seed=args.seed, progress=False)
                params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(out).parameters())
                after = ppl(out)
                lora = None
                if ratio == 0.5 and args.lora_steps:
                    lora_recover(out, root / f"{crit}-{ratio}-lora", train, steps=args.lora_steps, seed=args.seed,
                                 progress=False)
                    lora = ppl(root / f"{crit}-{ratio}-lora")
                heads = dict((k, b) for k, a, b in plan["config_changes"]).get("num_attention_heads", 8)
                rows.append((ratio, crit, params, heads, after, lora, plan["seconds"]))
                print(rows[-1], flush=True)
        base_params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(root / "base").parameters())
        print(f"\n| ratio | criterion | params kept | heads | perplexity | after LoRA ({args.lora_steps} steps) | prune s |")
        print("|---|---|---:|---:|---:|---:|---:|")
        print(f"| 0 | (base) | 100% | 8 | {base:.3f} | | |")
        for ratio, crit, params, heads, after, lora, secs in rows:
            print(f"| {ratio:.0%} | {crit} | {params / base_params:.1%} | {heads} | {after:.3f} | "
                  f"{'' if lora is None else f'{lora:.3f}'} | {secs} |")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
