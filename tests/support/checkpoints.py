"""Tiny Hugging Face decoder checkpoints on disk (random weights, nothing downloads), and the
masked original a block-by-block plan must equal."""
import json
import os

import torch
import torch.nn as nn

from support.hf_models import TOKENS, build


def write(folder: str, family: str = "llama", dtype: torch.dtype = torch.float32, layers: int = 3,
          shard: str | None = "20KB", tokenizer: bool = False) -> str:
    """A checkpoint folder of ``family`` (sharded when ``shard`` is given); returns its path."""
    model, _, _ = build(family, layers=layers)
    model.to(dtype).save_pretrained(folder, **({"max_shard_size": shard} if shard else {}))
    if tokenizer:
        write_tokenizer(folder)
    return folder


def write_tokenizer(folder: str) -> None:
    """A word-level tokenizer over TOKENS words (``w0`` ... ``w127``), saved in ``folder``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {f"w{i}": i for i in range(TOKENS - 1)} | {"[UNK]": TOKENS - 1}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]").save_pretrained(folder)


def ids_file(folder: str, tokens: int = 2000, seed: int = 0) -> str:
    path = os.path.join(folder, "ids.pt")
    torch.save(torch.randint(1, TOKENS, (tokens,), generator=torch.Generator().manual_seed(seed)), path)
    return path


def load(folder: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()


def masked_original(source: str, plan_path: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The source model with every channel the plan removed zeroed where it is read (the
    removed input columns of each consumer), which is what the pruned model must compute."""
    model = load(source, dtype)
    plan = json.loads(open(plan_path).read())
    from surgery.select.blocks import repeated_blocks
    _, blocks = repeated_blocks(model)
    for record in plan["blocks"]:
        block = blocks[record["block"]]
        for name, roles in record["removed"].items():
            if "in" in roles:
                with torch.no_grad():
                    block.get_submodule(name).weight[:, roles["in"]] = 0
    return model
