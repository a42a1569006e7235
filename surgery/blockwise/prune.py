"""Prune a Hugging Face decoder checkpoint block by block, with one block in memory at a time.

The model is built on the meta device from ``config.json``; the embeddings and then one
decoder block at a time are read from the safetensors shards (memory-mapped, float32 for
the math). Calibration hidden states go from block to block. Each block is scored, pruned
by whole heads and MLP channels, verified against its masked original on the calibration
hidden states (so the whole model is a composition of checked blocks), written to its own
output shard in the checkpoint's dtype, and freed. The output is a standard checkpoint:
``AutoModelForCausalLM.from_pretrained(output)`` loads it with no remote code.

Example:
    >>> summary = prune_checkpoint("llama-7b", "llama-7b-pruned", ratio=0.2,
    ...                            calibration="text.txt", samples=32, seq_len=256)  # doctest: +SKIP
"""
from __future__ import annotations

import copy
import ctypes
import gc
import json
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from surgery import criteria as _criteria
from surgery.blockwise.calibration import calibration_ids
from surgery.blockwise.planned import Planned
from surgery.blockwise.compensate import bias_switches, compensate, input_sums
from surgery.blockwise.shards import INDEX, SINGLE, Checkpoint, ShardWriter
from surgery.blockwise.skeleton import block_inputs, materialize, release, skeleton
from surgery.core.config import check_skip_blocks
from surgery.core.errors import ArgumentError, check_ratio
from surgery.core.frames import user_stacklevel
from surgery.groups.rebind import rebind, structure
from surgery.pruner import Pruner
from surgery.repair.reconstruct import KEEPS
from surgery.rewrite.model_config import apply_changes, config_changes

__all__ = ["prune_checkpoint", "PLAN_FILE", "FEEDS"]

PLAN_FILE = "surgery_plan.json"
FEEDS = ("pruned", "original")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack")


