"""Differentiable augmentation (DiffAugment, Zhao et al. 2020) of the images D sees, real and generated.

With few training images D memorises them and its feedback to G turns into noise. Augmenting only the
reals would teach G to make augmented-looking images; DiffAugment instead applies the same random
transformations to real and generated images, every time D looks at them (in D's update and in G's),
and keeps them differentiable so G still gets its gradient through them. The policies, as the paper
describes them:

- color: brightness + U(-0.5, 0.5); saturation x U(0, 2) around each pixel's channel mean; contrast
  x U(0.5, 1.5) around the image mean.
- translation: shift by a whole number of pixels, up to 1/8 of the side in each direction; the
  uncovered border is 0.
- cutout: set a square of half the side, centred anywhere in the image (it may overhang the border), to 0.

0 is mid-grey in the model's [-1, 1] range. Each image draws its own parameters from the generator
passed in (the training step's, so a run repeats and resumes exactly); parameters are drawn on the
generator's device and moved to the images'.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _uniform(x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """One U(0, 1) number per image, shaped to broadcast over (N, C, H, W)."""
    u = torch.rand(x.shape[0], 1, 1, 1, generator=rng, device=rng.device)
    return u.to(device=x.device, dtype=x.dtype)


def _offsets(x: torch.Tensor, low: int, high: int, rng: torch.Generator) -> torch.Tensor:
    """One integer in [low, high] per image, shaped (N, 1, 1) for indexing rows or columns."""
    return torch.randint(low, high + 1, (x.shape[0], 1, 1), generator=rng, device=rng.device).to(x.device)


def color(x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    x = x + (_uniform(x, rng) - 0.5)  # brightness
    grey = x.mean(1, keepdim=True)
    x = (x - grey) * (2.0 * _uniform(x, rng)) + grey  # saturation (a no-op on one channel)
    mean = x.mean((1, 2, 3), keepdim=True)
    return (x - mean) * (_uniform(x, rng) + 0.5) + mean  # contrast


def translation(x: torch.Tensor, rng: torch.Generator, ratio: float = 0.125) -> torch.Tensor:
    n, _, h, w = x.shape
    sy, sx = round(h * ratio), round(w * ratio)
    dy, dx = _offsets(x, -sy, sy, rng), _offsets(x, -sx, sx, rng)
    # Output pixel (i, j) shows input pixel (i - dy, j - dx) of the zero-padded image: a gather, so the
    # gradient flows back to the pixels that moved.
    rows = torch.arange(h, device=x.device).view(1, h, 1) - dy + sy
    cols = torch.arange(w, device=x.device).view(1, 1, w) - dx + sx
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    padded = F.pad(x, (sx, sx, sy, sy)).permute(0, 2, 3, 1)  # N, H, W, C: index rows and columns, keep channels
    return padded[batch, rows, cols].permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, rng: torch.Generator, ratio: float = 0.5) -> torch.Tensor:
    _, _, h, w = x.shape
    ch, cw = round(h * ratio), round(w * ratio)
    top, left = _offsets(x, 0, h - 1, rng) - ch // 2, _offsets(x, 0, w - 1, rng) - cw // 2
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (rows >= top) & (rows < top + ch) & (cols >= left) & (cols < left + cw)
    return x * (~inside).unsqueeze(1).to(x.dtype)


POLICIES = {"color": color, "translation": translation, "cutout": cutout}


def parse_policy(policy: str) -> tuple[str, ...]:
    """"color,translation,cutout" -> the names, in order; "" -> (). Unknown names raise ValueError."""
    names = tuple(p.strip() for p in policy.split(",") if p.strip())
    unknown = [p for p in names if p not in POLICIES]
    if unknown:
        raise ValueError(f"unknown DiffAugment policy {', '.join(unknown)}; use a comma-separated list of "
                         f"{', '.join(POLICIES)}, or \"\" for none")
    return names


def diff_augment(x: torch.Tensor, policy: str, rng: torch.Generator) -> torch.Tensor:
    """Apply `policy`'s transformations in order, each image with its own random parameters; "" returns x."""
    for name in parse_policy(policy):
        x = POLICIES[name](x, rng)
    return x
