"""GAN objectives and gradient penalties as small pure functions of D's logits (or of D itself).

Losses take the critic's raw outputs (logits / scores) and return a scalar mean over the batch, in fp32:
- "ns": the non-saturating loss of Goodfellow et al. 2014 (BCE on logits; G maximises log D(G(z))).
- "hinge": Lim & Ye 2017, Miyato et al. 2018: D minimises relu(1 - D(x)) + relu(1 + D(G(z))), G minimises -D(G(z)).
- "wgan": Arjovsky et al. 2017: D minimises D(G(z)) - D(x), G minimises -D(G(z)); needs a Lipschitz D
  (a gradient penalty or spectral norm).

Penalties take `critic`, a function image batch -> one score per image, and differentiate it w.r.t. its
input with `create_graph=True`, so the penalty's own gradient reaches D's weights in the same backward.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

LOSSES = ("ns", "hinge", "wgan")

Critic = Callable[[torch.Tensor], torch.Tensor]


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def d_loss(kind: str, d_real: torch.Tensor, d_fake: torch.Tensor, real_label: float = 1.0) -> torch.Tensor:
    """D's loss on its outputs for real and generated images. `real_label` < 1 smooths "ns" only."""
    d_real, d_fake = d_real.float(), d_fake.float()
    if kind == "ns":
        return _bce(d_real, real_label) + _bce(d_fake, 0.0)
    if kind == "hinge":
        return F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()
    if kind == "wgan":
        return d_fake.mean() - d_real.mean()
    raise ValueError(f"unknown GAN loss {kind!r}; known: {', '.join(LOSSES)}")


def g_loss(kind: str, d_fake: torch.Tensor) -> torch.Tensor:
    """G's loss on D's outputs for its images: "ns" -log sigmoid(D), "hinge" and "wgan" -D."""
    d_fake = d_fake.float()
    if kind == "ns":
        return _bce(d_fake, 1.0)
    if kind in ("hinge", "wgan"):
        return -d_fake.mean()
    raise ValueError(f"unknown GAN loss {kind!r}; known: {', '.join(LOSSES)}")


def interpolate(real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """eps * real + (1 - eps) * fake with one eps per image: random points on the segments real -> fake."""
    eps = eps.to(device=real.device, dtype=real.dtype).view(-1, *[1] * (real.dim() - 1))
    return eps * real + (1.0 - eps) * fake


def input_gradients(critic: Critic, x: torch.Tensor) -> torch.Tensor:
    """d critic(x)_i / d x_i for every image i, as (N, features), differentiable itself (create_graph)."""
    x = x.detach().float().requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x).float().sum(), x, create_graph=True)
    return grad.flatten(1)


def gradient_penalty(critic: Critic, real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al. 2017): mean of (||grad D(xhat)||_2 - 1)^2 on interpolates xhat.

    The penalty asks for unit gradient norm where it matters for the Wasserstein estimate, between the
    real and the generated distribution; `eps` (one per image, uniform in [0, 1]) picks the points."""
    grad = input_gradients(critic, interpolate(real.detach(), fake.detach(), eps))
    return (torch.linalg.vector_norm(grad, dim=1) - 1.0).square().mean()


def r1_penalty(critic: Critic, real: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): mean of 1/2 ||grad D(x)||^2 on real images; times gamma gives gamma/2 ||.||^2.

    Zero gradient on the data keeps D from pushing G away from a reached equilibrium."""
    return 0.5 * input_gradients(critic, real).square().sum(1).mean()