def prune_checkpoint(checkpoint: str | os.PathLike, output: str | os.PathLike, *, ratio: float,
                     head_ratio: float | None = None, criterion: str = "wanda",
                     calibration: str | os.PathLike | torch.Tensor | None = None, samples: int = 32, seq_len: int = 256,
                     batch_size: int = 4, skip_blocks: tuple = (0, 0), feed: str = "pruned",
                     bias_compensation: bool | None = None, verify: bool = True, seed: int = 0,
                     overwrite: bool = False, progress: bool = True, planned: dict | None = None) -> dict:
    """Prune the checkpoint folder ``checkpoint`` into ``output``; returns the plan written there.

    Args:
        ratio: fraction of every block's MLP channels (and heads, unless ``head_ratio``) removed.
        head_ratio: fraction of attention heads removed (whole heads; default ``ratio``).
        criterion: ``"wanda"`` (Wanda-SP), ``"flap"``, ``"activation_norm"`` (Minitron),
            ``"l1"``/``"l2"`` (magnitude) or ``"random"``; any registered criterion works.
        calibration: a text file (tokenised with the checkpoint's tokenizer), a tensor file
            of token ids, or a ``[samples, seq_len]`` tensor of ids (then ``samples``/``seq_len``
            are its shape, and under torchrun each rank passes its own); data criteria need
            it, weight criteria use random ids to verify.
        samples, seq_len: calibration windows; ``batch_size`` of them run at once.
        skip_blocks: ``(first, last)`` blocks kept whole. Their counts then differ from the
            pruned blocks', which ``config.json`` cannot say: refused (see README).
        feed: ``"pruned"`` (the next block sees the pruned block's output) or ``"original"``.
        bias_compensation: FLAP's bias compensation (default: on for ``"flap"`` only).
        verify: check every pruned block against its masked original (default on).
        seed: seeds the calibration windows (rank ``r`` of a torchrun job uses ``seed + r``).
        overwrite: replace a checkpoint already in ``output`` (by default a folder that is not
            empty is refused).
        planned: ``{block: removed}`` from a plan, replayed instead of scored (use
            :func:`surgery.blockwise.replay.replay_checkpoint`).

    Memory: on glibc this sets the allocator's mmap threshold to 1 MiB for the process, so
    that freed tensors go back to the system at once instead of piling up in the heap.
    """
    check_ratio(ratio, "ratio")
    if head_ratio is not None:
        check_ratio(head_ratio, "head_ratio")
    if feed not in FEEDS:
        raise ArgumentError(f"feed must be one of {FEEDS}, got {feed!r}")
    if tuple(check_skip_blocks(skip_blocks)) != (0, 0):
        raise ArgumentError("skip_blocks would leave blocks with other head counts and widths than the pruned ones, "
                            "and config.json holds one count per model, so from_pretrained could not load the "
                            "result; this path writes standard checkpoints only. Load the model whole and use "
                            "surgery.prune(..., skip_blocks=...) with surgery.save instead")
    source, out = Path(checkpoint), Path(output)
    ckpt = Checkpoint(source)
    _check_output(source, out, overwrite)
    crit = _criteria.get(criterion)
    if crit.needs_data and calibration is None and planned is None:
        raise ArgumentError(f"criterion {criterion!r} scores channels from activations: give calibration=<a text "
                            f"file or a tensor file of token ids> (--calibration FILE)")
    compensate_bias = (criterion == "flap") if bias_compensation is None else bias_compensation
    config = _config(source)
    head_ratio, head_note = loadable_head_ratio(config, ratio if head_ratio is None else head_ratio,
                                                explicit=head_ratio is not None)
    model, blocks_name, blocks = skeleton(copy.deepcopy(config))
    rank, world = _rank()
    ids = calibration_ids(calibration, source, samples=samples, seq_len=seq_len, seed=seed + rank,
                          vocab_size=getattr(config, "vocab_size", None))
    started = time.perf_counter()
    _mmap_big_tensors()
    inside = tuple(f"{blocks_name}.{i}." for i in range(len(blocks)))
    outer = [k for k in ckpt.keys() if not k.startswith(inside)]
    head = _output_head(model)  # not needed to compute the blocks' inputs: stays on meta
    loaded = materialize(model, "", ckpt, skip=(blocks_name,) + ((head,) if head else ()))
    _check_keys(outer, loaded, head)
    hidden, calls = block_inputs(model, blocks, ids)
    release(model)
    ckpt.close()
    writer = ShardWriter(out, len(blocks) + 1)
    created = rank == 0 and not out.exists()
    try:
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            writer.write({k: ckpt.get(k) for k in outer})
            ckpt.close()
        job = _Job(ckpt, config, crit, dict(ratio=ratio, head_ratio=head_ratio, verify=verify, criterion=criterion),
                   compensate_bias, batch_size, blocks_name)
        job.head_note, job.index_attrs, job.planned = head_note, index_attributes(blocks), planned
        records = []
        for i, block in enumerate(tqdm(blocks, desc="pruning blocks", unit="block", disable=not progress or rank)):
            record, hidden = job.block(i, block, calls[i], hidden, feed)
            records.append(record)
            tensors = job.tensors(i, block) if rank == 0 else {}
            release(block)
            job.release_graphs()
            _free()  # the pruner's graph and copies form cycles; free them before writing
            if rank == 0:
                writer.write(tensors)
            del tensors
        plan = _plan(job, records, source, calibration, ids, seed, feed, world,
                     time.perf_counter() - started)
        if rank == 0:
            job.new_config.save_pretrained(out)
            copy_side_files(source, out)
            (out / PLAN_FILE).write_text(json.dumps(plan, indent=1))
            writer.finish()  # last: the checkpoint is complete only once its index exists
    except BaseException:
        if rank == 0:
            _clear(out, created)
        raise
    return plan


