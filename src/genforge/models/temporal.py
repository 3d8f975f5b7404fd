"""Temporal layers that turn the image UNet into a space-time one (factorised, as in Ho et al. 2022's video
diffusion and Make-A-Video): spatial blocks run on every frame as on an image; these layers mix each pixel's
features across frames. Both start as the identity (zero-initialised output), so a space-time network begins
as the image network applied per frame and learns motion on top.

A clip's frames are folded into the batch, (N*T, C, H, W), everywhere in the UNet; a temporal layer unfolds
them to (N*H*W, C, T), mixes, and folds back. Nothing fixes T: frame positions enter attention as sinusoids
of the frame index, so a model trained on 16 frames also runs on 8 or 24.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _groups(ch: int) -> int:
    return math.gcd(32, ch // 4) if ch >= 8 else 1


def frame_positions(frames: int, dim: int, device) -> torch.Tensor:
    """Sinusoidal features (T, dim) of the frame index: attention tells frames apart without a length cap."""
    half = dim // 2
    freqs = torch.exp(-math.log(1_000) * torch.arange(half, device=device, dtype=torch.float32) / half)
    args = torch.arange(frames, device=device, dtype=torch.float32)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], 1)


def _unfold(x: torch.Tensor, frames: int) -> torch.Tensor:
    """(N*T, C, H, W) -> (N*H*W, C, T)."""
    c, h, w = x.shape[1:]
    return x.reshape(-1, frames, c, h * w).permute(0, 3, 2, 1).reshape(-1, c, frames)


def _fold(y: torch.Tensor, frames: int, h: int, w: int) -> torch.Tensor:
    """(N*H*W, C, T) -> (N*T, C, H, W)."""
    c = y.shape[1]
    return y.reshape(-1, h * w, c, frames).permute(0, 3, 2, 1).reshape(-1, c, h, w)


class TemporalConv(nn.Module):
    """A residual pair of 1-D convolutions over time (kernel 3): local motion, a few pixels a frame."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(ch), ch)
        self.conv1, self.conv2 = nn.Conv1d(ch, ch, 3, padding=1), nn.Conv1d(ch, ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        h, w = x.shape[-2:]
        y = _unfold(x, frames)
        y = self.conv2(F.silu(self.conv1(F.silu(self.norm(y)))))
        return x + _fold(y, frames, h, w)


class TemporalAttention(nn.Module):
    """Self-attention across the frames of each pixel: where a digit was and will be, over the whole clip."""

    def __init__(self, ch: int, heads: int = 4):
        super().__init__()
        self.heads = heads if ch % heads == 0 else 1
        self.norm = nn.GroupNorm(_groups(ch), ch)
        self.qkv, self.proj = nn.Conv1d(ch, 3 * ch, 1), nn.Conv1d(ch, ch, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        h, w = x.shape[-2:]
        y = _unfold(x, frames)
        b, c, t = y.shape
        y = self.norm(y) + frame_positions(t, c, y.device).t()[None].to(y.dtype)
        q, k, v = self.qkv(y).reshape(b, 3, self.heads, c // self.heads, t).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)  # (b, heads, t, c / heads)
        return x + _fold(self.proj(out.transpose(-1, -2).reshape(b, c, t)), frames, h, w)


class Temporal(nn.Module):
    """What follows a spatial block in a space-time UNet: a temporal convolution, and attention across frames at
    the low resolutions (where H*W sequences of T are few)."""

    def __init__(self, ch: int, attend: bool):
        super().__init__()
        self.conv = TemporalConv(ch)
        self.attn = TemporalAttention(ch) if attend else None

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        x = self.conv(x, frames)
        return self.attn(x, frames) if self.attn is not None else x
