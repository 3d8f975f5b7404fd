"""The pieces of the editing evaluation (editing.py) that are not about a model: the fixed masks, PSNR and SSIM over
the whole image and over a masked region, and the classical baselines (OpenCV's Telea inpainting, the input with its
hole filled by its own mean, Pillow's bicubic and nearest upscaling).

Conventions. Images are uint8 (N, H, W, C); masks bool (N, H, W), True where the image is edited (genforge/edits.py).
Pixels are compared in [0, 1] (data range 1). Every figure is per image, then averaged over the images.

- PSNR = 10 log10(1 / MSE), dB. Whole image: torchmetrics' `peak_signal_noise_ratio` per image. Masked: the MSE
  over the masked pixels (all channels) only; unmasked pixels do not count. Identical images (MSE 0, PSNR infinite)
  count as PSNR_CAP = 100 dB, so a mean stays a number (8-bit rounding alone gives ~59 dB).
- SSIM: torchmetrics' `structural_similarity_index_measure` (11x11 Gaussian window, sigma 1.5, reflection padding).
  Whole image: its per-image mean. Masked: its full SSIM map (`return_full_image=True`, one value per pixel and
  channel) averaged over the channels and the masked pixels. The window of a pixel near the mask's edge reaches
  into known pixels, so masked SSIM is a little higher than an SSIM of the hole alone could be.
"""

from __future__ import annotations

import numpy as np
import torch

from genforge.errors import UserError

MASK_KINDS = ("centre", "lower_half", "strokes")
STROKE_COVER = (0.25, 0.35)  # the share of pixels a strokes mask covers
PSNR_CAP = 100.0
TELEA_RADIUS = 3


# -- masks ----------------------------------------------------------------------------------------------------------
def centre_mask(height: int, width: int) -> np.ndarray:
    """A centred square (rectangle) of half the side: a quarter of the image."""
    m = np.zeros((height, width), bool)
    h, w = height // 2, width // 2
    top, left = (height - h) // 2, (width - w) // 2
    m[top:top + h, left:left + w] = True
    return m


