"""Bring your own architecture: a custom function, a custom parametric layer and an
untraceable block, each taught to the engine in a few lines.

    python examples/custom_architecture.py
"""
from __future__ import annotations

import warnings

import torch
import torch.fx
import torch.nn as nn

import surgery
from surgery.ops.conv import ConvHandler


@torch.fx.wrap  # fx keeps calls to it as one node instead of tracing inside
def soft_gate(x: torch.Tensor) -> torch.Tensor:
    """A custom activation: channels pass through unchanged."""
    return x * torch.sigmoid(1.5 * x)


class ChannelAffine(nn.Module):
    """A custom parametric layer: one scale and shift per channel (a fused kernel in real life)."""
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        return torch.addcmul(self.bias[:, None, None], x, self.weight[:, None, None])


class DynamicBlock(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace this forward."""
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        # the branch must not depend on channel values (x.mean() would: removing channels changes
        # it, and verification refuses such a rewrite); finiteness does not change
        if torch.isfinite(x).all():
            return x + self.conv(x)
        return x


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.affine = ChannelAffine(16)
        self.block = DynamicBlock(16)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = soft_gate(self.affine(self.stem(x)))
        return self.head(self.block(x).mean((2, 3)))


# (a) rules: how channels flow through each new function / module type -------------
surgery.extend.register_function(soft_gate, rule=surgery.extend.passthrough)


def channel_affine_rule(ctx, node):
    return surgery.extend.per_channel(ctx, node, dim=1)   # one parameter per channel of dim 1


def dynamic_block_rule(ctx, node):
    """Output channels are the input channels; the inner conv reads and writes them."""
    axes = ctx.axes(node.args[0]) or {}
    if 1 in axes:
        ctx.add_slot(node.target, "out", "per_channel", axes[1])
    return dict(axes)


# ... and handlers: how to slice their parameters --------------------------------------
class ChannelAffineHandler(surgery.extend.PerChannelHandler):
    size_attr, tensors = "channels", ("weight", "bias")


# one registration per layer type: its rule and its handler together
surgery.extend.register_layer(ChannelAffine, rule=channel_affine_rule, handler=ChannelAffineHandler())


class DynamicBlockHandler(surgery.extend.Handler):
    replaces = ()

    def prune(self, module, keep_in, keep_out):
        keep = keep_out if keep_out is not None else keep_in
        new = DynamicBlock.__new__(DynamicBlock)
        new.__dict__.update(module.__dict__)
        new._modules = dict(module._modules)
        new.conv = ConvHandler().prune(module.conv, keep, keep)
        return new

    def slices(self, module, role):
        return module.conv.weight.flatten(1)

    def mask(self, module, keep_in, keep_out):
        """For verification: the inner conv ignores removed input channels."""
        keep = keep_out if keep_out is not None else keep_in
        ConvHandler().mask(module.conv, keep, None)
        return module


def main() -> float:
    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(2, 3, 16, 16)

    # (c) an untraceable model: the error names the module, the line and the fix
    try:
        surgery.trace(model, x)
    except surgery.TraceError as err:
        print("TraceError:", str(err).splitlines()[0][:160], "...")

    # (b) mark it as a leaf: alone, that freezes the channels it touches (with a warning) ...
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frozen = surgery.trace(model, x, leaf_modules=[DynamicBlock])
    print(f"as a bare leaf: {len(frozen.prunable_groups)} prunable groups; {str(caught[0].message)[:90]} ...")
    # ... with a rule and a handler registered, its channels prune too
    surgery.extend.register_layer(DynamicBlock, rule=dynamic_block_rule, handler=DynamicBlockHandler())
    graph = surgery.trace(model, x, leaf_modules=[DynamicBlock])
    print(graph.summary())

    model64 = surgery.testing.randomize(Net().double().eval(), seed=0)
    x64 = x.double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruned = surgery.prune(model64, x64, ratio=0.5, leaf_modules=[DynamicBlock])
    err = surgery.testing.max_error(model64, pruned, x64)
    print(f"stem {model64.stem.out_channels} -> {pruned.stem.out_channels} channels, "
          f"affine {pruned.affine.channels}, block conv {pruned.block.conv}; oracle error {err:.1e}")
    return err


if __name__ == "__main__":
    main()
