"""Read a Hugging Face safetensors checkpoint a tensor at a time, and write one shard by shard.

The files are memory-mapped by ``safetensors.safe_open``: reading one decoder block's tensors
touches only those bytes, so a 13.5 GB checkpoint never has to be in memory at once.

Example:
    >>> import tempfile, torch, os
    >>> from safetensors.torch import save_file
    >>> folder = tempfile.mkdtemp()
    >>> save_file({"a.weight": torch.ones(2, 2)}, os.path.join(folder, "model.safetensors"))
    >>> Checkpoint(folder, need_config=False).get("a.weight").shape
    torch.Size([2, 2])
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import torch

from surgery.core.errors import ArgumentError

__all__ = ["Checkpoint", "ShardWriter", "INDEX", "SINGLE"]

INDEX, SINGLE = "model.safetensors.index.json", "model.safetensors"


class Checkpoint:
    """The tensors of a checkpoint folder (``model.safetensors`` or a sharded index), by key."""

    def __init__(self, folder: str | os.PathLike, need_config: bool = True) -> None:
        from safetensors import safe_open
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ArgumentError(f"checkpoint folder {str(folder)!r} does not exist")
        if need_config and not (self.folder / "config.json").is_file():
            raise ArgumentError(f"{str(folder)!r} has no config.json: give a Hugging Face model folder "
                                f"(what save_pretrained writes)")
        if (self.folder / INDEX).is_file():
            self.files = dict(json.loads((self.folder / INDEX).read_text())["weight_map"])
            missing = sorted({f for f in self.files.values() if not (self.folder / f).is_file()})
            if missing:
                raise ArgumentError(f"{str(folder)!r} is incomplete: {INDEX} names shard(s) that are not there "
                                    f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
        elif (self.folder / SINGLE).is_file():
            with safe_open(self.folder / SINGLE, framework="pt") as f:
                self.files = {k: SINGLE for k in f.keys()}
        else:
            raise ArgumentError(f"{str(folder)!r} has neither {SINGLE} nor {INDEX}: only safetensors "
                                f"checkpoints are read (save_pretrained(..., safe_serialization=True) writes them)")
        self._open: dict = {}

    def _file(self, key: str):
        from safetensors import safe_open
        name = self.files[key]
        if name not in self._open:
            self._open[name] = safe_open(self.folder / name, framework="pt")
        return self._open[name]

    def close(self) -> None:
        """Drop the memory maps: pages read so far stop counting in this process's memory."""
        self._open.clear()

    def keys(self) -> list:
        return list(self.files)

    def __contains__(self, key: str) -> bool:
        return key in self.files

    def get(self, key: str) -> torch.Tensor:
        """The tensor stored under ``key`` (in its stored dtype)."""
        if key not in self.files:
            raise ArgumentError(f"the checkpoint in {str(self.folder)!r} has no tensor {key!r}")
        return self._file(key).get_tensor(key)

    def dtype_of(self, key: str) -> torch.dtype:
        """The stored dtype of ``key``, read from the header (no data is loaded)."""
        names = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64}
        stored = self._file(key).get_slice(key).get_dtype()
        return names.get(stored, torch.float32)

    def float_dtype(self) -> torch.dtype:
        """The checkpoint's floating dtype (the most common one over its tensors)."""
        counts = Counter(self.dtype_of(k) for k in self.files)
        return counts.most_common(1)[0][0]


class ShardWriter:
    """Writes ``model-0000i-of-0000n.safetensors`` files one call at a time, then the index."""

    def __init__(self, folder: str | os.PathLike, shards: int) -> None:
        self.folder, self.shards = Path(folder), shards
        self.weight_map: dict = {}
        self.total_size = 0
        self.written = 0

    def write(self, tensors: dict) -> str:
        """One shard holding ``tensors`` ({key: tensor}); returns its file name."""
        from safetensors.torch import save_file
        if self.written >= self.shards:
            raise RuntimeError(f"ShardWriter was sized for {self.shards} shards")
        self.written += 1
        name = f"model-{self.written:05d}-of-{self.shards:05d}.safetensors"
        tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
        save_file(tensors, self.folder / name, metadata={"format": "pt"})
        for key, t in tensors.items():
            self.weight_map[key] = name
            self.total_size += t.numel() * t.element_size()
        return name

    def finish(self) -> Path:
        """Write the index (the checkpoint is complete only once it exists)."""
        if self.written != self.shards:
            raise RuntimeError(f"{self.written} of {self.shards} shards written")
        path = self.folder / INDEX
        path.write_text(json.dumps({"metadata": {"total_size": self.total_size},
                                    "weight_map": dict(sorted(self.weight_map.items()))}, indent=2))
        return path