class _Job:
    """What stays the same over the blocks: the checkpoint, the criterion, the first pruned
    block's config changes and shapes (every later block must match them)."""

    def __init__(self, ckpt: Checkpoint, config: Any, crit: Any, options: dict, compensate_bias: bool,
                 batch_size: int, blocks_name: str) -> None:
        self.ckpt, self.config, self.crit, self.options = ckpt, config, crit, options
        self.compensate_bias, self.batch_size, self.blocks_name = compensate_bias, batch_size, blocks_name
        self.new_config = copy.deepcopy(config)
        self.changes: list | None = None
        self.shapes: dict | None = None
        self.zero_biases: set = set()
        self.dtype = ckpt.float_dtype()
        self.head_note = ""
        self.graphs: dict = {}  # {block structure: channel graph captured on the first such block}
        self.reused: set = set()
        self.index_attrs: set = set()
        self.planned: dict | None = None  # {block: removed} when replaying a plan

    def prefix(self, i: int) -> str:
        return f"{self.blocks_name}.{i}."

    def block(self, i: int, block: nn.Module, call, hidden: torch.Tensor, feed: str) -> tuple[dict, torch.Tensor]:
        """Load, score, prune, verify, compensate block ``i``; returns its record and the next hidden states."""
        _own_config(block)
        materialize(block, self.prefix(i), self.ckpt)
        self.ckpt.close()  # the block is copied out: its mapped pages need not stay resident
        rows = [slice(s, s + self.batch_size) for s in range(0, hidden.shape[0], self.batch_size)]
        batches = [call.inputs(hidden[r], r) for r in rows]
        widths = {n: tuple(m.weight.shape) for n, m in block.named_modules() if isinstance(m, nn.Linear)}
        sums = input_sums(block, batches, lambda m, b: m(**b)) if self.compensate_bias else {}
        originals = _outputs(block, batches) if feed == "original" else None
        key = structure(block, self.index_attrs)
        graph = rebind(self.graphs[key], block, batches[0]) if key in self.graphs else None
        pruner = Pruner(block, batches[0], inplace=True, attention="heads", graph=graph,
                        data=batches if self.crit.needs_data and self.planned is None else None, **self.options)
        if self.planned is not None:
            pruner.criterion = Planned(self.planned.get(i, {}))
        with warnings.catch_warnings():  # the first block's warnings would repeat for every block
            warnings.simplefilter("ignore")
            pruner.step()
        graph, removed = pruner.last_step
        self.graphs.setdefault(key, graph)
        keeps = getattr(block, KEEPS)
        compensated = compensate(block, keeps, self._weights(i, keeps), sums) if self.compensate_bias else []
        self._follow(i, block, graph, removed, compensated)
        if self.planned is not None and _removed(keeps, widths) != self.planned.get(i, {}):
            raise ArgumentError(f"block {i} does not replay: the plan's channels are not what its ratios select on "
                                f"this checkpoint (another checkpoint, or an edited plan)")
        record = {"block": i, "captured": key not in self.reused, "verification": str(pruner.verification),
                  "exact": bool(pruner.verification.exact), "max_error": pruner.verification.max_error,
                  "removed": _removed(keeps, widths), "bias_compensated": compensated}
        self.reused.add(key)
        nxt = originals if originals is not None else _outputs(block, batches)
        return record, torch.cat(nxt)

    def release_graphs(self) -> None:
        """The cached graphs' traced modules still hold the unpruned layers the rewrite
        replaced: send them to meta (rebind reads the next block's own layers)."""
        for graph in self.graphs.values():
            release(graph.gm)

    def _weights(self, i: int, keeps: dict) -> dict:
        names = {name for name, role in keeps if role == "in"}
        weights = {n: self.ckpt.get(self.prefix(i) + n + ".weight").float() for n in names
                   if self.prefix(i) + n + ".weight" in self.ckpt}
        self.ckpt.close()
        return weights

    def _follow(self, i: int, block: nn.Module, graph, removed: np.ndarray, compensated: list) -> None:
        """The first pruned block sets the config changes and shapes; later ones must agree."""
        changes, uneven = config_changes(self.config, graph, removed)
        if uneven:
            raise ArgumentError(f"block {i} was pruned to uneven counts ({', '.join(uneven)}), which config.json "
                                f"cannot describe")
        if self.changes is None:
            self.changes = changes
            apply_changes(self.new_config, changes)
            _check_loadable(self.new_config, changes)
            if compensated:
                self.new_config, self.zero_biases = bias_switches(
                    self.new_config, lambda c: skeleton(c)[2][i], set(compensated))
        elif changes != self.changes:
            raise ArgumentError(f"block {i} changes the config as {changes}, block 0 as {self.changes}: the blocks "
                                f"differ in structure, so one config.json cannot describe them")
        _add_zero_biases(block, self.zero_biases)
        shapes = {k: tuple(v.shape) for k, v in block.state_dict().items()}
        if self.shapes is None:
            fresh = {k: tuple(v.shape) for k, v in skeleton(self.new_config)[2][i].state_dict().items()}
            if fresh != shapes:
                diff = sorted(k for k in set(fresh) | set(shapes) if fresh.get(k) != shapes.get(k))[:3]
                raise ArgumentError(f"the config.json written for the pruned model would build other shapes than the "
                                    f"pruned block's ({', '.join(diff)}): this family derives its shapes in a way "
                                    f"the config keys do not follow; prune it whole with surgery.prune instead")
            self.shapes = shapes
        elif shapes != self.shapes:
            raise ArgumentError(f"block {i} has other shapes after pruning than block 0: one config.json cannot "
                                f"describe both")

    def tensors(self, i: int, block: nn.Module) -> dict:
        """The pruned block's tensors under their checkpoint keys, in the checkpoint's dtypes."""
        out = {}
        for name, t in block.state_dict().items():
            key = self.prefix(i) + name
            dtype = self.ckpt.dtype_of(key) if key in self.ckpt else self.dtype
            out[key] = t.detach().to(dtype) if t.is_floating_point() else t.detach()
        return out


