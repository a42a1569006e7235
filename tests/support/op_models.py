"""One small model per channel rule, used by the exactness tests."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def cbr(cin, cout, k=3, groups=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups), nn.BatchNorm2d(cout), nn.ReLU())


class Head(nn.Module):
    def __init__(self, c, n=5):
        super().__init__()
        self.fc = nn.Linear(c, n)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class Activations(nn.Module):
    """Module and functional activations, dropout, pooling, interpolate, pad."""
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = cbr(3, 12), cbr(12, 12), cbr(12, 12)
        self.acts = nn.Sequential(nn.GELU(), nn.SiLU(), nn.Hardswish(), nn.LeakyReLU(0.1), nn.ELU(),
                                  nn.Dropout(0.5), nn.Identity(), nn.MaxPool2d(2))
        self.head = Head(12)

    def forward(self, x):
        x = self.acts(self.a(x))
        x = F.interpolate(F.gelu(x), scale_factor=2.0, mode="nearest")
        x = torch.sigmoid(self.b(F.pad(x, (1, 1, 1, 1))))
        x = F.avg_pool2d(torch.tanh(x).clamp(-0.5, 0.5).contiguous(), 2)
        return self.head(F.hardswish(self.c(x)))


class Elementwise(nn.Module):
    """add, sub, mul, div between coupled branches, and with scalars."""
    def __init__(self):
        super().__init__()
        self.stem, self.b1, self.b2, self.b3 = cbr(3, 10), cbr(10, 10), cbr(10, 10), cbr(10, 10)
        self.head = Head(10)

    def forward(self, x):
        x = self.stem(x)
        y = self.b1(x) + x
        y = y - self.b2(y) * 0.5
        y = y * torch.sigmoid(self.b3(y))
        y = y / (torch.sigmoid(x) + 1.0)
        return self.head(y.add(x).mul(2.0))


class SqueezeExcite(nn.Module):
    """Broadcast gate [N, C, 1, 1] multiplying [N, C, H, W]."""
    def __init__(self):
        super().__init__()
        self.stem, self.body = cbr(3, 16), cbr(16, 16)
        self.fc1, self.fc2 = nn.Conv2d(16, 4, 1), nn.Conv2d(4, 16, 1)
        self.head = Head(16)

    def forward(self, x):
        x = self.body(self.stem(x))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        return self.head(x * s)


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = cbr(3, 8), cbr(3, 6), cbr(14, 10)
        self.head = Head(17)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], dim=1)
        return self.head(torch.cat((self.c(y), x, y[:, :4]), 1))


class SplitChunk(nn.Module):
    """split (int and list), chunk, getitem slices and narrow on the channel axis."""
    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 24)
        self.p, self.q, self.r = cbr(12, 12), cbr(8, 8), cbr(5, 5)
        self.head = Head(12 + 12 + 8 + 8 + 5 + 3)

    def forward(self, x):
        x = self.stem(x)
        a, b = x.chunk(2, dim=1)
        c, d = torch.split(x, 12, dim=1)
        e, f, g = x.split([8, 8, 8], dim=1)
        h = x[:, 10:15]
        i = x.narrow(1, 20, 3)
        return self.head(torch.cat([self.p(a) + b, c * d, self.q(e) + f, g, self.r(h), i], 1))


class FlattenLinear(nn.Module):
    """flatten / view / reshape of a conv map into Linear layers (each channel -> H*W features)."""
    def __init__(self):
        super().__init__()
        self.a, self.b = cbr(3, 8), cbr(8, 6)
        self.fc1, self.fc2, self.fc3 = nn.Linear(8 * 4 * 4, 20), nn.Linear(6 * 16, 20), nn.Linear(40, 5)
        self.pool = nn.AdaptiveAvgPool2d(4)

    def forward(self, x):
        a = self.pool(self.a(x))
        b = self.pool(self.b(a))
        u = self.fc1(torch.flatten(a, 1))
        v = self.fc2(b.view(b.size(0), -1))
        return self.fc3(torch.cat([u, v.reshape(-1, 20)], 1))


class Permutes(nn.Module):
    """channels-last Linear via permute, back via transpose; a 1x1 map flattened."""
    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 12)
        self.mix = nn.Linear(12, 16)
        self.conv = cbr(16, 8)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        y = self.mix(self.stem(x).permute(0, 2, 3, 1))
        y = self.conv(y.transpose(1, 3).transpose(2, 3))
        return self.head(F.adaptive_max_pool2d(y, 1).flatten(1))


class Reductions(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = cbr(3, 10), cbr(10, 10)
        self.fc = nn.Linear(30, 5)

    def forward(self, x):
        y = self.b(self.a(x))
        return self.fc(torch.cat([y.mean((2, 3)), y.amax(dim=(-1, -2)), y.sum(3).sum(2)], 1))


class Convs(nn.Module):
    """Conv1d, Conv3d, ConvTranspose2d, depthwise (with multiplier) and grouped convs."""
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(3, 12, 3, padding=1)
        self.bn1 = nn.BatchNorm1d(12)
        self.c1b = nn.Conv1d(12, 8, 1)
        self.c3 = nn.Conv3d(1, 6, 3, padding=1)
        self.bn3 = nn.BatchNorm3d(6)
        self.c3b = nn.Conv3d(6, 4, 1)
        self.stem = cbr(3, 16)
        self.dw = nn.Conv2d(16, 32, 3, padding=1, groups=16)
        self.bn_dw = nn.BatchNorm2d(32)
        self.grouped = nn.Conv2d(32, 24, 3, padding=1, groups=4)
        self.bn_g = nn.BatchNorm2d(24)
        self.up = nn.ConvTranspose2d(24, 10, 2, stride=2)
        self.up_g = nn.ConvTranspose2d(10, 10, 3, padding=1, groups=2)
        self.fc = nn.Linear(8 + 4 + 10, 5)

    def forward(self, x):
        s = F.relu(self.bn1(self.c1(x.mean(2)))) 
        s = self.c1b(s).mean(2)
        v = F.relu(self.bn3(self.c3(x[:, :1].unsqueeze(1))))
        v = self.c3b(v).mean((2, 3, 4))
        y = F.relu(self.bn_dw(self.dw(self.stem(x))))
        y = F.relu(self.bn_g(self.grouped(y)))
        y = self.up_g(F.relu(self.up(y)))
        return self.fc(torch.cat([s, v, y.mean((2, 3))], 1))


class Norms(nn.Module):
    """InstanceNorm (affine), GroupNorm (whole groups), PReLU per channel."""
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.inorm = nn.InstanceNorm2d(16, affine=True)
        self.b = nn.Conv2d(16, 16, 3, padding=1)
        self.gn = nn.GroupNorm(4, 16)
        self.act = nn.PReLU(16)
        self.head = Head(16)

    def forward(self, x):
        y = F.relu(self.inorm(self.a(x)))
        return self.head(self.act(self.gn(self.b(y))))


class RawParams(nn.Module):
    """Layer scale, class token and position embedding read through get_attr."""
    def __init__(self, c=12, n=16):
        super().__init__()
        self.patch = nn.Conv2d(3, c, 8, stride=8)
        self.cls = nn.Parameter(torch.zeros(1, 1, c))
        self.pos = nn.Parameter(torch.zeros(1, n + 1, c))
        self.gamma = nn.Parameter(torch.ones(c))
        self.fc1, self.fc2 = nn.Linear(c, 24), nn.Linear(24, c)
        self.head = nn.Linear(c, 5)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1) + self.pos
        t = t + self.gamma * self.fc2(F.gelu(self.fc1(t)))
        return self.head(t[:, 0])


class Shuffle(nn.Module):
    """ShuffleNet-style chunk, branch, cat and view/transpose/view channel shuffle."""
    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 16)
        self.branch = cbr(8, 8)
        self.branch2 = cbr(8, 8)
        self.head = Head(16)

    @staticmethod
    def shuffle(x, groups=2):
        n, c, h, w = x.size()
        x = x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous()
        return x.view(n, -1, h, w)

    def forward(self, x):
        x = self.stem(x)
        a, b = x.chunk(2, dim=1)
        x = self.shuffle(torch.cat([a, self.branch(b)], 1))
        a, b = x.chunk(2, dim=1)
        x = self.shuffle(torch.cat([a, self.branch2(b)], 1))
        return self.head(x)


class ShuffleModule(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 12)
        self.shuffle = nn.ChannelShuffle(3)
        self.conv = cbr(12, 12)
        self.head = Head(12)

    def forward(self, x):
        return self.head(self.conv(self.shuffle(self.stem(x))))


class LiteralReshape(nn.Module):
    """A reshape to a stored size (as torchvision's ViT does): the attribute follows the width."""
    def __init__(self):
        super().__init__()
        self.hidden = 10
        self.conv = cbr(3, 10)
        self.fc = nn.Linear(10, 5)

    def forward(self, x):
        y = self.conv(x)
        y = y.reshape(y.shape[0], self.hidden, -1).mean(2)
        return self.fc(y)


class ParamMatmul(nn.Module):
    """x @ W with a raw weight parameter, then a Linear."""
    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 8)
        self.w = nn.Parameter(torch.randn(8, 12))
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        y = F.adaptive_avg_pool2d(self.stem(x), 1).flatten(1)
        return self.fc(F.relu(y @ self.w))


