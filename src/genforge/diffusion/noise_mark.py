"""A generation-time mark for diffusion runs: a keyed pattern in the Fourier transform of the starting noise
(Tree-Ring, Wen et al. 2023), found again by running the deterministic sampler backwards from the image to its
noise. numpy only: the torch path and the torch-free runtime plant and score with the same code.

Planting. The starting noise x_T (N, C, H, W) is white N(0, 1). Its orthonormal 2-D FFT has, at every frequency,
a complex value whose real and imaginary parts are independent N(0, 1/2) (Hermitian pairs k, -k), so replacing the
coefficients of a ring of frequencies (inner < |k| <= outer, `RADIUS`) by those of a *keyed Gaussian draw* - the
FFT of a standard normal image from a key-seeded generator, rescaled to the ring's expected energy - leaves the
noise real (the ring is symmetric and the draw Hermitian) and distributed as before: over keys it is exactly the
noise it replaces; for one key, the per-pixel values still pool to N(0, 1) and the spectrum stays flat
(tests/test_noise_mark.py checks both, with a KS test). The rest of the spectrum is untouched. Tree-Ring's
constant rings change the noise's distribution; a Gaussian draw does not. What one key does change is that every
sample shares those coefficients: where they decide the content (the lowest frequencies, on MNIST) the samples
lose variety, which is why the ring starts at |k| = 6 (see RADIUS).

Scoring. y is the noise recovered from an image (`diffusion.samplers.invert`). Over the ring's Hermitian half
M (one frequency of each pair k, -k), with Y = FFT(y) and K the key's coefficients,

    z = sum_M Re(Y_k conj K_k) / sqrt(sum_M |Y_k|^2 |K_k|^2 / 2)

a self-normalised correlation. For an unmarked image the phases of Y are independent of the key's, so each term
is |Y||K| cos(phi) with phi uniform: mean 0, variance |Y|^2 |K|^2 / 2, whatever the image's spectrum (real digits
invert to noise that is not quite white; the normalisation by |Y| makes that harmless). z is then close to
N(0, 1) and p = P(Z > z); `null_check` and the benchmark measure it. For a marked image Y is K plus the
inversion's error, and z ~ sqrt(|M|) (~10 on 28x28) times the correlation of the two.
"""

from __future__ import annotations

import math

import numpy as np

RADIUS = (6.0, 10.0)  # the ring of frequencies inner < |k| <= outer that carries the key (28x28: 204 coefficients,
# 102 Hermitian pairs per channel). Not Tree-Ring's disc from 0: on MNIST the lowest ~30 coefficients of the noise
# decide which digit is drawn, and a key there made every marked sample the same few digits (measured, see
# docs/design-notes.md); above |k| = 6 the digits stay as varied as unmarked ones, and the network's inversion
# recovers these frequencies about as well as the lowest (correlation ~0.55 against ~0.65).
STEPS = 10  # inversion steps (Euler / DDIM eta 0): 10 and 20 recover the key equally well on mnist-ddpm
THRESHOLD_P = 1e-3  # detected when the (Bonferroni-corrected) p-value is at most this: the measured FPR target
CONTEXT = "noise-mark"


def _signed(n: int) -> np.ndarray:
    return np.fft.fftfreq(n) * n  # 0, 1, ..., -1 (the unshifted FFT's frequency indices)


def region(shape: tuple[int, int], radius=RADIUS) -> np.ndarray:
    """bool (H, W): the frequencies inner < |k| <= outer of an unshifted FFT grid; `radius` is outer (inner 0) or
    (inner, outer)."""
    inner, outer = (0.0, radius) if np.isscalar(radius) else radius
    h, w = shape
    ky, kx = np.meshgrid(_signed(h), _signed(w), indexing="ij")
    r2 = ky**2 + kx**2
    return (r2 > inner**2) & (r2 <= outer**2) & (np.abs(ky) < h / 2) & (np.abs(kx) < w / 2)


def half_region(shape: tuple[int, int], radius: float = RADIUS) -> np.ndarray:
    """bool (H, W): one frequency of each Hermitian pair (k, -k) in `region` (kx > 0, or kx = 0 and ky > 0)."""
    h, w = shape
    ky, kx = np.meshgrid(_signed(h), _signed(w), indexing="ij")
    return region(shape, radius) & ((kx > 0) | ((kx == 0) & (ky > 0)))


