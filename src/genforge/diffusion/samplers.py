"""Samplers: noise to images, one network call per step, on any schedule's grid of times.

A sampler is a loop of array arithmetic, x = a * x + b * x0_hat + c * eps_hat + d * noise, with a, b, c, d
computed in float64 numpy and applied as Python floats. It is written over whatever array the network
returns (torch tensors or numpy arrays) and the noise of its stochastic steps is passed in, so the same code
drives the torch path and a torch-free runtime, and the two can be compared number for number.

`model(x, t)` returns the network's prediction split into (x0_hat, eps_hat) by `split_prediction`: the
samplers never see which parameterisation (eps, v, flow velocity) the network was trained with.

- `ddpm`: ancestral sampling (Ho et al. 2020), x_s drawn from the posterior q(x_s | x_t, x0_hat) with its
  variance beta_tilde; T steps of a discrete schedule (fewer: the same posterior between strided steps).
  On a continuous schedule (flow) it is DDIM with eta = 1, the same posterior written for any Gaussian path.
- `ddim`: Song et al. 2021, N steps; eta = 0 deterministic (for flow matching it is the Euler method),
  eta = 1 the ancestral posterior.
- `dpmpp2m`: DPM-Solver++(2M) (Lu et al. 2022), second-order multistep in log-SNR on the data prediction,
  for 10-20 network calls; the last step (to sigma = 0) is first order.
- `unipc`: UniPC (Zhao et al. 2023), order 2 with the B(h) = expm1(h) variant: its predictor is the 2M step
  above, and its corrector (UniC) re-uses the network call made at the predicted point, which the next step
  needs anyway, to raise the step's order by one at no extra cost.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from genforge.diffusion.schedules import Schedule
from genforge.errors import UserError

PREDICTIONS = ("eps", "v", "flow")
SAMPLERS = ("ddpm", "ddim", "dpmpp2m", "unipc")


def training_target(kind: str, x0, eps, alpha, sigma):
    """What a network of parameterisation `kind` learns to output at x_t = alpha * x0 + sigma * eps."""
    if kind == "eps":
        return eps
    if kind == "v":  # Salimans & Ho 2022 (variance-preserving paths)
        return alpha * eps - sigma * x0
    if kind == "flow":  # the velocity dx_t/dt of the straight path alpha = 1 - t, sigma = t
        return eps - x0
    raise ValueError(f"unknown prediction {kind!r}: one of {PREDICTIONS}")


def split_prediction(kind: str, out, x, alpha: float, sigma: float, clip: bool = True):
    """(x0_hat, eps_hat) from a network output at x with path coefficients alpha, sigma (Python floats).

    With `clip`, x0_hat is clipped to the data range [-1, 1] and eps_hat recomputed from it, so the two stay
    consistent with x (x = alpha x0_hat + sigma eps_hat): DDPM's "clip_denoised", which keeps an eps-model's
    first steps (alpha near 0) from producing values far outside the image range."""
    if kind == "eps":
        eps, x0 = out, (x - sigma * out) * (1.0 / alpha)
    elif kind == "v":
        x0, eps = alpha * x - sigma * out, sigma * x + alpha * out
    elif kind == "flow":
        x0, eps = x - sigma * out, x + alpha * out
    else:
        raise ValueError(f"unknown prediction {kind!r}: one of {PREDICTIONS}")
    if clip:
        x0 = x0.clip(-1.0, 1.0)
        if sigma > 0:
            eps = (x - alpha * x0) * (1.0 / sigma)
    return x0, eps


def is_stochastic(sampler: str, eta: float) -> bool:
    return sampler == "ddpm" or (sampler == "ddim" and eta > 0)


def default_steps(sampler: str, schedule: Schedule) -> int:
    """DDPM's T; 50 for DDIM; 20 for the multistep solver (their usual settings)."""
    return {"ddpm": schedule.discrete or 1000, "ddim": 50, "dpmpp2m": 20, "unipc": 20}[sampler]


def resolve_steps(sampler: str, steps: int, schedule: Schedule, model_sampler: str, model_steps: int) -> int:
    """Network calls per image: `steps`, or when 0 the model's default steps for its own default sampler, else
    the sampler's usual number; more than a discrete schedule's T is an error."""
    if not steps:
        steps = model_steps if sampler == model_sampler else default_steps(sampler, schedule)
    if schedule.discrete and steps > schedule.discrete:
        raise UserError(f"steps={steps} is more than the model's {schedule.discrete} training steps (T); use 1..{schedule.discrete}.")
    return steps