def lower_half_mask(height: int, width: int) -> np.ndarray:
    m = np.zeros((height, width), bool)
    m[height // 2:] = True
    return m


def brush_radius(height: int, width: int) -> int:
    return max(1, round(min(height, width) / 14))  # 2 px (a 5 px wide stroke) at 28 and 32


def stroke_mask(height: int, width: int, seed: int, index: int, cover: tuple[float, float] = STROKE_COVER) -> np.ndarray:
    """Thick random-walk strokes (a round brush stamped every `radius` pixels along walks that turn smoothly and bounce
    off the borders, a new stroke every 10-25 stamps) until a share of the pixels drawn uniformly from `cover` is
    reached. Each stamp adds at most one brush's area, and the target is drawn at most one brush below cover's top,
    so the share always lies in `cover`. Deterministic in (seed, index): image `index` gets the same strokes
    whichever other images are evaluated with it."""
    r = brush_radius(height, width)
    yy, xx = np.mgrid[0:height, 0:width]
    stamp_area = int(((np.arange(-r, r + 1)[:, None] ** 2 + np.arange(-r, r + 1)[None] ** 2) <= r * r).sum())
    low, high = cover
    if stamp_area / (height * width) >= high - low:
        raise UserError(f"Images of {width}x{height} are too small for stroke masks.")
    rng = np.random.default_rng([int(seed) % 2**63, int(index)])
    target = rng.uniform(low, high - stamp_area / (height * width))
    m = np.zeros((height, width), bool)
    need = target * height * width
    while m.sum() < need:
        y, x = rng.uniform(0, height - 1), rng.uniform(0, width - 1)
        angle = rng.uniform(0, 2 * np.pi)
        for _ in range(int(rng.integers(10, 26))):
            m |= (yy - round(y)) ** 2 + (xx - round(x)) ** 2 <= r * r
            if m.sum() >= need:
                break
            angle += rng.normal(0.0, 0.6)
            y, x = y + r * np.sin(angle), x + r * np.cos(angle)
            if not 0 <= y <= height - 1:
                y, angle = float(np.clip(y, 0, height - 1)), -angle
            if not 0 <= x <= width - 1:
                x, angle = float(np.clip(x, 0, width - 1)), np.pi - angle
    return m


def masks_for(kind: str, indices, height: int, width: int, seed: int = 0) -> np.ndarray:
    """bool (N, H, W) of one kind for the images `indices` (their places in the test split: the strokes' seeds)."""
    if kind == "centre":
        one = centre_mask(height, width)
    elif kind == "lower_half":
        one = lower_half_mask(height, width)
    elif kind == "strokes":
        return np.stack([stroke_mask(height, width, seed, int(i)) for i in indices]) if len(indices) else \
            np.zeros((0, height, width), bool)
    else:
        raise UserError(f"Unknown mask kind {kind!r}: one of {', '.join(MASK_KINDS)}.")
    return np.repeat(one[None], len(indices), axis=0)


# -- metrics --------------------------------------------------------------------------------------------------------
def _unit(images) -> torch.Tensor:
    x = np.asarray(images)
    if x.dtype != np.uint8 or x.ndim != 4:
        raise ValueError(f"expected uint8 (N, H, W, C) images, got {x.dtype} {x.shape}")
    return torch.from_numpy(x).permute(0, 3, 1, 2).to(torch.float64) / 255.0


def _check(pred, target, mask) -> None:
    if np.shape(pred) != np.shape(target):
        raise ValueError(f"images of shape {np.shape(pred)} compared with {np.shape(target)}")
    if mask is not None and np.shape(mask) != np.shape(pred)[:3]:
        raise ValueError(f"mask of shape {np.shape(mask)} for images of shape {np.shape(pred)}")


def _db(mse: torch.Tensor) -> np.ndarray:
    with np.errstate(divide="ignore"):
        out = 10.0 * np.log10(1.0 / mse.numpy())
    return np.minimum(out, PSNR_CAP)


def psnr(pred, target, mask=None) -> np.ndarray:
    """PSNR per image, dB (float64 (N,)); with a mask, over its True pixels only (NaN for an empty mask)."""
    _check(pred, target, mask)
    p, t = _unit(pred), _unit(target)
    if mask is None:
        from torchmetrics.functional.image import peak_signal_noise_ratio

        out = peak_signal_noise_ratio(p, t, data_range=1.0, reduction="none", dim=(1, 2, 3)).numpy()
        return np.minimum(np.nan_to_num(out, posinf=PSNR_CAP), PSNR_CAP)
    m = torch.from_numpy(np.asarray(mask, bool)).to(torch.float64)
    se = (p - t).pow(2).mean(dim=1)  # over channels: (N, H, W)
    count = m.sum(dim=(1, 2))
    mse = (se * m).sum(dim=(1, 2)) / count
    out = _db(mse)
    out[count.numpy() == 0] = np.nan
    return out


def ssim(pred, target, mask=None) -> np.ndarray:
    """SSIM per image (torchmetrics); with a mask, its SSIM map averaged over the True pixels (NaN for an empty mask)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    _check(pred, target, mask)
    p, t = _unit(pred).float(), _unit(target).float()
    whole, full = structural_similarity_index_measure(p, t, data_range=1.0, reduction="none", return_full_image=True)
    if mask is None:
        return whole.double().numpy()
    m = torch.from_numpy(np.asarray(mask, bool)).to(torch.float64)
    per_pixel = full.double().mean(dim=1)
    count = m.sum(dim=(1, 2))
    out = ((per_pixel * m).sum(dim=(1, 2)) / count).numpy()
    out[count.numpy() == 0] = np.nan
    return out


def mean_of(values: np.ndarray) -> float | None:
    v = np.asarray(values, np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if len(v) else None


# -- baselines ------------------------------------------------------------------------------------------------------
def telea(images, masks, radius: int = TELEA_RADIUS) -> np.ndarray:
    """OpenCV's Telea inpainting (cv2.inpaint, INPAINT_TELEA) of each image's masked pixels; needs opencv-python-headless
    (the `edit` extra)."""
    try:
        import cv2
    except ImportError:
        raise UserError("The Telea baseline needs OpenCV: pip install 'genforge[edit]' (opencv-python-headless).") from None
    images, masks = np.asarray(images), np.asarray(masks, bool)
    _check(images, images, masks)
    out = np.empty_like(images)
    for i, (img, m) in enumerate(zip(images, masks)):
        src = np.ascontiguousarray(img[..., 0] if img.shape[-1] == 1 else img)
        filled = cv2.inpaint(src, m.astype(np.uint8) * 255, radius, cv2.INPAINT_TELEA)
        out[i] = filled.reshape(img.shape)
    return out


def mean_fill(images, masks) -> np.ndarray:
    """The input with its masked pixels set to the mean of its known pixels (per channel, rounded): the no-model floor."""
    images, masks = np.asarray(images), np.asarray(masks, bool)
    _check(images, images, masks)
    out = images.copy()
    for i, (img, m) in enumerate(zip(images, masks)):
        known = img[~m]
        fill = np.rint(known.mean(axis=0)) if len(known) else np.full(img.shape[-1], 128.0)
        out[i][m] = fill.astype(np.uint8)
    return out


def resize(images, height: int, width: int, how: str = "bicubic") -> np.ndarray:
    """Each image resized with Pillow (Image.resize, BICUBIC or NEAREST): the upscaling baselines."""
    from PIL import Image

    resample = {"bicubic": Image.Resampling.BICUBIC, "nearest": Image.Resampling.NEAREST}[how]
    out = []
    for img in np.asarray(images):
        a = np.asarray(Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).resize((width, height), resample))
        out.append(a[..., None] if a.ndim == 2 else a)
    return np.stack(out) if out else np.zeros((0, height, width, np.shape(images)[-1]), np.uint8)


# -- pictures -------------------------------------------------------------------------------------------------------
def rgb(images) -> np.ndarray:
    images = np.asarray(images)
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def overlay(images, masks) -> np.ndarray:
    """RGB copies with the masked region tinted red: what the grid's mask row shows."""
    out = rgb(images).astype(np.float32)
    m = np.asarray(masks, bool)
    out[m] = 0.45 * out[m] + 0.55 * np.array([255.0, 40.0, 40.0], np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
