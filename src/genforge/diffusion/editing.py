"""Editing with a trained diffusion model: inpainting (RePaint) and image-to-image variations (SDEdit).

Written, as the samplers are, over whatever arrays the network returns (torch tensors or numpy arrays) with all
noise passed in, so the torch path and the torch-free runtime run the same loops and can be compared number for
number. Neither needs retraining: both only change where sampling starts and what happens between its steps.

- `inpaint` (Lugmayr et al. 2022, RePaint, written from the paper): after every sampler step to time t the known
  pixels are replaced by the known image noised to t, so the model only ever fills the unknown region, and that
  fill is harmonised with the known one by resampling: the grid is cut into blocks of `jump` steps, and each block
  is walked `resample` times, the image re-noised back to the block's start (q(x_t | x_s)) between walks. It
  works with every sampler; a multistep one (dpmpp2m, unipc) restarts its history at each block. The result
  keeps the known pixels exactly (the last step lands at t = 0, where the noised known image is the image).
- `low_consistent` (super-resolution; the range-null-space split of Wang et al. 2023, DDNM): each step's x0
  estimate keeps the network's detail but takes its block averages from the low-resolution input, so the output
  downsampled is the input (up to clipping and rounding). Without it, sampling is SR3's plain conditional one.
- `vary` (Meng et al. 2022, SDEdit): noise the input to t = strength, then sample back to 0 on the part of the
  grid below it (ceil(steps x strength) steps). strength 0 returns the input; strength 1 starts from the pure
  noise `generate` starts from, so the input is ignored.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from genforge.diffusion.samplers import sample
from genforge.diffusion.schedules import Schedule


def known_noise(seeds, shape: tuple) -> Callable[[], np.ndarray]:
    """noise() for the known region and the re-noising of inpainting: one float32 standard normal array per
    image per call, from a Philox stream per image seed (a different stream from the samplers' step noise)."""
    gens = [np.random.Generator(np.random.Philox(np.random.SeedSequence([int(s), 1]))) for s in seeds]
    return lambda: np.stack([g.standard_normal(shape, dtype=np.float32) for g in gens])


def inpaint_calls(steps: int, resample: int) -> int:
    """Network calls per image (before guidance doubles them): every step of the grid, `resample` times."""
    return steps * resample


def inpaint(model: Callable, x, known, keep, schedule: Schedule, sampler: str, steps: int, eta: float = 0.0,
            noise: Callable | None = None, fresh: Callable | None = None, jump: int = 5, resample: int = 2,
            callback: Callable | None = None):
    """Fill the pixels where `keep` is 0 and keep those where it is 1.

    x: the starting noise (what `generate` starts from); known: the image in the model's range, its values
    under keep = 0 unused; keep: 1 (known) or 0 (to fill), broadcastable to x; fresh(): standard normal noise
    shaped like x, for the known region and the re-noising (`known_noise`); noise(i): the stochastic samplers'
    step noise. callback(done, total) counts network-call steps over all resamplings."""
    times = schedule.times(steps)
    n, jump, resample = len(times) - 1, max(1, int(jump)), max(1, int(resample))
    unknown = 1 - keep
    total, done = n * resample, [0]

    def project(x, t):
        a, s = schedule.alpha_sigma(t)
        a, s = float(a), float(s)
        noisy = known if s == 0 else a * known + s * fresh()
        return keep * noisy + unknown * x

    def tick(i, m):
        done[0] += 1
        if callback:
            callback(done[0], total)

    x = project(x, float(times[0]))
    for start in range(0, n, jump):
        block = times[start: min(start + jump, n) + 1]
        for r in range(resample):
            if r:  # back up the block: q(x_t | x_s) from its end s to its start t
                x = renoise(x, schedule, float(block[-1]), float(block[0]), fresh())
            x = sample(model, x, schedule, sampler, len(block) - 1, eta, noise, tick, times=block, project=project)
    return x


def renoise(x, schedule: Schedule, s: float, t: float, z):
    """x_s -> a draw of x_t (t > s) from the forward process q(x_t | x_s) of any Gaussian path."""
    a_s, s_s = (float(v) for v in schedule.alpha_sigma(s))
    a_t, s_t = (float(v) for v in schedule.alpha_sigma(t))
    r = a_t / a_s
    return r * x + math.sqrt(max(0.0, s_t**2 - (r * s_s) ** 2)) * z


def vary_times(schedule: Schedule, strength: float, steps: int) -> np.ndarray:
    """The grid an SDEdit of `strength` walks: the full grid at 1, else ceil(steps x strength) steps below it."""
    if strength >= 1:
        return schedule.times(steps)
    return schedule.times_from(strength, max(1, math.ceil(steps * strength)))


def vary_calls(schedule: Schedule, strength: float, steps: int) -> int:
    return 0 if strength <= 0 else len(vary_times(schedule, strength, steps)) - 1


def vary(model: Callable, x0, eps, strength: float, schedule: Schedule, sampler: str, steps: int, eta: float = 0.0,
         noise: Callable | None = None, callback: Callable | None = None):
    """x0 (the input, model range) noised with eps to t = strength and sampled back to t = 0."""
    if strength <= 0:
        return x0
    times = vary_times(schedule, strength, steps)
    if strength >= 1:
        x = eps
    else:
        a, s = (float(v) for v in schedule.alpha_sigma(times[0]))
        x = a * x0 + s * eps
    return sample(model, x, schedule, sampler, len(times) - 1, eta, noise, callback, times=times)


def project_to_low(x0, low):
    """x0 (N, C, H, W) with each f x f block's mean replaced by the matching pixel of low (N, C, H/f, W/f): the
    orthogonal projection onto the images whose area-average downsampling is low."""
    n, c, hh, ww = x0.shape
    h, w = low.shape[-2:]
    f = hh // h
    blocks = x0.reshape(n, c, h, f, w, f)
    diff = low.reshape(n, c, h, 1, w, 1) - blocks.mean((3, 5)).reshape(n, c, h, 1, w, 1)
    return (blocks + diff).reshape(n, c, hh, ww)


POCS_ROUNDS = 8  # a block whose fill would leave [-1, 1] converges in a few rounds; at most 8 elementwise passes


def low_consistent(model: Callable, low, schedule: Schedule) -> Callable:
    """model(x, t) -> (x0_hat, eps_hat) with x0_hat projected onto the images consistent with `low` that lie in
    the data range (alternating projections, POCS), and eps_hat recomputed so that the two still give x."""
    def wrapped(x, t):
        x0, eps = model(x, t)
        for _ in range(POCS_ROUNDS):  # alternate projections onto the consistent images and the range [-1, 1]
            x0 = project_to_low(x0, low).clip(-1.0, 1.0)
        a, s = (float(v) for v in schedule.alpha_sigma(t))
        if s > 0:
            eps = (x - a * x0) * (1.0 / s)
        return x0, eps

    return wrapped