def step_noise(seeds, shape: tuple) -> Callable:
    """noise(i) for a stochastic sampler: one float32 standard normal array `shape` per image per step, from a
    numpy Philox stream per image seed, so an image's noise does not depend on what shares its batch."""
    gens = [np.random.Generator(np.random.Philox(int(s))) for s in seeds]
    return lambda i: np.stack([g.standard_normal(shape, dtype=np.float32) for g in gens])


def sample(model: Callable, x, schedule: Schedule, sampler: str = "dpmpp2m", steps: int | None = None,
           eta: float = 0.0, noise: Callable | None = None, callback: Callable | None = None,
           times=None, project: Callable | None = None):
    """Run `sampler` from x (pure noise, the start of sampling) down to t = 0 and return the images.

    model(x, t) -> (x0_hat, eps_hat); noise(i) -> a standard normal array shaped like x for step i (needed by
    stochastic samplers only); callback(i, steps) after each step, for progress bars.
    For editing (diffusion/editing.py): `times`, a decreasing grid to walk instead of the schedule's full one
    (a part of it: from a partly noised image, or one block of a resampling schedule); `project(x, t)`, applied to
    x after each step that lands at time t (inpainting puts the known pixels back there)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}: one of {', '.join(SAMPLERS)}")
    steps = steps or default_steps(sampler, schedule)
    if is_stochastic(sampler, eta) and noise is None:
        raise ValueError(f"sampler {sampler} with eta={eta} draws noise at each step: pass noise=")
    times = schedule.times(steps) if times is None else np.asarray(times, dtype=np.float64)
    if project is not None:
        callback = _projecting(project, times, callback)
    if sampler == "ddpm" and schedule.discrete:
        return _ddpm(model, x, schedule, times, noise, callback)
    if sampler == "ddpm":
        sampler, eta = "ddim", 1.0
    step = {"ddim": _ddim, "dpmpp2m": _dpmpp2m, "unipc": _unipc}[sampler]
    return step(model, x, schedule, times, eta, noise, callback)


class _Projecting:
    """A step callback that may replace x: the samplers call `callback(i, n)` after each step, and when it is a
    _Projecting they take `callback.after(x, i)` as the new x."""

    def __init__(self, project, times, callback):
        self.project, self.times, self.callback = project, times, callback

    def after(self, x, i):
        return self.project(x, float(self.times[i]))

    def __call__(self, i, n):
        if self.callback:
            self.callback(i, n)


def _projecting(project, times, callback):
    return _Projecting(project, times, callback)


def _after(callback, x, i):
    """x after step i (landing at times[i]) as the caller wants it: projected when editing, else unchanged."""
    return callback.after(x, i) if isinstance(callback, _Projecting) else x


def _ab(schedule: Schedule, t) -> tuple[float, float]:
    a, s = schedule.alpha_sigma(t)
    return float(a), float(s)


def _ddpm(model, x, schedule, times, noise, callback):
    k = schedule.index(times)
    ab = [float(a) for a in schedule.alphas_cumprod]  # Python floats: numpy scalars would promote float32 to 64
    n = len(times) - 1
    for i in range(n):
        t, s = k[i], k[i + 1]
        x0, _ = model(x, times[i])
        beta = 1 - ab[t] / ab[s]  # beta_t when the steps are consecutive
        c_x0 = math.sqrt(ab[s]) * beta / (1 - ab[t])
        c_x = math.sqrt(1 - beta) * (1 - ab[s]) / (1 - ab[t])
        x = c_x0 * x0 + c_x * x
        if s > 0:
            x = x + math.sqrt(beta * (1 - ab[s]) / (1 - ab[t])) * noise(i)
        x = _after(callback, x, i + 1)
        if callback:
            callback(i + 1, n)
    return x


def _ddim(model, x, schedule, times, eta, noise, callback):
    n = len(times) - 1
    for i in range(n):
        a_t, s_t = _ab(schedule, times[i])
        a_s, s_s = _ab(schedule, times[i + 1])
        x0, eps = model(x, times[i])
        if s_s == 0:
            x = a_s * x0
        else:
            # std of the posterior q(x_s | x_t, x0) scaled by eta; (a_t s_s / (a_s s_t))^2 = SNR_t / SNR_s
            c = eta * s_s * math.sqrt(max(0.0, 1 - (a_t * s_s / (a_s * s_t)) ** 2))
            x = a_s * x0 + math.sqrt(max(0.0, s_s**2 - c**2)) * eps
            if c > 0:
                x = x + c * noise(i)
        x = _after(callback, x, i + 1)
        if callback:
            callback(i + 1, n)
    return x


def _dpmpp2m(model, x, schedule, times, eta, noise, callback):
    lam = schedule.log_snr(times)
    n = len(times) - 1
    x0_prev, h_prev = None, None
    for i in range(n):
        a_t, s_t = _ab(schedule, times[i])
        a_s, s_s = _ab(schedule, times[i + 1])
        x0, _ = model(x, times[i])
        if s_s == 0:  # the last step: the data prediction itself (first order)
            x = a_s * x0
        else:
            h = float(lam[i + 1] - lam[i])  # +inf from t = 1 of the flow path, where alpha = 0
            d = x0
            if x0_prev is not None and math.isfinite(h_prev):
                r = h_prev / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
            x = (s_s / s_t) * x - a_s * math.expm1(-h) * d
            x0_prev, h_prev = x0, h
        x = _after(callback, x, i + 1)
        if callback:
            callback(i + 1, n)
    return x


def _unipc(model, x, schedule, times, eta, noise, callback):
    """UniPC-2 (bh2) on the data prediction: per step, the 2M predictor to x_pred, one network call there, and
    the corrector that moves x using it; that call's x0 is the next step's model value (one call per step).
    The last step (to sigma = 0) returns the data prediction, as in `_dpmpp2m`."""
    lam = schedule.log_snr(times)
    n = len(times) - 1
    m, m_prev, h_prev = model(x, times[0])[0], None, None
    for i in range(n):
        a_t, s_t = _ab(schedule, times[i])
        a_s, s_s = _ab(schedule, times[i + 1])
        if s_s == 0:
            x = a_s * m
        else:
            h = float(lam[i + 1] - lam[i])
            phi1 = math.expm1(-h)  # B(h) of bh2 as well
            base = (s_s / s_t) * x - a_s * phi1 * m
            d1 = None
            if m_prev is not None and math.isfinite(h_prev) and math.isfinite(h):
                r = -h_prev / h  # (lambda of the older point - lambda of this one) / h
                d1 = (m_prev - m) * (1.0 / r)
            x_pred = base if d1 is None else base - a_s * phi1 * 0.5 * d1
            m_new = model(x_pred, times[i + 1])[0] if i + 1 < n else None
            if m_new is None:
                x = x_pred
            else:
                c_prev, c_new = _unic_weights(h, r if d1 is not None else None)
                corr = c_new * (m_new - m)
                if d1 is not None:
                    corr = corr + c_prev * d1
                x = base - a_s * phi1 * corr
            m_prev, m, h_prev = m, m_new, h
        x = _after(callback, x, i + 1)
        if callback:
            callback(i + 1, n)
    return x


def invert(model: Callable, x, schedule: Schedule, steps: int = 20, callback: Callable | None = None):
    """The deterministic sampler run backwards: an image x (t = 0, model range) to the noise (t = 1) that DDIM with
    eta 0 (for a flow model: the Euler method on its ODE) maps to it, on the reversed grid `schedule.times(steps)`.
    Each step re-noises the network's (x0_hat, eps_hat) at the current point to the next, higher time (DDIM
    inversion, Song et al. 2021; as Tree-Ring detects its mark). model(x, t) -> (x0_hat, eps_hat) as in `sample`.
    The noise it finds is the start of sampling up to the two solvers' discretisation errors."""
    times = schedule.times(steps)[::-1]
    n = len(times) - 1
    for i in range(n):
        a_s, s_s = _ab(schedule, times[i + 1])
        x0, eps = model(x, times[i])
        x = a_s * x0 + s_s * eps
        if callback:
            callback(i + 1, n)
    return x


def _unic_weights(h: float, r: float | None) -> tuple[float, float]:
    """The corrector's weights on the older difference and on the new one: 1/2 at first order; at second
    order the solution of UniPC's 2 x 2 system R rho = b, R = [[1, 1], [r, 1]], b_k = k! phi_{k+1}(-h) / B(h)."""
    if r is None:
        return 0.0, 0.5
    hh = -h
    if not math.isfinite(hh):  # from t = 1 of a flow path: first order
        return 0.0, 0.5
    bh = math.expm1(hh)
    phi = bh / hh - 1  # h phi_2-like term of the reference algorithm, updated per order
    b1 = phi / bh
    phi = phi / hh - 0.5
    b2 = phi * 2 / bh
    # solve [[1, 1], [r, 1]] [p, q] = [b1, b2]
    p = (b1 - b2) / (1 - r)
    return p, b1 - p
