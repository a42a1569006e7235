"""nn.Embedding: creates the embedding dim.

Example:
    >>> import torch.nn as nn
    >>> EmbeddingHandler().prune(nn.Embedding(10, 8), None, [0, 3]).embedding_dim
    2
"""
from __future__ import annotations

import torch.fx as fx
import torch.nn as nn

from surgery.ops.context import RuleContext, first_input
from surgery.ops.handler import (Handler, _check, _clone, _index, _select)
from surgery.ops.registry import register_layer


def embedding(ctx: RuleContext, node: fx.Node):
    m, name = ctx.module(), node.target
    axes, shape = first_input(ctx, node)
    out = dict(axes)
    out[len(shape)] = ctx.add_slot(name, "out", "producer", ctx.fresh(m.embedding_dim))
    return out


class EmbeddingHandler(Handler):
    replaces = ("weight",)

    def prune(self, module, keep_in, keep_out):
        new = _clone(module)
        if keep_out is not None:
            k = _index(keep_out, module.weight.device)
            _check(k, module.embedding_dim, module, "embedding")
            _select(new, "weight", 1, k)
            new.embedding_dim = k.numel()
        return new

    def slices(self, module, role):
        return module.weight.t()

    def tensor_dims(self, module, role):
        return [("weight", 1)]


register_layer(nn.Embedding, rule=embedding, handler=EmbeddingHandler())
