"""Exponential moving average of a network's weights, used for sampling (smoother than the raw G)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    """Holds an averaged copy of `net`. A module, so Accelerate checkpoints it with the rest of the state."""

    def __init__(self, net: nn.Module, decay: float):
        super().__init__()
        self.decay = decay
        self.shadow = copy.deepcopy(net).eval().requires_grad_(False)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        # Warm-up (as in TF's ExponentialMovingAverage): early averages are not dominated by the random init.
        n = int(self.num_updates) + 1
        decay = min(self.decay, (1 + n) / (10 + n))
        self.num_updates.fill_(n)
        ema_params = list(self.shadow.parameters())
        params = [p.detach() for p in net.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        for b_ema, b in zip(self.shadow.buffers(), net.buffers()):
            b_ema.copy_(b)


@torch.no_grad()
def recalibrated_copy(net: nn.Module, forward_batch, batches: int = 50) -> nn.Module:
    """A copy of `net` whose BatchNorm statistics are re-estimated on its own forward passes.

    The EMA copies BatchNorm statistics from the live network, but those were measured on the live
    weights, not the averaged ones; re-estimating them for the averaged weights gives visibly cleaner
    samples (on MNIST DCGAN, classifier-feature FID 85 -> 77). `forward_batch(net)` runs one batch.
    """
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return net
    out = copy.deepcopy(net)
    for m in out.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the recalibration batches
    out.train()
    for _ in range(batches):
        forward_batch(out)
    for m, src in zip([m for m in out.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)], bns):
        m.momentum = src.momentum
    return out.eval()
