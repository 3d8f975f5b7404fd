"""Pixel likelihoods p(x | z) for decoders, as log-probabilities summed over each image.

Two families, both proper probabilities of the data as stored, so a negative log-likelihood is a
number of nats (or bits) that can be compared with published ones:

- Bernoulli on binarised grey images (the protocol of the VAE/IWAE literature on MNIST: each pixel is 1
  with probability equal to its intensity, redrawn every time the image is seen).
- A mixture of discretised logistics per sub-pixel (Salimans et al. 2017, PixelCNN++, without the
  channel autoregression): each 8-bit value owns the probability mass of its bin of width 2/255 in
  [-1, 1]; the two end bins take the tails. With one component it is the plain discretised logistic.

The decoder outputs `params_per_channel(kind, mixtures)` maps per image channel; `x` is float NCHW.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LIKELIHOODS = ("bernoulli", "logistic")
_HALF_BIN = 1.0 / 255.0  # half the width of one 8-bit level in [-1, 1]
_MIN_LOG_SCALE = -7.0


def params_per_channel(kind: str, mixtures: int = 1) -> int:
    return 1 if kind == "bernoulli" else 3 * mixtures


def _logistic_parts(params: torch.Tensor, channels: int, mixtures: int):
    n, _, h, w = params.shape
    p = params.float().view(n, channels, 3, mixtures, h, w)
    return p[:, :, 0], p[:, :, 1], p[:, :, 2].clamp(min=_MIN_LOG_SCALE)  # mixture logits, means, log scales


def log_prob(kind: str, params: torch.Tensor, x: torch.Tensor, mixtures: int = 1) -> torch.Tensor:
    """log p(x | params) per image (N,), in nats. Bernoulli: x in {0, 1}; logistic: x in [-1, 1] on 8-bit levels."""
    if kind == "bernoulli":
        ll = -F.binary_cross_entropy_with_logits(params.float(), x.float(), reduction="none")
        return ll.flatten(1).sum(1)
    logits, means, log_scales = _logistic_parts(params, x.shape[1], mixtures)
    x = x.float().unsqueeze(2)  # (N, C, 1, H, W) against (N, C, K, H, W)
    centered = x - means
    inv_s = torch.exp(-log_scales)
    upper = inv_s * (centered + _HALF_BIN)
    lower = inv_s * (centered - _HALF_BIN)
    log_cdf_upper = upper - F.softplus(upper)  # log sigmoid: the lowest bin takes the whole left tail
    log_sf_lower = -F.softplus(lower)  # log (1 - sigmoid): the highest bin takes the right tail
    mass = torch.sigmoid(upper) - torch.sigmoid(lower)
    mid = inv_s * centered
    # When the bin's mass underflows, the density at its centre times the bin width is the same quantity.
    log_mid = mid - log_scales - 2.0 * F.softplus(mid) + math.log(2 * _HALF_BIN)
    inner = torch.where(mass > 1e-5, torch.log(mass.clamp(min=1e-12)), log_mid)
    ll = torch.where(x < -1 + _HALF_BIN, log_cdf_upper, torch.where(x > 1 - _HALF_BIN, log_sf_lower, inner))
    ll = torch.logsumexp(ll + F.log_softmax(logits, dim=2), dim=2)
    return ll.flatten(1).sum(1)


def mean(kind: str, params: torch.Tensor, channels: int, mixtures: int = 1) -> torch.Tensor:
    """The expected image, float NCHW in [-1, 1] (what sample grids show: smooth, not speckled)."""
    if kind == "bernoulli":
        return torch.sigmoid(params.float()) * 2 - 1
    logits, means, _ = _logistic_parts(params, channels, mixtures)
    return (F.softmax(logits, dim=2) * means.clamp(-1, 1)).sum(2)


def sample(kind: str, params: torch.Tensor, channels: int, rng: torch.Generator, mixtures: int = 1) -> torch.Tensor:
    """One draw of x, float NCHW in [-1, 1] (Bernoulli: {-1, 1}; logistic: on the 8-bit levels)."""
    u = torch.rand(params.shape[0], channels, *params.shape[2:], generator=rng).to(params.device)
    if kind == "bernoulli":
        return (u < torch.sigmoid(params.float())).float() * 2 - 1
    logits, means, log_scales = _logistic_parts(params, channels, mixtures)
    gumbel = -torch.log(-torch.log(torch.rand(logits.shape, generator=rng).clamp(1e-6, 1 - 1e-6))).to(params.device)
    pick = F.one_hot((logits + gumbel).argmax(2), mixtures).permute(0, 1, 4, 2, 3).float()
    mu, log_s = (means * pick).sum(2), (log_scales * pick).sum(2)
    u = u.clamp(1e-5, 1 - 1e-5)
    x = mu + torch.exp(log_s) * (torch.log(u) - torch.log1p(-u))
    return ((x.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1