def index_attributes(blocks: list) -> set:
    """Names of the int attributes that number the blocks (``layer_idx``: block ``i`` holds
    ``i`` wherever it has one); the structure check ignores them."""
    seen: dict = {}
    for i, block in enumerate(blocks):
        for module in block.modules():
            for k, v in vars(module).items():
                if type(v) is int and not k.startswith("_"):
                    seen.setdefault(k, set()).add(v == i)
    return {k for k, same in seen.items() if same == {True}} if len(blocks) > 1 else set()


def loadable_head_ratio(config: Any, head_ratio: float, explicit: bool) -> tuple[float, str]:
    """``(head ratio, note)``: the requested fraction of heads, or, when the config class would
    refuse the head count it leaves (transformers 5 checks ``hidden_size % num_attention_heads``
    for LLaMA), the largest smaller fraction it accepts, with a note saying so. An explicit
    ``head_ratio`` the config refuses raises instead."""
    heads = getattr(config, "num_attention_heads", None)
    if type(heads) is not int or not hasattr(config, "validate"):
        return head_ratio, ""
    wanted = int(head_ratio * heads)
    for removed in range(wanted, -1, -1):
        if _valid(_with_heads(config, heads - removed)):
            break
    if removed == wanted:
        return head_ratio, ""
    why = _why(_with_heads(config, heads - wanted))
    if explicit:
        more = next((r for r in range(wanted + 1, heads) if _valid(_with_heads(config, heads - r))), None)
        near = [f"{r / heads:.4g} ({heads - r} heads)" for r in (removed, more) if r is not None]
        raise ArgumentError(f"head_ratio={head_ratio} leaves {heads - wanted} of {heads} heads, which "
                            f"{type(config).__name__} refuses ({why}), so from_pretrained could not load the result; "
                            f"the nearest head ratios it accepts: {', '.join(near)}")
    note = f"{type(config).__name__} refuses {heads - wanted} heads ({why}); removed {removed} of {heads} heads"
    warnings.warn(f"{note} (give head_ratio to choose)", stacklevel=user_stacklevel())
    return (removed + 0.5) / heads, note


def _with_heads(config: Any, kept: int) -> Any:
    trial = copy.deepcopy(config)
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None)
    trial.num_attention_heads = kept
    if type(kv) is int and kv != heads and kept * kv % heads == 0:
        trial.num_key_value_heads = kept * kv // heads
    elif type(kv) is int and kv == heads:
        trial.num_key_value_heads = kept
    if getattr(trial, "head_dim", None) is None:
        trial.head_dim = config.hidden_size // heads
    return trial


def _valid(config: Any) -> bool:
    return not _why(config)


def _why(config: Any) -> str:
    try:
        config.validate()
    except Exception as err:  # noqa: BLE001  (the config class's own validators raise various types)
        return str(getattr(err, "__cause__", None) or err).strip().splitlines()[-1]
    return ""


def _check_loadable(config: Any, changes: list) -> None:
    why = _why(config) if hasattr(config, "validate") else ""
    if why:
        raise ArgumentError(f"the pruned config ({', '.join(f'{k} {a} -> {b}' for k, a, b in changes)}) is refused by "
                            f"{type(config).__name__}: {why}; from_pretrained could not load it. Choose another "
                            f"ratio/head_ratio")