class ShapedAs(nn.Module):
    """reshape_as / view_as / expand_as: sizes read from another tracked tensor when it runs."""
    def __init__(self):
        super().__init__()
        self.a, self.b = cbr(3, 10), cbr(10, 10)
        self.head = Head(10)

    def forward(self, x):
        y = self.a(x)
        z = y.flatten(2).reshape_as(y)
        gate = torch.sigmoid(y.mean((2, 3), keepdim=True)).expand_as(y)
        return self.head(self.b(z * gate).view_as(y) + y)


class Embed(nn.Module):
    """Embedding -> Linear over the embedding dim."""
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 16)
        self.fc1, self.fc2 = nn.Linear(16, 12), nn.Linear(12, 5)

    def forward(self, tokens):
        return self.fc2(F.relu(self.fc1(self.emb(tokens))).mean(1))


class LayerNormMLP(nn.Module):
    """LayerNorm over a pruned dim: not exact by design; shapes and forward are checked."""
    def __init__(self):
        super().__init__()
        self.fc1, self.ln, self.fc2 = nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(self.ln(F.relu(self.fc1(x))))


IMAGE_MODELS = [Activations, Elementwise, SqueezeExcite, Concat, SplitChunk, FlattenLinear, Permutes,
                Reductions, Convs, Norms, RawParams, Shuffle, ShuffleModule, LiteralReshape, ParamMatmul, ShapedAs]
