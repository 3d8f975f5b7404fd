"""Noise schedules: where a diffusion model's noisy image x_t = alpha(t) * x0 + sigma(t) * eps sits at time t.

Every schedule is indexed by t in [0, 1] (0: the clean image, 1: the start of sampling), so one sampler serves
all of them and a network trained under one schedule is sampled on any grid of times. The coefficients are
float64 numpy: no torch here, so the torch path and a torch-free runtime compute the same numbers.

- `VPSchedule` (DDPM, Ho et al. 2020): T discrete steps with variances beta_1..beta_T, linear (1e-4 to 0.02 at
  T = 1000) or cosine (Nichol & Dhariwal 2021); alpha_bar_k = prod (1 - beta_i), alpha = sqrt(alpha_bar),
  sigma = sqrt(1 - alpha_bar). The network is trained at t = k / T, k = 1..T.
- `FlowSchedule` (rectified flow / flow matching, Liu et al. 2022; Lipman et al. 2022): the straight path
  alpha = 1 - t, sigma = t, continuous in t.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import numpy as np


class Schedule(ABC):
    """A Gaussian path: `alpha_sigma(t)`; training times from uniform numbers; a sampling grid of times."""

    name: str
    discrete: int | None = None  # T for a schedule trained at t = k / T only

    @abstractmethod
    def alpha_sigma(self, t) -> tuple[np.ndarray, np.ndarray]:
        """(alpha(t), sigma(t)) as float64 arrays."""

    @abstractmethod
    def training_times(self, u: np.ndarray) -> np.ndarray:
        """Times to train at, from uniform numbers u in [0, 1)."""

    def times(self, steps: int) -> np.ndarray:
        """`steps` + 1 times from the start of sampling (1) down to 0: one network call per step.

        Quadratically spaced, t_i = (1 - i / steps)^2 (the DDIM paper's CIFAR-10 choice): half the calls are
        spent below t = 0.25, where the image's detail is decided. On exact denoisers of narrow targets
        (tests/test_diffusion.py) uniform spacing left DDIM-10 and DPM-Solver++-10 with half the target's
        spread; quadratic spacing brought the solver within 1%."""
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        return np.linspace(1.0, 0.0, steps + 1) ** 2

    def times_from(self, start: float, steps: int) -> np.ndarray:
        """The grid of `times(steps)` squeezed into [0, start]: sampling from a partly noised image (SDEdit)."""
        return start * Schedule.times(self, steps)

    def log_snr(self, t) -> np.ndarray:
        """lambda = log(alpha / sigma): +inf at the clean end, where sigma is 0."""
        a, s = self.alpha_sigma(t)
        with np.errstate(divide="ignore"):
            return np.log(a) - np.log(s)


class VPSchedule(Schedule):
    def __init__(self, kind: str = "linear", timesteps: int = 1000):
        if kind == "linear":
            scale = 1000 / timesteps  # the DDPM range (1e-4 .. 0.02 at T = 1000), stretched for other T
            betas = np.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=np.float64)
        elif kind == "cosine":
            s = 0.008
            f = np.cos((np.arange(timesteps + 1, dtype=np.float64) / timesteps + s) / (1 + s) * math.pi / 2) ** 2
            betas = np.clip(1 - f[1:] / f[:-1], 0, 0.999)
        else:
            raise ValueError(f"unknown VP schedule {kind!r}: linear or cosine")
        self.name, self.discrete, self.betas = kind, timesteps, betas
        self.alphas_cumprod = np.concatenate([[1.0], np.cumprod(1 - betas)])  # index k = 0 (clean) .. T

    def index(self, t) -> np.ndarray:
        return np.rint(np.asarray(t, dtype=np.float64) * self.discrete).astype(np.int64)

    def alpha_sigma(self, t):
        ab = self.alphas_cumprod[self.index(t)]
        return np.sqrt(ab), np.sqrt(1 - ab)

    def training_times(self, u):
        k = np.minimum(np.floor(np.asarray(u) * self.discrete).astype(np.int64) + 1, self.discrete)  # 1..T
        return k / self.discrete

    def times(self, steps):
        """The quadratic grid on the training steps k = T..0, each step at least one k below the last (so
        steps = T visits every k: DDPM's full chain)."""
        if not 1 <= steps <= self.discrete:
            raise ValueError(f"steps must be 1..{self.discrete} for this {self.discrete}-step schedule, got {steps}")
        k = np.rint(super().times(steps) * self.discrete).astype(np.int64)
        for i in range(steps - 1, -1, -1):
            k[i] = max(k[i], k[i + 1] + 1)
        return k / self.discrete


    def times_from(self, start, steps):
        """The quadratic grid on k = K..0 with K = round(start T) (at least 1), each step at least one k lower."""
        top = max(1, int(round(start * self.discrete)))
        steps = max(1, min(steps, top))
        k = np.rint(Schedule.times(self, steps) * top).astype(np.int64)
        for i in range(steps - 1, -1, -1):
            k[i] = max(k[i], k[i + 1] + 1)
        return k / self.discrete


class FlowSchedule(Schedule):
    name = "flow"

    def alpha_sigma(self, t):
        t = np.asarray(t, dtype=np.float64)
        return 1 - t, t

    def training_times(self, u):
        return np.asarray(u, dtype=np.float64)


def make_schedule(objective: str, kind: str = "linear", timesteps: int = 1000) -> Schedule:
    """The path an objective trains on: flow matching has its own straight one; eps and v a VP schedule."""
    return FlowSchedule() if objective == "flow" else VPSchedule(kind, timesteps)