def _own_config(block: nn.Module) -> None:
    """Give the block a private copy of the unpruned config: some families read it in their
    forward (Phi-3 splits its fused projection by ``config.num_attention_heads``), and the
    rewrite updates the config a block holds, which must not change the blocks after it."""
    copies: dict = {}
    for module in block.modules():
        shared = getattr(module, "config", None)
        if hasattr(shared, "to_dict"):
            module.config = copies.setdefault(id(shared), copy.deepcopy(shared))


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def _mmap_big_tensors() -> None:
    """Allocations of 1 MiB and more are mapped and unmapped directly (glibc raises this
    threshold by itself as big blocks are freed, and then keeps freed tensors in its heap:
    transient copies would stack up into the peak). Process-wide; a no-op off glibc."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 1 << 20)
    except (OSError, AttributeError):
        pass


def _free() -> None:
    """Collect cycles, then hand freed heap memory back to the system (glibc's malloc keeps it
    otherwise, and the next block's peak would build on it)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def _outputs(block: nn.Module, batches: list) -> list:
    with torch.no_grad():
        return [_hidden(block(**b)) for b in batches]


def _hidden(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def _add_zero_biases(block: nn.Module, names: set) -> None:
    for name in names:
        layer = block.get_submodule(name)
        if layer.bias is None:
            layer.bias = nn.Parameter(torch.zeros(layer.out_features, dtype=layer.weight.dtype), requires_grad=False)


def _removed(keeps: dict, widths: dict) -> dict:
    """{layer: {"out"/"in": removed indices}} of the Linear layers, from the kept ones."""
    out: dict = {}
    for (name, role), kept in sorted(keeps.items()):
        if name not in widths or role not in ("out", "in"):
            continue
        size = widths[name][0 if role == "out" else 1]
        out.setdefault(name, {})[role] = np.setdiff1d(np.arange(size), np.asarray(kept)).tolist()
    return out


def _plan(job: _Job, records: list, source: Path, calibration, ids: torch.Tensor, seed: int, feed: str,
          world: int, seconds: float) -> dict:
    return {"format": "torch-surgery-blockwise", "version": 1, "source": str(source),
            "options": {**job.options, "feed": feed, "bias_compensation": job.compensate_bias,
                        **({"criterion": "replay"} if job.planned is not None else {})},
            "calibration": {"file": "tensor" if isinstance(calibration, torch.Tensor) else
                            None if calibration is None else str(calibration), "samples": int(ids.shape[0]),
                            "seq_len": int(ids.shape[1]), "seed": seed, "ranks": world,
                            "tokens_per_rank": int(ids.numel())},
            "config_changes": [list(c) for c in job.changes or []], "head_ratio_note": job.head_note,
            "bias_switches": sorted(k for k, v in job.new_config.to_dict().items()
                                    if k.endswith("bias") and v is True and getattr(job.config, k, None) is False),
            "seconds": round(seconds, 1), "blocks": records}


def _config(source: Path) -> Any:
    from transformers import AutoConfig
    try:
        return AutoConfig.from_pretrained(source)
    except (ValueError, KeyError, OSError) as err:
        raise ArgumentError(f"{str(source)!r}: transformers cannot read its config.json ({type(err).__name__}: "
                            f"{str(err).splitlines()[0] if str(err) else ''}); an unknown architecture needs a "
                            f"transformers version that has it") from None


def _check_output(source: Path, out: Path, overwrite: bool) -> None:
    if out.resolve() == source.resolve():
        raise ArgumentError(f"output {str(out)!r} is the checkpoint folder itself; give a new folder")
    if out.exists() and not out.is_dir():
        raise ArgumentError(f"output {str(out)!r} is a file; give a folder")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ArgumentError(f"output {str(out)!r} is not empty; give a new folder, or overwrite=True "
                                f"(--overwrite) to replace what is there")
        _clear(out, created=False)


def _output_head(model: nn.Module) -> str:
    """The qualified name of the output head (Hugging Face's ``get_output_embeddings``), or ""."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return next((n for n, m in model.named_modules() if m is head), "") if head is not None else ""


def _check_keys(outer: list, loaded: list, head: str) -> None:
    """Every checkpoint tensor outside the blocks was loaded into the model or is the head's."""
    stray = sorted(k for k in set(outer) - set(loaded) if not (head and k.startswith(head + ".")))
    if stray:
        raise ArgumentError(f"the checkpoint holds tensors its config.json does not build ({', '.join(stray[:3])}"
                            f"{', ...' if len(stray) > 3 else ''}); they would be lost, so nothing was written")


def _clear(out: Path, created: bool) -> None:
    """Nothing half-written is left behind: the folder goes if this run made it, else its files."""
    if created:
        shutil.rmtree(out, ignore_errors=True)
    elif out.is_dir():
        for path in out.iterdir():
            if path.is_file():
                path.unlink()


def copy_side_files(source: Path, out: Path) -> None:
    """Tokenizer, generation config and other small files; never weights, the index or config.json."""
    for path in source.iterdir():
        if path.is_file() and path.name not in ("config.json", INDEX, SINGLE, PLAN_FILE) \
                and not path.name.endswith(_WEIGHT_SUFFIXES):
            shutil.copy2(path, out / path.name)


def _rank() -> tuple[int, int]:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1

