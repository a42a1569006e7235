"""The config follows the model: after a rewrite, a model with a ``config`` (Hugging Face
transformers' ``PretrainedConfig`` and look-alikes) gets its width and head counts updated,
so ``save_pretrained`` then ``from_pretrained`` rebuilds the pruned shapes.

Only the keys below are touched, and only when every layer that had the old count now
has the same new count; when layers differ the config is left as it was and a warning
says to save with :func:`surgery.save` instead.
"""
from __future__ import annotations

import warnings
from collections import defaultdict

import numpy as np
import torch.nn as nn

from surgery.core.frames import user_stacklevel
from surgery.groups.graph import ChannelGraph

__all__ = ["follow_config", "config_changes", "apply_changes", "WIDTH_KEYS", "HEAD_KEYS"]

WIDTH_KEYS = ("hidden_size", "intermediate_size", "ffn_dim", "n_inner", "n_embd", "d_model", "dim",
              "hidden_dim", "encoder_ffn_dim", "decoder_ffn_dim", "word_embed_proj_dim", "head_dim")
HEAD_KEYS = ("num_attention_heads", "num_key_value_heads", "n_head", "num_heads", "encoder_attention_heads",
             "decoder_attention_heads", "multi_query_group_num")


def config_changes(config, graph: ChannelGraph, removed: np.ndarray) -> tuple[list, list]:
    """``(changed, uneven)`` for a config: the keys a pruning by ``removed`` changes, as
    ``(key, old, new)``, and the keys it cannot describe (layers left with different counts).
    Nothing is modified."""
    gone = graph.removed_mask(removed)
    heads, widths = _head_counts(graph, gone), _widths(graph, gone)
    changed, uneven = [], []
    for keys, counts in ((HEAD_KEYS, heads), (WIDTH_KEYS, widths)):
        for key in keys:
            old = getattr(config, key, None)
            if type(old) is not int or old not in counts:
                continue
            news = counts[old]
            if len(news) == 1 and next(iter(news)) != old:
                changed.append((key, old, next(iter(news))))
            elif len(news) > 1:
                uneven.append(f"{key} ({old} -> {sorted(news)})")
    return changed, uneven


def apply_changes(config, changed: list) -> None:
    """Set the ``(key, old, new)`` changes on ``config``, pinning ``head_dim`` when head counts
    change (``hidden_size // num_attention_heads`` no longer gives it)."""
    head_dim = _head_dim(config)
    for key, _, new in changed:
        setattr(config, key, new)
    if changed and head_dim and getattr(config, "head_dim", None) is None:
        config.head_dim = head_dim


def follow_config(model: nn.Module, graph: ChannelGraph, removed: np.ndarray) -> list:
    """Update ``model.config`` in place; returns the keys changed as ``(key, old, new)``."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return []
    changed, uneven = config_changes(config, graph, removed)
    apply_changes(config, changed)
    if changed and not uneven and not _describes(model):
        warnings.warn(f"{type(config).__name__} was updated ({', '.join(f'{k}: {a} -> {b}' for k, a, b in changed)}) "
                      f"but {type(model).__name__}(config) still builds other shapes (its code derives them "
                      f"differently): save with surgery.save(model, path), not save_pretrained.", stacklevel=user_stacklevel())
    if uneven:
        warnings.warn(f"layers were pruned to different sizes, so {type(config).__name__} cannot describe "
                      f"them: {', '.join(uneven)} left as they were. Save with surgery.save(model, path) "
                      f"(save_pretrained would not load back).", stacklevel=user_stacklevel())
    return changed


def _head_dim(config) -> int | None:
    hidden, heads = getattr(config, "hidden_size", None), getattr(config, "num_attention_heads", None)
    explicit = getattr(config, "head_dim", None)
    if type(explicit) is int:
        return explicit
    return hidden // heads if type(hidden) is int and type(heads) is int and heads else None


def _describes(model: nn.Module) -> bool:
    """Whether ``type(model)(model.config)`` has the pruned model's shapes (built on the meta
    device: no memory, no initialisation cost)."""
    import torch
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fresh = type(model)(model.config)
    except Exception:  # noqa: BLE001  (a class that cannot be built from its config alone)
        return False
    want = {k: v.shape for k, v in model.state_dict().items()}
    return all(want.get(k) == v.shape for k, v in fresh.state_dict().items() if k in want)


def _head_counts(graph: ChannelGraph, gone: np.ndarray) -> dict:
    """{heads before: {heads after}} over every head split."""
    counts: dict = defaultdict(set)
    for vars_ in graph.head_vars:
        counts[len(vars_)].add(int((~gone[graph.roots[vars_]]).sum()))
    return counts


def _widths(graph: ChannelGraph, gone: np.ndarray) -> dict:
    """{channels before: {channels after}} over the producing dims of non-head groups."""
    counts: dict = defaultdict(set)
    for g in graph.groups:
        if g.heads or not g.prunable:
            continue
        for m in g.producers or g.members:
            if m.role == "out" and (m.unit_index >= 0).all():
                units = g.units[np.unique(m.unit_index)]
                counts[len(units)].add(int((~gone[units]).sum()))
    return counts
