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
