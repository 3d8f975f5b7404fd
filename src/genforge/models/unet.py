"""The denoising UNet of a diffusion model (Ho et al. 2020; the layout of their CIFAR-10 network, scaled down).

x_t and a time t in [0, 1] in, the network's prediction (noise, v or velocity: the method decides) out, same
shape as x_t. Residual blocks with GroupNorm and SiLU; the time enters each block through a sinusoidal
embedding and an MLP, the class (optional) through an embedding added to it, with one extra "no class" entry
that classifier-free guidance asks for. Self-attention runs at the low resolutions only, where it is cheap.

Video (`frames` > 0): x_t is a clip (N, T, C, H, W); the spatial layers run on every frame and a temporal layer
(models/temporal.py) follows each stage and the middle, mixing frames. Built with frames=0 it is exactly the image
network, weight for weight.

Super-resolution (`low_res` > 0): the low-resolution image, upsampled bicubically inside the network (so an
export's graph does it too), enters as extra input channels beside x_t (SR3, Saharia et al. 2021).

Sized from the image: a stage per halving while the side stays even and at least 4 px (28 -> 14 -> 7;
32 -> 16 -> 8 -> 4; 64 -> ... -> 4 with the stage count capped by `mults`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from genforge.models.temporal import Temporal


def default_mults(size: int) -> tuple[int, ...]:
    """Channel multipliers per stage: 28 px (1, 2, 2), 32 px (1, 2, 2, 2), 64 px (1, 2, 2, 4)."""
    stages, s = 1, size
    while s % 2 == 0 and s // 2 >= 4 and stages < 4:
        s //= 2
        stages += 1
    return (1, 2, 2, 4)[:stages] if size >= 64 else (1,) + (2,) * (stages - 1)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of t in [0, 1], scaled to 0..1000 as the DDPM embedding sees integer steps."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * 1000 * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], 1)


def _groups(ch: int) -> int:
    return math.gcd(32, ch // 4) if ch >= 8 else 1


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(_groups(cin), cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb, cout)
        self.norm2, self.conv2 = nn.GroupNorm(_groups(cout), cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    def __init__(self, ch: int, heads: int = 4):
        super().__init__()
        self.heads = heads if ch % heads == 0 else 1
        self.norm, self.qkv, self.proj = nn.GroupNorm(_groups(ch), ch), nn.Conv2d(ch, 3 * ch, 1), nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)  # (b, heads, hw, c / heads)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module):
    def __init__(self, image_size: int, channels: int, width: int = 32, mults: tuple[int, ...] | None = None,
                 res_blocks: int = 1, attention_below: int = 8, num_classes: int = 0, dropout: float = 0.0,
                 frames: int = 0, low_res: int = 0):
        super().__init__()
        self.image_size, self.channels, self.num_classes = image_size, channels, num_classes
        self.low_res = low_res  # super-resolution: the side of the low-resolution image it is conditioned on (0: none)
        self.frames = frames  # the clip length it was trained on (0: an image model); any length runs
        mults = tuple(mults or default_mults(image_size))
        emb = 4 * width
        self.width = width
        self.time_mlp = nn.Sequential(nn.Linear(width, emb), nn.SiLU(), nn.Linear(emb, emb))
        # index num_classes is "no class": what label dropout trains and guidance subtracts
        self.class_emb = nn.Embedding(num_classes + 1, emb) if num_classes else None
        self.conv_in = nn.Conv2d(channels * (2 if low_res else 1), width, 3, padding=1)

        self.down, skips, ch, res = nn.ModuleList(), [width], width, image_size
        for i, m in enumerate(mults):
            for _ in range(res_blocks):
                self.down.append(_Stage(ResBlock(ch, width * m, emb, dropout), res <= attention_below, width * m, frames))
                ch = width * m
                skips.append(ch)
            if i < len(mults) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
                res = (res + 1) // 2
        self.mid = nn.ModuleList([ResBlock(ch, ch, emb, dropout), Attention(ch), ResBlock(ch, ch, emb, dropout)])
        self.mid_temporal = Temporal(ch, attend=True) if frames else None
        self.up = nn.ModuleList()
        for i, m in reversed(list(enumerate(mults))):
            for _ in range(res_blocks + 1):
                self.up.append(_Stage(ResBlock(ch + skips.pop(), width * m, emb, dropout), res <= attention_below, width * m,
                                      frames))
                ch = width * m
            if i > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1)))
                res *= 2
        self.norm_out, self.conv_out = nn.GroupNorm(_groups(ch), ch), nn.Conv2d(ch, channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None,
                low: torch.Tensor | None = None) -> torch.Tensor:
        """x (N, C, H, W), or (N, T, C, H, W) for a video model; t (N,) in [0, 1]; labels (N,) class indices
        (num_classes: none) or None; low (N, C, low_res, low_res): a super-resolution model's low-resolution
        image, upsampled bicubically here (SR3, Saharia et al. 2021) and concatenated to x as extra channels."""
        if self.low_res:
            if low is None:
                raise ValueError("a super-resolution UNet needs its low-resolution image (low=)")
            x = torch.cat([x, F.interpolate(low, size=x.shape[-2:], mode="bicubic", align_corners=False)], 1)
        emb = self.time_mlp(timestep_embedding(t, self.width))
        if self.class_emb is not None:
            if labels is None:
                labels = torch.full((len(x),), self.num_classes, device=x.device, dtype=torch.long)
            emb = emb + self.class_emb(labels)
        frames = 0
        if self.frames:  # frames folded into the batch: each frame gets its clip's time and label embedding
            n, frames = x.shape[:2]
            x, emb = x.flatten(0, 1), emb[:, None].expand(n, frames, emb.shape[1]).flatten(0, 1)
        h = self.conv_in(x)
        hs = [h]
        for layer in self.down:
            h = layer(h, emb, frames) if isinstance(layer, _Stage) else layer(h)
            hs.append(h)
        h = self.mid[1](self.mid[0](h, emb))
        if self.mid_temporal is not None:
            h = self.mid_temporal(h, frames)
        h = self.mid[2](h, emb)
        for layer in self.up:
            if isinstance(layer, _Stage):
                skip = hs.pop()
                if skip.shape[-1] != h.shape[-1]:  # odd sizes (7 -> 4 -> 8): crop the upsampled map
                    h = h[..., : skip.shape[-2], : skip.shape[-1]]
                h = layer(torch.cat([h, skip], 1), emb, frames)
            else:
                h = layer(h)
        out = self.conv_out(F.silu(self.norm_out(h)))
        return out.unflatten(0, (n, frames)) if frames else out


class _Stage(nn.Module):
    """A residual block, followed by self-attention at low resolutions, and in a video model by a temporal layer."""

    def __init__(self, block: ResBlock, attend: bool, ch: int, frames: int = 0):
        super().__init__()
        self.block, self.attn = block, Attention(ch) if attend else None
        self.temporal = Temporal(ch, attend) if frames else None

    def forward(self, x, emb, frames: int = 0):
        x = self.block(x, emb)
        if self.attn is not None:
            x = self.attn(x)
        return self.temporal(x, frames) if self.temporal is not None else x
