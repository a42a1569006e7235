"""Random architectures for property-based tests: a program of ops over a list of tensors.

Every tensor keeps the spatial size (padding 'same'), so any two can be combined.
The forward interprets a static program, so torch.fx traces it.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import strategies as st

ACTS = {"relu": nn.ReLU, "gelu": nn.GELU, "none": nn.Identity, "hswish": nn.Hardswish}


class RandomNet(nn.Module):
    def __init__(self, program: list, channels: list, num_classes: int = 3):
        super().__init__()
        self.program = program
        self.layers = nn.ModuleDict()
        for i, (op, *args) in enumerate(program):
            if op == "conv":
                _, cin, cout, groups, k, act = args
                self.layers[str(i)] = nn.Sequential(
                    nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups), nn.BatchNorm2d(cout), ACTS[act]())
            elif op == "gate":
                _, c = args
                r = max(1, c // 2)
                self.layers[str(i)] = nn.Sequential(nn.Conv2d(c, r, 1), nn.ReLU(), nn.Conv2d(r, c, 1), nn.Sigmoid())
            elif op == "tie":  # a conv sharing its weight with an earlier one (tied weights)
                _, j = args
                first = self.layers[str(j)][0]
                conv = nn.Conv2d(first.in_channels, first.out_channels, first.kernel_size,
                                 padding=first.padding, groups=first.groups)
                conv.weight = first.weight
                self.layers[str(i)] = nn.Sequential(conv, nn.ReLU())
            elif op == "fbn":  # a norm layer whose forward calls F.batch_norm with keyword weights
                self.layers[str(i)] = nn.BatchNorm2d(args[1])
            elif op == "clamp":  # a tensor-valued bound
                self.register_parameter(f"bound{i}", nn.Parameter(torch.rand(1, args[1], 1, 1) + 0.5))
            elif op == "attn":  # tokens, q/k/v projections, attention scaled by sqrt(head dim)
                c = args[1]
                self.layers[str(i)] = nn.ModuleList([nn.Linear(c, c) for _ in range(3)])
        self.head = nn.Linear(channels[-1], num_classes)

    def forward(self, x):
        env = [x]
        for i, (op, *args) in enumerate(self.program):
            if op == "conv":
                env.append(self.layers[str(i)](env[args[0]]))
            elif op == "add":
                env.append(env[args[0]] + env[args[1]])
            elif op == "mul":
                env.append(env[args[0]] * env[args[1]])
            elif op == "cat":
                env.append(torch.cat([env[j] for j in args[0]], dim=1))
            elif op == "chunk":
                a, b = env[args[0]].chunk(2, dim=1)
                env += [a, b]
            elif op == "split":
                a, b = torch.split(env[args[0]], args[1], dim=1)
                env += [a, b]
            elif op == "slice":
                env.append(env[args[0]][:, args[1]:args[2]])
            elif op == "shuffle":
                t, g = env[args[0]], args[1]
                n, c, h, w = t.shape
                env.append(t.view(n, g, c // g, h, w).transpose(1, 2).reshape(n, c, h, w))
            elif op == "gate":
                t = env[args[0]]
                env.append(t * self.layers[str(i)](t.mean((2, 3), keepdim=True)))
            elif op == "tie":
                env.append(self.layers[str(i)](env[args[0]]))
            elif op == "fbn":
                bn = self.layers[str(i)]
                env.append(F.batch_norm(env[args[0]], bn.running_mean, bn.running_var, weight=bn.weight,
                                        bias=bn.bias, training=False))
            elif op == "clamp":
                env.append(torch.clamp(env[args[0]], max=getattr(self, f"bound{i}")))
            elif op == "chunkcat":
                env.append(torch.cat(env[args[0]].chunk(2, 1), 1))
            elif op == "unbindstack":
                env.append(torch.stack(env[args[0]].unbind(1), 1))
            elif op == "attn":
                env.append(self._attention(env[args[0]], self.layers[str(i)]))
        return self.head(env[-1].mean((2, 3)))


    @staticmethod
    def _attention(t, proj):
        n, c, h, w = t.shape
        tokens = t.flatten(2).transpose(1, 2)
        q, k, v = (p(tokens) for p in proj)
        a = (q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])).softmax(-1)
        return (a @ v).transpose(1, 2).reshape(n, c, h, w)


@st.composite
def programs(draw, max_ops: int = 8):
    """(program, channels): channels[i] is the channel count of env[i]; env[0] is the input."""
    channels = [3]
    program = []
    first = draw(st.sampled_from([6, 8, 12]))
    program.append(("conv", 0, 3, first, 1, 3, "relu"))
    channels.append(first)
    for _ in range(draw(st.integers(1, max_ops))):
        _add_op(draw, program, channels)
    if len(channels) - 1 == 0 or channels[-1] == 3:
        program.append(("conv", len(channels) - 1, channels[-1], 8, 1, 3, "relu"))
        channels.append(8)
    return program, channels


def _pick(draw, channels, pred=lambda c: True):
    idx = [i for i in range(1, len(channels)) if pred(channels[i])]
    return draw(st.sampled_from(idx)) if idx else None


def _add_op(draw, program, channels):
    op = draw(st.sampled_from(["conv", "conv", "add", "mul", "cat", "chunk", "split", "slice",
                               "shuffle", "gate", "dwconv", "gconv", "tie", "fbn", "clamp", "chunkcat",
                               "unbindstack", "attn"]))
    src = _pick(draw, channels)
    c = channels[src]
    if op == "conv":
        cout = draw(st.sampled_from([4, 6, 8, 12]))
        program.append(("conv", src, c, cout, 1, draw(st.sampled_from([1, 3])), draw(st.sampled_from(list(ACTS)))))
        channels.append(cout)
    elif op in ("add", "mul"):
        other = _pick(draw, channels, lambda k: k == c)
        program.append((op, src, other))
        channels.append(c)
    elif op == "cat":
        other = _pick(draw, channels)
        program.append(("cat", [src, other]))
        channels.append(c + channels[other])
    elif op == "chunk" and c % 2 == 0:
        program.append(("chunk", src))
        channels.extend([c // 2, c // 2])
    elif op == "split" and c >= 3:
        a = draw(st.integers(1, c - 1))
        program.append(("split", src, [a, c - a]))
        channels.extend([a, c - a])
    elif op == "slice" and c >= 3:
        lo = draw(st.integers(0, c - 2))
        hi = draw(st.integers(lo + 1, c))
        program.append(("slice", src, lo, hi))
        channels.append(hi - lo)
    elif op == "shuffle" and c % 2 == 0:
        program.append(("shuffle", src, 2))
        channels.append(c)
    elif op == "gate":
        program.append(("gate", src, c))
        channels.append(c)
    elif op == "dwconv":
        mult = draw(st.sampled_from([1, 2]))
        program.append(("conv", src, c, c * mult, c, 3, "relu"))
        channels.append(c * mult)
    elif op == "tie":
        convs = [j for j, p in enumerate(program) if p[0] == "conv" and p[2] == c and p[4] == 1]
        if convs:
            j = draw(st.sampled_from(convs))
            program.append(("tie", src, j))
            channels.append(program[j][3])
    elif op in ("fbn", "clamp", "unbindstack", "attn") or (op == "chunkcat" and c % 2 == 0):
        program.append((op, src, c))
        channels.append(c)
    elif op == "gconv" and c % 2 == 0:
        program.append(("conv", src, c, 2 * draw(st.sampled_from([2, 3, 4])), 2, 3, "gelu"))
        channels.append(program[-1][3])
