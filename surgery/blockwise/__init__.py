"""Block-by-block pruning of Hugging Face decoder checkpoints: one decoder block in memory
at a time, so a 7B model in bf16 prunes on a 24 GB machine without a GPU.

Example:
    >>> from surgery.blockwise import prune_checkpoint
    >>> plan = prune_checkpoint("llama-7b", "llama-7b-small", ratio=0.2, calibration="text.txt")  # doctest: +SKIP
"""
from surgery.blockwise.prune import FEEDS, PLAN_FILE, prune_checkpoint

__all__ = ["prune_checkpoint", "PLAN_FILE", "FEEDS"]
