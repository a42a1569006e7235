"""Calibration token ids for block-by-block pruning: from a text file (the checkpoint's
tokenizer), a saved tensor of token ids, or, for criteria that need no data, random ids.

Windows of ``seq_len`` tokens are cut at seeded random offsets of the token stream
(the way SparseGPT and Wanda sample C4).

Example:
    >>> import torch, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "ids.pt")
    >>> torch.save(torch.arange(1000), path)
    >>> calibration_ids(path, folder=None, samples=4, seq_len=16).shape
    torch.Size([4, 16])
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from surgery.core.errors import ArgumentError

__all__ = ["calibration_ids", "TENSOR_SUFFIXES"]

TENSOR_SUFFIXES = (".pt", ".pth", ".bin")


def calibration_ids(path: str | os.PathLike | torch.Tensor | None, folder: str | os.PathLike | None, *,
                    samples: int, seq_len: int, seed: int = 0, vocab_size: int | None = None) -> torch.Tensor:
    """``[samples, seq_len]`` token ids. ``path``: a text file (tokenised with the tokenizer in
    ``folder``) or a tensor file of ids (1-D stream or 2-D rows); ``None``: uniform random ids
    below ``vocab_size`` (enough for weight criteria and for verification, not for scoring).
    A 2-D integer tensor is taken as the windows themselves."""
    if isinstance(path, torch.Tensor):
        if path.dim() != 2 or path.is_floating_point() or not path.numel():
            raise ArgumentError(f"calibration as a tensor must be [samples, seq_len] integer token ids, got "
                                f"{path.dtype} {tuple(path.shape)}")
        return path.long()
    if samples < 1 or seq_len < 1:
        raise ArgumentError(f"samples and seq_len must be positive, got samples={samples}, seq_len={seq_len}")
    g = torch.Generator().manual_seed(seed)
    if path is None:
        if vocab_size is None:
            raise ArgumentError("calibration_ids: give a calibration file or vocab_size for random ids")
        return torch.randint(0, vocab_size, (samples, seq_len), generator=g)
    path = Path(path)
    if not path.is_file():
        raise ArgumentError(f"calibration file {str(path)!r} does not exist")
    stream = _tensor_ids(path) if path.suffix in TENSOR_SUFFIXES else _text_ids(path, folder)
    if stream.numel() < seq_len:
        raise ArgumentError(f"{str(path)!r} holds {stream.numel()} tokens, fewer than seq_len={seq_len}; give "
                            f"more text or a shorter --seq-len")
    starts = torch.randint(0, stream.numel() - seq_len + 1, (samples,), generator=g)
    return torch.stack([stream[s:s + seq_len] for s in starts.tolist()])


def _tensor_ids(path: Path) -> torch.Tensor:
    ids = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.dim() not in (1, 2):
        raise ArgumentError(f"{str(path)!r} must hold a 1-D or 2-D integer tensor of token ids, got "
                            f"{type(ids).__name__}{'' if not isinstance(ids, torch.Tensor) else f' {ids.dtype} {tuple(ids.shape)}'}")
    return ids.reshape(-1).long()


def _text_ids(path: Path, folder: str | os.PathLike | None) -> torch.Tensor:
    if folder is None:
        raise ArgumentError(f"{str(path)!r} is text: it needs the checkpoint's tokenizer")
    try:
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as err:
        raise ArgumentError(f"{str(folder)!r} has no tokenizer to read the text {str(path)!r} ({type(err).__name__}); "
                            f"tokenise it yourself and give a tensor file of ids (torch.save(ids, 'ids.pt'))") from None
    text = path.read_text(encoding="utf-8", errors="replace")
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
