"""Windowed attention whose attention width is its own (read from the q/k/v weight), not
its input's: what a torchvision Swin block runs once whole heads are removed while the
stream keeps its width.

torchvision's ``shifted_window_attention`` splits q/k/v into ``C // num_heads`` dims per
head with ``C`` the *input* width, so heads cannot go on their own. :func:`window_attention`
takes the same arguments and computes the same result when the widths agree; with ``A =
qkv_weight.shape[0] // 3`` it splits into ``A // num_heads`` dims and projects ``A`` back
to the stream. The rewrite puts it in place of the torchvision call (the pruned model is
then a ``torch.fx.GraphModule``).

Example:
    >>> import torch
    >>> from torchvision.models.swin_transformer import shifted_window_attention
    >>> g = torch.Generator().manual_seed(0)
    >>> x, qkv, proj = (torch.randn(*s, generator=g) for s in ((1, 8, 8, 16), (48, 16), (16, 16)))
    >>> bias = torch.randn(1, 2, 16, 16, generator=g)
    >>> a = shifted_window_attention(x, qkv, proj, bias, [4, 4], 2, [2, 2], training=False)
    >>> b = window_attention(x, qkv, proj, bias, [4, 4], 2, [2, 2], training=False)
    >>> torch.allclose(a, b, atol=1e-6)
    True
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["window_attention"]


def window_attention(input: torch.Tensor, qkv_weight: torch.Tensor, proj_weight: torch.Tensor,
                     relative_position_bias: torch.Tensor, window_size: list, num_heads: int, shift_size: list,
                     attention_dropout: float = 0.0, dropout: float = 0.0, qkv_bias: torch.Tensor | None = None,
                     proj_bias: torch.Tensor | None = None, logit_scale: torch.Tensor | None = None,
                     training: bool = True) -> torch.Tensor:
    """Shifted-window multi-head attention over ``input[B, H, W, C]`` (the arguments of
    torchvision's ``shifted_window_attention``), attention width ``qkv_weight.shape[0] // 3``."""
    B, H, W, C = input.shape
    wh, ww = window_size
    x = F.pad(input, (0, 0, 0, (ww - W % ww) % ww, 0, (wh - H % wh) % wh))
    Hp, Wp = x.shape[1], x.shape[2]
    shift = (0 if wh >= Hp else shift_size[0], 0 if ww >= Wp else shift_size[1])
    if any(shift):
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    windows = _windows(x, wh, ww)  # [B * nW, wh * ww, C]
    width = qkv_weight.shape[0] // 3
    d = width // num_heads
    if logit_scale is not None and qkv_bias is not None:  # Swin V2 has no key bias
        qkv_bias = qkv_bias.clone()
        qkv_bias[width:2 * width] = 0
    n, tokens = windows.shape[0], windows.shape[1]
    q, k, v = F.linear(windows, qkv_weight, qkv_bias).reshape(n, tokens, 3, num_heads, d).permute(2, 0, 3, 1, 4)
    if logit_scale is not None:  # cosine attention
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * torch.clamp(logit_scale, max=math.log(100.0)).exp()
    else:
        attn = (q * d ** -0.5) @ k.transpose(-2, -1)
    attn = attn + relative_position_bias
    if any(shift):
        mask = _shift_mask(Hp, Wp, wh, ww, shift, x)  # [nW, tokens, tokens]
        attn = (attn.view(B, mask.shape[0], num_heads, tokens, tokens) + mask[None, :, None]).flatten(0, 1)
    attn = F.dropout(F.softmax(attn, dim=-1), p=attention_dropout, training=training)
    out = (attn @ v).transpose(1, 2).reshape(n, tokens, width)
    out = F.dropout(F.linear(out, proj_weight, proj_bias), p=dropout, training=training)
    out = out.view(B, Hp // wh, Wp // ww, wh, ww, -1).permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, -1)
    if any(shift):
        out = torch.roll(out, shifts=shift, dims=(1, 2))
    return out[:, :H, :W, :].contiguous()


def _windows(x: torch.Tensor, wh: int, ww: int) -> torch.Tensor:
    B, Hp, Wp, C = x.shape
    x = x.view(B, Hp // wh, wh, Wp // ww, ww, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, wh * ww, C)


def _shift_mask(Hp: int, Wp: int, wh: int, ww: int, shift: tuple, like: torch.Tensor) -> torch.Tensor:
    """-100 between tokens of one window that came from different regions before the roll."""
    def regions(n: int, w: int, s: int) -> torch.Tensor:
        r = torch.zeros(n, device=like.device)
        if s:  # no roll along this axis: one region
            r[n - w:] = 1
            r[n - s:] = 2
        return r
    ids = regions(Hp, wh, shift[0])[:, None] * 3 + regions(Wp, ww, shift[1])[None, :]
    ids = _windows(ids[None, :, :, None], wh, ww).squeeze(-1)  # [nW, tokens]
    return (ids[:, None, :] != ids[:, :, None]).to(like.dtype) * -100.0