def pattern(seed: int, shape: tuple[int, int, int], radius: float = RADIUS) -> np.ndarray:
    """complex128 (C, H, W): the key's coefficients on `region` (0 elsewhere): the orthonormal FFT of a standard
    normal image drawn from `seed`, scaled so that its energy on the region is the region's expected energy."""
    c, h, w = shape
    draw = np.random.default_rng(seed).standard_normal((c, h, w))
    spec = np.fft.fft2(draw, norm="ortho")
    mask = region((h, w), radius)
    spec = spec * mask
    energy = float(np.sum(np.abs(spec) ** 2))
    return spec * math.sqrt(c * mask.sum() / energy) if energy > 0 else spec


def plant(x: np.ndarray, key_pattern: np.ndarray, radius: float = RADIUS) -> np.ndarray:
    """Noise (N, C, H, W) [or (N, T, C, H, W): each frame] with the key's coefficients put in its disc, float32."""
    x = np.asarray(x)
    h, w = x.shape[-2:]
    mask = region((h, w), radius)
    spec = np.fft.fft2(x.astype(np.float64), norm="ortho")
    spec = np.where(mask, key_pattern, spec)
    return np.fft.ifft2(spec, norm="ortho").real.astype(np.float32)


def z_scores(y: np.ndarray, key_pattern: np.ndarray, radius: float = RADIUS) -> np.ndarray:
    """float64 (N,): the normalised correlation of each recovered noise (N, C, H, W) with the key (module doc)."""
    y = np.asarray(y, dtype=np.float64)
    half = half_region(y.shape[-2:], radius)
    spec = np.fft.fft2(y, norm="ortho")[..., half]  # (N, C, M)
    k = key_pattern[..., half]  # (C, M)
    num = np.real(spec * np.conj(k)).reshape(len(y), -1).sum(1)
    den = np.sqrt((np.abs(spec) ** 2 * np.abs(k) ** 2).reshape(len(y), -1).sum(1) / 2)
    return np.where(den > 0, num / np.maximum(den, 1e-300), 0.0)


def key_pattern(key, shape: tuple[int, int, int], radius=RADIUS) -> np.ndarray:
    """`pattern` for a mark key (anything with `.seed(*context) -> int`, e.g. media.watermark.MarkKey) and a
    sample shape (C, H, W)."""
    inner, outer = (0.0, radius) if np.isscalar(radius) else radius
    return pattern(key.seed(CONTEXT, *shape, inner, outer), tuple(shape), radius)


def applies(shape: tuple[int, ...], radius=RADIUS) -> bool:
    """Whether images of this (..., H, W) shape have frequencies in the key's ring (8x8 test models do not)."""
    return bool(region(tuple(shape[-2:]), radius).any())


def detect(noise: np.ndarray, key_pattern: np.ndarray, key_id: str = "", radius=RADIUS, tries: int = 1,
           threshold_p: float = THRESHOLD_P) -> dict:
    """One recovered noise (C, H, W): its z, one-sided p-value (Bonferroni over `tries` views) and whether that
    is at most `threshold_p`."""
    z = float(z_scores(np.asarray(noise)[None], key_pattern, radius)[0])
    p = p_value(z, tries)
    return {"mark": "noise", "z": round(z, 2), "p_value": p, "detected": p <= threshold_p, "key_id": key_id,
            "tries": tries}


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal."""
    return 0.5 * math.erfc(z / math.sqrt(2))


def p_value(z: float, tries: int = 1) -> float:
    """One-sided p of the best z of `tries` views, Bonferroni-corrected."""
    return min(1.0, normal_sf(z) * max(1, tries))


def null_check(n: int = 20000, shape: tuple[int, int, int] = (1, 28, 28), seed: int = 0,
               radius: float = RADIUS) -> dict:
    """The statistic on white noise that never saw the key: the share of z above the thresholds of p = 1e-2 and
    1e-3 (what theory says they should be), mean and std of z."""
    rng = np.random.default_rng(seed)
    kp = pattern(12345, shape, radius)
    z = z_scores(rng.standard_normal((n, *shape)), kp, radius)
    return {"mean": float(z.mean()), "std": float(z.std()), "fpr_1e-2": float(np.mean(z > 2.3263)),
            "fpr_1e-3": float(np.mean(z > 3.0902))}
