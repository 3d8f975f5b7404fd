"""Pixel likelihoods p(x | z) for decoders, as log-probabilities summed over each image.

Two families, both proper probabilities of the data as stored, so a negative log-likelihood is a
number of nats (or bits) that can be compared with published ones:

- Bernoulli on binarised grey images (the protocol of the VAE/IWAE literature on MNIST: each pixel is 1
  with probability equal to its intensity, redrawn every time the image is seen).
- A mixture of discretised logistics per pixel (Salimans et al. 2017, PixelCNN++): each 8-bit value owns
  the probability mass of its bin of width 2/255 in [-1, 1]; the two end bins take the tails. One
  component is chosen per pixel for all its channels, and in colour a channel's mean moves linearly with
  the channels before it (R; G given R; B given R and G), as in PixelCNN++:
      p(x) = sum_k pi_k prod_c DLogistic(x_c; mu_kc + sum_{j<c} a_kcj x_j, s_kc),  a = tanh(...).
  Without that coupling the channels of a pixel are independent given z, and the decoder's (blurry) mean
  leaves the same error in R, G and B three times over. With one component and one channel it is the
  plain discretised logistic.

The decoder outputs `num_params(kind, channels, mixtures)` maps per pixel, in this order (K = mixtures,
C = channels): K mixture logits, C*K means, C*K log-scales, C(C-1)/2*K coupling coefficients (pairs
(1,0), (2,0), (2,1) for RGB), each group channel-major. For one channel that is logits, means,
log-scales: K each. `x` is float NCHW.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LIKELIHOODS = ("bernoulli", "logistic")
_HALF_BIN = 1.0 / 255.0  # half the width of one 8-bit level in [-1, 1]
_MIN_LOG_SCALE = -7.0  # a scale of 1e-3: a tenth of a bin, far narrower than any real pixel's spread
_INIT_LOG_SCALE = -1.4  # a scale of 1/4: about the spread of the pixels of typical images (std ~0.5 in [-1, 1])


def num_params(kind: str, channels: int, mixtures: int = 1) -> int:
    """Decoder output maps per pixel for an image of `channels` channels."""
    if kind == "bernoulli":
        return channels
    return mixtures * (1 + 2 * channels + channels * (channels - 1) // 2)


def initial_bias(kind: str, channels: int, mixtures: int = 1) -> torch.Tensor:
    """Bias of the decoder's last layer at initialisation, (num_params,): zero, except the logistic's log-scales,
    which start at the spread of typical pixels. Starting at scale 1 (half the data range) wastes the first
    hundred or so steps shrinking every scale while the KL term pushes q(z | x) onto the prior."""
    bias = torch.zeros(num_params(kind, channels, mixtures))
    if kind == "logistic":
        bias[mixtures * (1 + channels) : mixtures * (1 + 2 * channels)] = _INIT_LOG_SCALE
    return bias


def _logistic_parts(params: torch.Tensor, channels: int, mixtures: int):
    """(logits (N, K, H, W), means (N, C, K, H, W), log-scales (N, C, K, H, W), coupling (N, C(C-1)/2, K, H, W))."""
    k, c = mixtures, channels
    if params.shape[1] != num_params("logistic", c, k):
        raise ValueError(f"a {k}-component logistic mixture over {c} channel(s) needs {num_params('logistic', c, k)} "
                         f"parameter maps, got {params.shape[1]}")
    p = params.float()
    logits = p[:, :k]
    means = p[:, k : k + c * k].unflatten(1, (c, k))
    log_scales = p[:, k + c * k : k + 2 * c * k].unflatten(1, (c, k)).clamp(min=_MIN_LOG_SCALE)
    coeffs = torch.tanh(p[:, k + 2 * c * k :].unflatten(1, (c * (c - 1) // 2, k)))
    return logits, means, log_scales, coeffs


def _coupled_means(means: torch.Tensor, coeffs: torch.Tensor, given: torch.Tensor | None = None) -> torch.Tensor:
    """Each channel's component means shifted by the channels before it, (N, C, K, H, W).

    given: the values of the earlier channels, (N, C, 1 or K, H, W); None uses each component's own
    expected values (clamped to the data range), as the expected image does."""
    out, pair = [], 0
    for i in range(means.shape[1]):
        m = means[:, i]
        for j in range(i):
            m = m + coeffs[:, pair] * (given[:, j] if given is not None else out[j].clamp(-1, 1))
            pair += 1
        out.append(m)
    return torch.stack(out, 1)


def log_prob(kind: str, params: torch.Tensor, x: torch.Tensor, mixtures: int = 1) -> torch.Tensor:
    """log p(x | params) per image (N,), in nats. Bernoulli: x in {0, 1}; logistic: x in [-1, 1] on 8-bit levels."""
    if kind == "bernoulli":
        ll = -F.binary_cross_entropy_with_logits(params.float(), x.float(), reduction="none")
        return ll.flatten(1).sum(1)
    logits, means, log_scales, coeffs = _logistic_parts(params, x.shape[1], mixtures)
    x = x.float().unsqueeze(2)  # (N, C, 1, H, W) against (N, C, K, H, W)
    centered = x - _coupled_means(means, coeffs, x)
    inv_s = torch.exp(-log_scales)
    upper = inv_s * (centered + _HALF_BIN)
    lower = inv_s * (centered - _HALF_BIN)
    log_cdf_upper = F.logsigmoid(upper)  # the lowest bin takes the whole left tail
    log_sf_lower = F.logsigmoid(-lower)  # the highest bin takes the right tail
    # The mass of an inner bin, sigmoid(upper) - sigmoid(lower), in log space without subtracting two numbers
    # near 0 or 1: it equals sigmoid(upper) * sigmoid(-lower) * (1 - exp(lower - upper)). Exact for every bin,
    # from the far tails (where the plain difference underflows to 0) to bins far narrower than the scale.
    log_width = torch.log((-torch.expm1(-2 * _HALF_BIN * inv_s)).clamp(min=1e-30))
    inner = log_cdf_upper + log_sf_lower + log_width
    ll = torch.where(x < -1 + _HALF_BIN, log_cdf_upper, torch.where(x > 1 - _HALF_BIN, log_sf_lower, inner))
    ll = ll.sum(1) + F.log_softmax(logits, dim=1)  # (N, K, H, W): a pixel's channels under component k
    return torch.logsumexp(ll, dim=1).flatten(1).sum(1)


def mean(kind: str, params: torch.Tensor, channels: int, mixtures: int = 1) -> torch.Tensor:
    """The expected image, float NCHW in [-1, 1] (what sample grids show: smooth, not speckled)."""
    if kind == "bernoulli":
        return torch.sigmoid(params.float()) * 2 - 1
    logits, means, _, coeffs = _logistic_parts(params, channels, mixtures)
    comp = _coupled_means(means, coeffs).clamp(-1, 1)
    return (F.softmax(logits, dim=1).unsqueeze(1) * comp).sum(2)


def sample(kind: str, params: torch.Tensor, channels: int, rng: torch.Generator, mixtures: int = 1) -> torch.Tensor:
    """One draw of x, float NCHW in [-1, 1] (Bernoulli: {-1, 1}; logistic: on the 8-bit levels).

    Logistic: one component per pixel, then the channels in order, each given the drawn values before it."""
    u = torch.rand(params.shape[0], channels, *params.shape[2:], generator=rng).to(params.device)
    if kind == "bernoulli":
        return (u < torch.sigmoid(params.float())).float() * 2 - 1
    logits, means, log_scales, coeffs = _logistic_parts(params, channels, mixtures)
    gumbel = -torch.log(-torch.log(torch.rand(logits.shape, generator=rng).clamp(1e-6, 1 - 1e-6))).to(params.device)
    pick = F.one_hot((logits + gumbel).argmax(1), mixtures).permute(0, 3, 1, 2).float()  # (N, K, H, W)
    u = u.clamp(1e-5, 1 - 1e-5)
    noise = torch.log(u) - torch.log1p(-u)
    xs: list[torch.Tensor] = []
    pair = 0
    for i in range(channels):
        m = means[:, i]
        for j in range(i):
            m = m + coeffs[:, pair] * xs[j].unsqueeze(1)
            pair += 1
        mu, log_s = (m * pick).sum(1), (log_scales[:, i] * pick).sum(1)
        xi = mu + torch.exp(log_s) * noise[:, i]
        xs.append(((xi.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1)  # on the levels, as training saw them
    return torch.stack(xs, 1)
