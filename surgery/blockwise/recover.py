"""Recovery fine-tuning of a pruned checkpoint with LoRA (``peft``, the ``lora`` extra), merged
back into plain weights so that the result is again a standard checkpoint.

The whole pruned model is loaded, so this needs the memory of the pruned model plus its
activations; it is the optional step after block-by-block pruning, not part of it.

Example:
    >>> losses = lora_recover("llama-small", "llama-small-lora", train_ids, steps=200)  # doctest: +SKIP
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from tqdm.auto import tqdm

from surgery.blockwise.prune import copy_side_files
from surgery.core.errors import ArgumentError

__all__ = ["lora_recover", "perplexity", "LORA_TARGETS"]

LORA_TARGETS = "all-linear"  # peft's name for every Linear but the output head


def lora_recover(checkpoint: str | os.PathLike, output: str | os.PathLike, train_ids: torch.Tensor, *,
                 steps: int = 200, batch_size: int = 8, lr: float = 1e-3, rank: int = 8, alpha: int = 16,
                 seed: int = 0, progress: bool = True) -> list:
    """Fine-tune LoRA adapters on ``train_ids`` (``[rows, seq_len]`` token ids, next-token
    loss), merge them, write ``output`` with ``save_pretrained`` (tokenizer files copied);
    returns the training losses."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ArgumentError("LoRA recovery needs peft: pip install 'torch-surgery[lora]'") from None
    from transformers import AutoModelForCausalLM
    if train_ids.dim() != 2 or train_ids.is_floating_point():
        raise ArgumentError(f"train_ids must be [rows, seq_len] integer token ids, got {tuple(train_ids.shape)}")
    out = Path(output)
    if out.exists() and any(out.iterdir()):
        raise ArgumentError(f"output {str(out)!r} exists and is not empty; give a new folder")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    lora = get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, target_modules=LORA_TARGETS,
                                            task_type="CAUSAL_LM"))
    opt = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=lr)
    g = torch.Generator().manual_seed(seed)
    losses = []
    lora.train()
    for _ in tqdm(range(steps), desc="LoRA recovery", disable=not progress):
        rows = train_ids[torch.randint(0, train_ids.shape[0], (batch_size,), generator=g)]
        loss = lora(input_ids=rows, labels=rows).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    merged = lora.merge_and_unload().eval()
    merged.save_pretrained(out)
    copy_side_files(Path(checkpoint), out)
    return losses


@torch.no_grad()
def perplexity(model: torch.nn.Module, ids: torch.Tensor, batch_size: int = 8) -> float:
    """exp of the mean next-token loss over ``ids`` (``[rows, seq_len]``)."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, ids.shape[0], batch_size):
        rows = ids[start:start + batch_size]
        loss = model(input_ids=rows, labels=rows).loss
        n = rows.shape[0] * (rows.shape[1] - 1)
        total, count = total + float(loss) * n, count + n
    return float(torch.exp(torch.tensor(total / count)))
